"""Per-GPU fit on shared GPUs uses what a pod can actually get: one MIG instance's memory (never the whole GPU's),
and on time-sliced GPUs only GPUs with a replica left; several GPUs cannot come from time-sliced replicas. Checked
per node (policy.evaluate), through the class tables the extender answers from, and from a fleet through the agent."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flexinfer.agent.agent import Agent
from flexinfer.agent.publish import DryRunPublisher
from flexinfer.agent.readers.fake import fleet_reader
from flexinfer.extender.cache import NodeCache
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import R_INSUFFICIENT, R_TIME_SLICED, R_TOO_SMALL, PolicyConfig, evaluate
from flexinfer.extender.reservations import Reservations
from flexinfer.extender.service import Extender

from flexinfer import keys
from flexinfer.cli.main import cli
from flexinfer.fleet import load_fleet
from flexinfer.nodes import fleet_node_objects
from flexinfer.state import GpuState, NodeGpuState, node_view, state_labels

from .ext_fixtures import NOW, gpu, model_pod, node_obj

SHARED_FLEET = Path(__file__).resolve().parents[2] / "hack" / "fleets" / "shared-gpus.yaml"


def mig(index: int, profile: str, total: int, free: int | None = None, parent: int = 0) -> GpuState:
    return replace(gpu(index, "nvidia", "sm_90", total, free), uuid=f"MIG-{index}", mig_profile=profile,
                   mig_parent=parent)


def sliced(index: int, free: int, used: int, replicas: int = 4) -> GpuState:
    return replace(gpu(index, "nvidia", "sm_86", 23028, free), replicas=replicas, replicas_used=used)


def verdict(gpus: list[GpuState], est: int, count: int = 1) -> Any:
    obj = node_obj("n1", gpus, NOW)
    view = node_view("n1", obj["metadata"]["labels"], obj["metadata"]["annotations"])
    return evaluate(requirements_from_dict(model_pod(est, "vllm", count)), view, NOW + 1)


def test_a_mig_instance_is_all_a_pod_gets() -> None:
    h100 = [mig(0, "3g.40gb", 40192), mig(1, "2g.20gb", 19968)]
    too_big = verdict(h100, 50000)  # the physical H100 has 80 GB; no instance does
    assert not too_big.feasible and too_big.unresolvable and too_big.reason == R_TOO_SMALL
    assert "largest MIG instance has 40192 MiB total" in too_big.detail
    fits = verdict(h100, 18000)
    assert fits.feasible and fits.gpus == (1,)  # binpack: the 2g.20gb instance
    assert "MIG 2g.20gb on GPU 0: 19968 MiB free" in fits.detail


def test_mig_instances_fill_independently() -> None:
    v = verdict([mig(0, "3g.40gb", 40192, free=1000), mig(1, "3g.40gb", 40192)], 30000)
    assert v.feasible and v.gpus == (1,)


def test_time_sliced_gpu_without_a_replica_left_is_full() -> None:
    full = verdict([sliced(0, 20000, used=4)], 5000)
    assert not full.feasible and not full.unresolvable and full.reason == R_INSUFFICIENT  # pods may leave
    assert "GPU 0: all 4 time-slicing replicas in use" in full.detail
    assert verdict([sliced(0, 20000, used=3)], 5000).feasible


def test_time_sliced_pick_skips_the_gpu_with_no_replica() -> None:
    v = verdict([sliced(0, 6000, used=4), sliced(1, 20000, used=1)], 5000)
    assert v.feasible and v.gpus == (1,)  # binpack would take GPU 0 (tighter) if it had a replica left


def test_several_gpus_cannot_come_from_time_sliced_replicas() -> None:
    v = verdict([sliced(0, 20000, used=0), sliced(1, 20000, used=0)], 5000, count=2)
    assert not v.feasible and v.unresolvable and v.reason == R_TIME_SLICED
    assert verdict([gpu(0, "nvidia", "sm_86", 23028), gpu(1, "nvidia", "sm_86", 23028)], 5000, count=2).feasible


def test_the_class_tables_agree_with_the_policy() -> None:
    """The extender answers names-mode requests from per-class columns; replicas in use must reach them."""
    nodes = [node_obj("full", [sliced(0, 20000, used=4)], NOW), node_obj("room", [sliced(0, 20000, used=1)], NOW),
             node_obj("mig", [mig(0, "3g.40gb", 40192), mig(1, "1g.10gb", 9856)], NOW)]
    cache = NodeCache(clock=lambda: NOW + 1)
    cache.replace_all(nodes)
    ext = Extender(cache, PolicyConfig(max_state_age_seconds=1e9), Reservations(), clock=lambda: NOW + 1)
    out = ext.filter(requirements_from_dict(model_pod(5000, "vllm", 1)), ["full", "room", "mig"])
    assert sorted(out.passed) == ["mig", "room"] and out.failed == {"full": R_INSUFFICIENT}
    big = ext.filter(requirements_from_dict(model_pod(45000, "vllm", 1, uid="u2")), ["full", "room", "mig"])
    assert big.unresolvable["mig"] == R_TOO_SMALL and big.passed == []


def test_from_the_fleet_through_the_agent() -> None:
    """The H100 in MIG mode and the time-sliced A10s of hack/fleets/shared-gpus.yaml, read by the real NVML reader
    over the fake: the published entries are the MIG instances, and the replicas come from the Node capacity."""
    fleet = load_fleet(SHARED_FLEET)
    objs = {o["metadata"]["name"]: o for o in fleet_node_objects(fleet, NOW)}
    published: dict[str, NodeGpuState] = {}
    for name in ("h100-mig", "a10-timesliced"):
        pub = DryRunPublisher(name, lambda *_: None)
        pub.node_labels, pub.node_capacity = {}, dict(objs[name]["status"]["capacity"])
        agent = Agent(name, fleet_reader(fleet.node(name)), pub)
        published[name] = agent.step(now=NOW).state
    h100 = published["h100-mig"]
    assert [(g.index, g.mig_profile, g.total_mib, g.mig_parent) for g in h100.gpus] == [
        (0, "3g.40gb", 40192, 0), (1, "2g.20gb", 19968, 0), (2, "1g.10gb", 9856, 0)]
    labels = state_labels(h100)
    assert labels[keys.LABEL_COUNT] == "3" and labels[keys.LABEL_SHARING] == "mig"
    assert labels[keys.LABEL_MEMORY_MIB] == "9856"
    a10 = published["a10-timesliced"]
    assert [g.replicas for g in a10.gpus] == [4, 4]
    assert state_labels(a10)[keys.LABEL_REPLICAS] == "4"
    # what the offline tools derive from the fleet is what the agent publishes
    offline = node_view("h100-mig", objs["h100-mig"]["metadata"]["labels"], objs["h100-mig"]["metadata"]["annotations"])
    assert offline.state is not None
    assert [(g.uuid, g.total_mib, g.mig_profile) for g in offline.state.gpus] == [
        (g.uuid, g.total_mib, g.mig_profile) for g in h100.gpus]


@pytest.mark.parametrize(("args", "wants"), [
    (["nodes"], ["MIG 3g.40gb of GPU 0", "MIG 1g.10gb of GPU 0", "4 replicas, 0 in use"]),
    (["explain", "daemonset/examples/qwen3-8b-fast.yaml"],
     ["MIG 2g.20gb on GPU 0: 19968 MiB free", "GPU 0, 4 time-slicing replicas (0 in use)"]),
])
def test_cli_shows_what_a_pod_gets(args: list[str], wants: list[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    res = CliRunner().invoke(cli, [*args[:1], *(str(root / a) for a in args[1:]), "--fleet", str(SHARED_FLEET),
                                   "--output", "json"])
    assert res.exit_code == 0, res.output
    for want in wants:
        assert want in res.output.replace("\n", " "), want
