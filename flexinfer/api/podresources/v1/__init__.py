"""Generated from proto/flexinfer/api/podresources/v1/api.proto (the kubelet PodResources API) by hack/gen-proto.sh."""
