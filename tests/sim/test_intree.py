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


def test_gpu_requests_take_max_of_requests_and_limits_and_sum_containers():
    pod = {"spec": {"containers": [
        {"resources": {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "2"}}},
        {"resources": {"limits": {"amd.com/gpu": "1", "cpu": "2"}}},
        {"resources": {"limits": {"nvidia.com/gpu": "junk"}}},
    ]}}
    assert pod_gpu_requests(pod) == {"amd.com/gpu": 3}


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
