"""Placements made by the real kube-scheduler calling the extender with the shipped configuration."""

from __future__ import annotations

from flexinfer import keys

from .helpers import create, failed_scheduling_messages, gpu_pod, node_of

MAXWELL = "cblevins-gtx980ti"
RTX = "rtxpro4000-worker"


def test_vllm_never_on_maxwell_and_the_event_carries_our_reason(homelab, api, ns, wait_for):
    # Only the Maxwell node is allowed by the selector: nothing is feasible, the pod stays Pending and
    # kube-scheduler's FailedScheduling event carries the extender's reason.
    create(api, gpu_pod("vllm-pinned", ns, backend="vllm", vram_mib=3000, vendor="nvidia",
                        node_selector={"kubernetes.io/hostname": MAXWELL}))
    msgs = wait_for("a FailedScheduling event for vllm-pinned",
                    lambda: [m for m in failed_scheduling_messages(api, ns, "vllm-pinned") if "maxwell" in m])
    assert "vllm does not run on maxwell sm_52" in msgs[0], msgs
    assert msgs[0].startswith("0/7 nodes are available"), msgs
    assert node_of(api, ns, "vllm-pinned") == ""

    # Free to go anywhere: it lands on the only other NVIDIA node, never on the 980 Ti.
    create(api, gpu_pod("vllm-free", ns, backend="vllm", vram_mib=3000, vendor="nvidia"))
    assert wait_for("vllm-free bound", lambda: node_of(api, ns, "vllm-free")) == RTX
    # and the agent publishes the model's memory on that GPU once kwok runs the pod
    before = homelab.load.base.node(RTX).gpus[0]
    want_free = before.total_mi_b - before.used_mi_b - 3000
    homelab.wait_published([RTX], free_mib={RTX: want_free})
    assert keys.ANN_GPU_STATE in homelab.published(RTX)["annotations"]
