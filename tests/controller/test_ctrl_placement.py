"""controller.placement with VRAM committed to bound pods (the extender's rule, extender.commitments): a pod bound
but not using its memory yet (loading, or Ollama's load on first request) holds its estimate; a preemption check
gives back the holder's commitment, and only the holder's."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
from flexinfer.controller import placement, render
from flexinfer.extender.commitments import from_pods

from flexinfer import keys
from flexinfer.model import parse_model

from ..extender.ext_fixtures import NOW, gpu, node_obj

NS = "ai"


def model_pod(name: str, vram_mib: int, backend: str = "vllm") -> dict[str, Any]:
    """The pod the controller renders for a Model (its Deployment's template)."""
    source = "ollama://llama3.1:8b" if backend == "ollama" else f"HF://org/{name}"
    doc = {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "metadata": {"name": name, "namespace": NS},
           "spec": {"backend": backend, "source": source, "gpu": {"vendor": "nvidia", "vramEstimateMB": vram_mib}}}
    return placement.pod_of(render.render_deployment(parse_model(doc), 1, "nvidia"))


def bound(pod: dict[str, Any], node: str, *, phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    """`pod` as kube-scheduler bound it to `node` (the Deployment's pod: its own name and uid)."""
    out = copy.deepcopy(pod)
    name = out["metadata"]["name"]
    out["metadata"].update(name=f"{name}-pod", uid=f"uid-{name}")
    if deleting:
        out["metadata"]["deletionTimestamp"] = "2026-11-30T10:00:00Z"
    out["spec"]["nodeName"] = node
    out["status"] = {"phase": phase}
    return out


def one_gpu(free: int = 24000) -> list[dict[str, Any]]:
    return [node_obj("n1", [gpu(0, total=24576, free=free)])]


def test_a_bound_pod_that_has_not_loaded_yet_still_holds_its_memory() -> None:
    lazy = bound(model_pod("lazy", 16000, "ollama"), "n1")  # the agent sees nothing used yet
    want = model_pod("chat", 12000)
    assert placement.place(want, one_gpu(), NOW).ok  # the agents' numbers alone: the old answer
    fit = placement.place(want, one_gpu(), NOW, bound=from_pods([lazy]))
    assert not fit.ok
    assert "Insufficient free GPU memory" in fit.reason and "16000 MiB committed to bound pods" in fit.reason
    # a model already loaded is counted once: min(observed free, total - committed)
    loaded = placement.place(want, one_gpu(free=24000 - 16000), NOW, bound=from_pods([lazy]))
    assert not loaded.ok and "best GPU has 8000 MiB free" in loaded.reason
    assert placement.place(model_pod("small", 8000), one_gpu(), NOW, bound=from_pods([lazy])).ok


@pytest.mark.parametrize("gone", [
    {"phase": "Succeeded"}, {"phase": "Failed"}, {"deleting": True},
])
def test_finished_or_deleted_pods_hold_nothing(gone: dict[str, Any]) -> None:
    pod = bound(model_pod("lazy", 16000), "n1", **gone)
    assert len(from_pods([pod])) == 0
    assert placement.place(model_pod("chat", 12000), one_gpu(), NOW, bound=from_pods([pod])).ok


def test_pending_unbound_and_foreign_pods_hold_nothing() -> None:
    pending = model_pod("lazy", 16000)  # not bound yet: the extender reserves for it, nothing is committed
    foreign = {"metadata": {"name": "web", "namespace": NS}, "spec": {"nodeName": "n1", "containers": []}}
    assert len(from_pods([pending, foreign, "junk", {"spec": "junk"}])) == 0


def test_preemption_gives_back_the_holders_commitment() -> None:
    """The holder is bound and still loading (its memory not visible yet): without releasing its commitment
    the preemptor would never fit; with it, it does."""
    holder = bound(model_pod("holder", 12288), "n1")
    want = model_pod("preemptor", 20000)
    pods = from_pods([holder])
    assert not placement.place(want, one_gpu(), NOW, bound=pods).ok
    fit = placement.place(want, one_gpu(), NOW, bound=pods, releases=placement.release_of([holder]))
    assert fit.ok and fit.node == "n1"


def test_preemption_refused_when_a_model_that_has_not_loaded_yet_holds_the_rest() -> None:
    """The holder (12288 MiB, loaded: the agent sees it) and a bound Ollama model (8000 MiB, loads on its first
    request: the agent sees nothing). Releasing the holder frees its memory and its commitment, but not the
    Ollama model's: 24576 - 8000 < 20000, so the preemptor cannot be placed and the holder must stay."""
    holder = bound(model_pod("holder", 12288), "n1")
    lazy = bound(model_pod("lazy", 8000, "ollama"), "n1")
    want = model_pod("preemptor", 20000)
    nodes = [node_obj("n1", [gpu(0, total=24576, free=24000 - 12288)])]  # 576 MiB of the driver, and the holder
    releases = placement.release_of([holder])
    assert placement.place(want, nodes, NOW, releases=releases).ok  # the agents' numbers alone: the old answer
    fit = placement.place(want, nodes, NOW, releases=releases, bound=from_pods([holder, lazy]))
    assert not fit.ok and "8000 MiB committed to bound pods" in fit.reason, fit.reason
    # without the Ollama model the same release is enough
    assert placement.place(want, nodes, NOW, releases=releases, bound=from_pods([holder])).ok


@pytest.mark.parametrize("held", [0, 1])
def test_the_commitment_sits_on_the_gpu_the_agent_says_the_pod_got(held: int) -> None:
    lazy = bound(model_pod("lazy", 20000), "n1")
    gpus = [gpu(0, total=24576, free=24000), gpu(1, total=24576, free=24000)]
    gpus[held] = replace(gpus[held], pods=(f"{NS}/lazy-pod/server",))
    fit = placement.place(model_pod("chat", 20000), [node_obj("n1", gpus)], NOW, bound=from_pods([lazy]))
    assert fit.ok and fit.gpus == (1 - held,)


def test_without_attribution_the_policy_picks_the_gpus_once() -> None:
    """Two bound pods the agent does not attribute: the policy's pick (as the extender's placer) spreads them
    over the two GPUs, so a third 20000 MiB model fits nowhere on the node."""
    pods = from_pods([bound(model_pod("a", 20000), "n1"), bound(model_pod("b", 20000), "n1")])
    node = [node_obj("n1", [gpu(0, total=24576, free=24000), gpu(1, total=24576, free=24000)])]
    assert not placement.place(model_pod("c", 20000), node, NOW, bound=pods).ok
    assert sorted(c.gpus for c in pods.on("n1")) == [(0,), (1,)]  # type: ignore[type-var]
