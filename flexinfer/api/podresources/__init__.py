"""Generated gRPC code for the kubelet PodResources API (hack/gen-proto.sh)."""
