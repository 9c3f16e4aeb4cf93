"""The agents' writes through the real API server (as the flexinfer-agent ServiceAccount), and every
component's watches across a Node's deletion and an API server restart."""

from __future__ import annotations

import re
import time
from typing import Any

from flexinfer import keys, kube

from .helpers import create, gpu_pod, node_of


def metadata(api: Any, node: str) -> tuple[dict[str, str], dict[str, str]]:
    obj = kube.get_object(api, "nodes", node) or {}
    meta = obj.get("metadata") or {}
    return dict(meta.get("labels") or {}), dict(meta.get("annotations") or {})


def others(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if not k.startswith(keys.PREFIX)}


def extender_free_mib(homelab: Any, node: str) -> int | None:
    """GPU 0's free MiB as the running extender sees it (its /explain detail for a tiny llama.cpp pod)."""
    pod = gpu_pod("probe", "default", backend="llamacpp", vram_mib=1, vendor="amd")
    for v in homelab.extender_explain(pod, [node])["Verdicts"]:
        m = re.search(r"(\d+) MiB free", v.get("Detail") or "")
        if m:
            return int(m.group(1))
    return None


def test_merge_patches_keep_other_writers_keys_and_drop_our_stale_ones(homelab, api, ns, wait_for):
    node = "khelben"
    # another writer's label and annotation, and one of OUR label keys that does not apply to this node
    kube.merge_patch(api, "nodes", node, {"metadata": {
        "labels": {"example.com/rack": "r7", keys.LABEL_ARCH_COUNT_PREFIX + "gfx906": "1"},
        "annotations": {"example.com/owner": "ops"}}})
    labels, annotations = metadata(api, node)
    assert annotations["kwok.x-k8s.io/node"] == "fake" and labels["kubernetes.io/hostname"] == node
    theirs_before = (others(labels), others(annotations))
    observed_before = homelab.published(node)["observed_unix"]
    # a model loads on the node: the agent writes the drop
    create(api, gpu_pod("load-khelben", ns, backend="llamacpp", vram_mib=8000, vendor="amd",
                        node_selector={"kubernetes.io/hostname": node}))
    assert wait_for("bound", lambda: node_of(api, ns, "load-khelben")) == node
    homelab.wait_settled()
    assert homelab.published(node)["free_mib"][0] < 49152 - 2048 - 7000
    labels, annotations = metadata(api, node)
    assert homelab.published(node)["observed_unix"] > observed_before
    assert (others(labels), others(annotations)) == theirs_before  # kwok's, the kubelet-like and ops' keys
    assert labels[keys.LABEL_ARCH] == "gfx1151" and annotations[keys.ANN_AGENT_STATUS] == "ok"
    # our stale key: the write's answer shows it to the agent, which removes it as label drift (at most
    # every 30 s: agent.publish.DRIFT_MIN_INTERVAL_SECONDS), leaving the others' keys alone
    wait_for("the agent to remove its stale gpu.arch.gfx906 label",
             lambda: keys.LABEL_ARCH_COUNT_PREFIX + "gfx906" not in metadata(api, node)[0], timeout_s=60)
    labels, annotations = metadata(api, node)
    assert (others(labels), others(annotations)) == theirs_before


def test_node_deleted_and_recreated(homelab, api, ns, wait_for):
    node = "cblevins-radeonvii"
    homelab.delete_node(node)
    wait_for("the extender to forget the node", lambda: extender_free_mib(homelab, node) is None)
    # while the Node is gone the agent's writes fail (404) and the change stays pending
    homelab.load.adjust(node, 0, +3000)
    gpu = homelab.load.fleet.node(node).gpus[0]
    time.sleep(2.5)
    assert kube.get_object(api, "nodes", node) is None
    # the kubelet registers the Node again (no FlexInfer keys): the pending write lands at once
    homelab.register_nodes([node])
    want = gpu.total_mi_b - gpu.used_mi_b
    homelab.wait_published([node], free_mib={node: want}, timeout_s=15)
    labels, _ = metadata(api, node)
    assert labels[keys.LABEL_ARCH] == "gfx906"
    assert abs(wait_for("the extender to see the node again",
                        lambda: extender_free_mib(homelab, node)) - want) <= 200
    # and pods schedule there again
    create(api, gpu_pod("after-recreate", ns, backend="llamacpp", vram_mib=2000, vendor="amd",
                        node_selector={"kubernetes.io/hostname": node}))
    assert wait_for("bound on the re-created node", lambda: node_of(api, ns, "after-recreate")) == node
    homelab.load.adjust(node, 0, -3000)


def test_node_recreated_without_a_pending_change_is_republished_by_a_new_agent(homelab, api, ns, wait_for):
    """Nothing changed on the GPU while the Node was gone: the running agent has nothing to write until its
    heartbeat or drift check; in a cluster the Node's deletion also removes the agent's DaemonSet pod (pod
    GC) and its replacement publishes at start, which is what this replays."""
    node = "cblevins-radeonvii"
    homelab.wait_settled()
    homelab.delete_node(node)
    wait_for("node gone", lambda: kube.get_object(api, "nodes", node) is None)
    homelab.register_nodes([node])
    homelab.stop_agent(node)
    t0 = time.time()
    homelab.start_agents([node])
    labels, annotations = metadata(api, node)
    assert labels[keys.LABEL_VENDOR] == "amd" and keys.ANN_GPU_STATE in annotations
    assert homelab.published(node)["observed_unix"] >= t0 - 1


def test_watches_resume_after_the_api_server_restarts(homelab, control_plane, api, ns, wait_for):
    node = "cblevins-5930k"
    homelab.wait_settled()
    before = extender_free_mib(homelab, node)
    assert before is not None
    control_plane.restart_apiserver(down_seconds=3)
    # the extender's Node watch resumed: memory taken outside any pod (no reservation involved) reaches it
    homelab.load.adjust(node, 0, +10000)
    try:
        after = wait_for("the extender to see the drop", lambda: (
            f if (f := extender_free_mib(homelab, node)) is not None and before - f > 5000 else None), timeout_s=60)
        assert abs((before - after) - 10000) <= 300, (before, after)
    finally:
        homelab.load.adjust(node, 0, -10000)
    # kube-scheduler's and the extender's pod watches resumed: a new pod is placed through the extender,
    # kwok runs it and its memory is published
    create(api, gpu_pod("after-restart", ns, backend="llamacpp", vram_mib=6000, vendor="amd",
                        node_selector={"kubernetes.io/hostname": node}))
    assert wait_for("bound after the restart", lambda: node_of(api, ns, "after-restart"), timeout_s=90) == node
    homelab.wait_settled(timeout_s=60)
    for name in ("flexinfer-extender", "kube-scheduler", "kube-controller-manager", "kwok"):
        assert control_plane.procs[name].alive(), name
