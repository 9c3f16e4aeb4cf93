"""Simulation: everything that stands in for the outside world, so FlexInfer runs and is tested without a
cluster or a GPU. Nothing here is imported by the agent, the extender or the controller in production.

- ``fakeapi``: a small stateful fake Kubernetes API server over real HTTP (resourceVersions, watches with
  410, paged lists, selectors, status/binding subresources, failure injection), used by the demo, the
  adapter tests and the benchmarks;
- ``intree``: the part of kube-scheduler's own filtering the demo must imitate before it calls the
  extender (node readiness, nodeSelector, taints, extended-resource fit);
- ``cluster``: the embedded demo cluster (fake API server, agents on fake GPU readers, the real extender
  and controller, a scheduling loop talking to the extender as kube-scheduler does);
- ``controlplane``: a real local control plane (etcd, kube-apiserver, kube-scheduler,
  kube-controller-manager, kwok) built from pinned Kubernetes sources; ``realcluster``: a simulated GPU fleet
  on it (the e2e tier, ``flexinfer demo --control-plane real``, the scheduler bench);
- ``serving`` and ``modelserver``: what kubelets and the EndpointSlice controller do for the Models'
  Deployments, and an OpenAI-compatible fake model server (the proxy's tests, demo and bench);
- ``podresources``: a fake kubelet PodResources gRPC server (the agent's attribution tests).

tests/sim/test_sim_boundary.py keeps production modules from importing this package.

The fake GPU readers live with the agent (``flexinfer.agent.readers.fake``), driven by a fleet file.
"""
