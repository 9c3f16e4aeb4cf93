"""kube-scheduler's in-tree filters as the demo imitates them."""

from __future__ import annotations

import pytest

from flexinfer.sim.intree import intree_reject, pod_gpu_requests


def _node(**kw):
    node = {"metadata": {"name": "n1", "labels": {"zone": "a"}}, "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    node["spec"].update(kw.pop("spec", {}))
    node["status"].update(kw.pop("status", {}))
    return node


def _pod(gpus=1, resource="nvidia.com/gpu", **spec):
    res = {"limits": {resource: str(gpus)}} if gpus else {}
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "resources": res}], **spec}}


def test_gpu_requests_are_counted_as_the_extender_counts_them():
    pod = {"spec": {"containers": [
        {"resources": {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "2"}}},  # the limit counts
        {"resources": {"limits": {"amd.com/gpu": 1, "cpu": "2"}}},
        {"resources": {"requests": {"nvidia.com/gpu": "1"}}},  # a request alone counts too
    ]}}
    assert pod_gpu_requests(pod) == {"amd.com/gpu": 3, "nvidia.com/gpu": 1}
    init = {"spec": {"initContainers": [{"resources": {"limits": {"amd.com/gpu": "4"}}}],
                     "containers": [{"resources": {"limits": {"amd.com/gpu": "1"}}}]}}
    assert pod_gpu_requests(init) == {"amd.com/gpu": 4}  # max(sum of containers, largest init container)
    assert pod_gpu_requests({"spec": {"containers": [{"resources": {}}]}}) == {}


@pytest.mark.parametrize("pod", [
    {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "junk"}}}]}},
    {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "-1"}}}]}},
    {"spec": {"containers": "not a list"}},
    {"spec": None},
])
def test_a_pod_the_api_server_would_refuse_asks_for_nothing(pod):
    assert pod_gpu_requests(pod) == {}


@pytest.mark.parametrize(("node", "pod", "bound", "expected"), [
    (_node(), _pod(), [], None),
    (_node(), _pod(), [_pod()], "Insufficient nvidia.com/gpu"),
    (_node(), _pod(resource="amd.com/gpu"), [], "Insufficient amd.com/gpu"),
    (_node(), _pod(gpus=0), [_pod()], None),
    (_node(spec={"unschedulable": True}), _pod(), [], "node is unschedulable"),
    (_node(status={"conditions": [{"type": "Ready", "status": "False"}]}), _pod(), [], "node is not Ready"),
    (_node(), _pod(nodeSelector={"zone": "b"}), [], "node(s) didn't match Pod's node selector (zone=b)"),
    (_node(), _pod(nodeSelector={"zone": "a"}), [], None),
    (_node(spec={"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}), _pod(), [],
     "node(s) had untolerated taint {dedicated: gpu}"),
    (_node(spec={"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
     _pod(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]), [], None),
    (_node(spec={"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
     _pod(tolerations=[{"operator": "Exists"}]), [], None),
    (_node(spec={"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}), _pod(), [], None),
])
def test_intree_reject(node, pod, bound, expected):
    assert intree_reject(pod, node, bound) == expected
