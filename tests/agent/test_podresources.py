"""GPU-to-pod truth from the kubelet: the PodResources client against a fake kubelet speaking the real v1 proto over
a unix socket, the device-ID matching per vendor, and what the agent publishes and exports with it."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from flexinfer.agent.agent import Agent
from flexinfer.agent.attribution import Assignment, attribute, device_key, normalize_pci, replicas_by_vendor
from flexinfer.agent.podresources import PodResourcesClient, PodResourcesSource
from flexinfer.agent.readers.base import GpuSample, MigSample
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer import keys
from flexinfer.sim.podresources import FakeKubelet
from flexinfer.state import MAX_PODS, decode_state, node_annotations

from .agent_helpers import ManualClock, amd_gpu, node_from, nvidia_gpu


@pytest.fixture
def kubelet() -> Iterator[FakeKubelet]:
    # unix socket paths are limited to ~108 bytes: pytest's tmp_path can be longer
    d = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
    k = FakeKubelet(d / "kubelet.sock").start()
    try:
        yield k
    finally:
        k.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_list_returns_gpu_devices_per_container(kubelet: FakeKubelet) -> None:
    kubelet.assign("ml", "qwen-0", "server", "nvidia.com/gpu", ["GPU-aaa", "GPU-bbb"])
    kubelet.assign("ml", "qwen-0", "sidecar", "example.com/nic", ["eth1"])  # not a GPU resource
    kubelet.assign("web", "rr-1", "reranker", "gpu.intel.com/i915", ["card1-0"])
    got = PodResourcesClient(str(kubelet.socket_path)).list()
    assert sorted((a.holder, a.resource, a.device_id) for a in got) == [
        ("ml/qwen-0/server", "nvidia.com/gpu", "GPU-aaa"),
        ("ml/qwen-0/server", "nvidia.com/gpu", "GPU-bbb"),
        ("web/rr-1/reranker", "gpu.intel.com/i915", "card1-0"),
    ]
    assert kubelet.calls == 1


def test_bounds_drop_what_the_state_could_not_carry(kubelet: FakeKubelet) -> None:
    kubelet.assign("ml", "ok", "c", "nvidia.com/gpu", ["GPU-1", "x" * 300])
    kubelet.assign("ml", "Bad_Name", "c", "nvidia.com/gpu", ["GPU-2"])
    client = PodResourcesClient(str(kubelet.socket_path))
    got = client.list()
    assert [(a.pod, a.device_id) for a in got] == [("ok", "GPU-1")] and client.dropped == 2


def test_a_hung_kubelet_is_bounded_by_the_deadline(kubelet: FakeKubelet) -> None:
    kubelet.delay_seconds = 2.0
    source = PodResourcesSource(PodResourcesClient(str(kubelet.socket_path), timeout_seconds=0.2))
    t0 = time.monotonic()
    assignments, status = source.poll()
    assert time.monotonic() - t0 < 1.5
    assert assignments == [] and status.startswith("kubelet pod-resources: DEADLINE_EXCEEDED")


def test_failure_keeps_the_last_answer_for_a_while(kubelet: FakeKubelet) -> None:
    clock = ManualClock(0.0)
    kubelet.assign("ml", "p", "c", "amd.com/gpu", ["0000:03:00.0"])
    source = PodResourcesSource(PodResourcesClient(str(kubelet.socket_path)), keep_seconds=60, clock=clock)
    first, status = source.poll()
    assert len(first) == 1 and status == ""
    kubelet.fail_code = grpc.StatusCode.UNAVAILABLE
    clock.advance(30)
    kept, status = source.poll()
    assert kept == first and status.startswith("kubelet pod-resources: UNAVAILABLE")
    clock.advance(60)
    gone, status = source.poll()
    assert gone == [] and status


def test_no_socket_means_no_attribution_and_no_complaint(tmp_path: Path) -> None:
    source = PodResourcesSource(socket_path=str(tmp_path / "absent.sock"))
    assert source.poll() == ([], "")


@pytest.mark.parametrize(("raw", "key"), [
    ("GPU-3b0c9Ab1::2", "gpu-3b0c9ab1"),  # NVIDIA time-slicing replica
    ("GPU-3b0c9ab1/vgpu3", "gpu-3b0c9ab1"),  # GKE sharing
    ("MIG-77aa", "mig-77aa"),
    ("0000:03:00.0", "0000:03:00.0"),  # AMD device plugin: PCI bus id
    ("card1-4", "card1"),  # Intel: card + shared slot
])
def test_device_keys(raw: str, key: str) -> None:
    assert device_key(raw) == key


def test_pci_bus_ids_compare_across_nvml_and_sysfs_spellings() -> None:
    assert normalize_pci("00000000:01:00.0") == normalize_pci("0000:01:00.0") == "0000:01:00.0"
    assert normalize_pci("GPU-1") == ""


def sample(uuid: str, vendor: str = "nvidia", **kw: object) -> GpuSample:
    return GpuSample(index=0, uuid=uuid, vendor=vendor, arch="sm_90" if vendor == "nvidia" else "gfx1100",
                     **kw)  # type: ignore[arg-type]


def test_attribute_matches_each_vendors_ids_and_counts_replicas() -> None:
    mig = MigSample("MIG-1", "3g.40gb", 1, 0, 40 << 30, 0)
    samples = [sample("GPU-A"), sample("amd-uuid", "amd", pci_bus_id="0000:03:00.0"),
               sample("GPU-M", mig_enabled=True, mig_instances=[mig]),
               sample("intel-1", "intel", drm_card="card1")]
    assignments = [
        Assignment("a", "p1", "c", "nvidia.com/gpu", "GPU-A::0"),
        Assignment("b", "p2", "c", "nvidia.com/gpu", "GPU-A::3"),
        Assignment("b", "p2", "c", "nvidia.com/gpu", "GPU-A::1"),  # one container, two replicas of one GPU
        Assignment("c", "p3", "c", "amd.com/gpu", "0000:03:00.0"),
        Assignment("d", "p4", "c", "nvidia.com/mig-3g.40gb", "MIG-1"),
        Assignment("e", "p5", "c", "gpu.intel.com/i915", "card1-0"),
        Assignment("f", "p6", "c", "nvidia.com/gpu", "GPU-elsewhere"),
        Assignment("g", "p7", "c", "example.com/fpga", "GPU-A"),
    ]
    held = attribute(samples, assignments)
    assert held["GPU-A"].pods == ("a/p1/c", "b/p2/c") and held["GPU-A"].replicas_used == 3
    assert held["amd-uuid"].pods == ("c/p3/c",)
    assert held["MIG-1"].pods == ("d/p4/c",) and "GPU-M" not in held
    assert held["intel-1"].pods == ("e/p5/c",)
    assert len(held) == 4


def test_attribute_caps_the_holders_listed() -> None:
    many = [Assignment("ns", f"p{i:03d}", "c", "nvidia.com/gpu", f"GPU-A::{i}") for i in range(MAX_PODS + 10)]
    held = attribute([sample("GPU-A")], many)["GPU-A"]
    assert len(held.pods) == MAX_PODS and held.more == 10 and held.replicas_used == MAX_PODS + 10


@pytest.mark.parametrize(("capacity", "devices", "gfd", "want"), [
    ({"nvidia.com/gpu": "4"}, {"nvidia": 1}, None, {"nvidia": 4}),
    ({"nvidia.com/gpu": "8"}, {"nvidia": 2}, None, {"nvidia": 4}),
    ({"nvidia.com/gpu": "2"}, {"nvidia": 2}, None, {"nvidia": 1}),
    ({"nvidia.com/gpu": "3"}, {"nvidia": 2}, None, {"nvidia": 1}),  # not a whole multiple: not time-slicing
    ({}, {"nvidia": 2}, None, {"nvidia": 1}),
    ({"nvidia.com/gpu": "8"}, {"nvidia": 2}, 2, {"nvidia": 2}),  # GFD's label wins
    ({"amd.com/gpu": "junk"}, {"amd": 1}, None, {"amd": 1}),
    ({"gpu.intel.com/i915": "16"}, {"intel": 1}, None, {"intel": 16}),
])
def test_replicas_from_node_capacity(capacity: dict, devices: dict, gfd: int | None, want: dict) -> None:
    assert replicas_by_vendor(capacity, devices, gfd) == want


class _Fixed:
    def __init__(self, assignments: list[Assignment], status: str = "") -> None:
        self.assignments, self.status = assignments, status

    def poll(self) -> tuple[list[Assignment], str]:
        return self.assignments, self.status


def _metric_lines(agent: Agent, name: str) -> list[str]:
    return [ln for ln in agent.metrics.exposition().decode().splitlines() if ln.startswith(name + "{")]


def test_agent_publishes_holders_and_labels_metrics_like_dcgm_exporter(kubelet: FakeKubelet) -> None:
    node = node_from([nvidia_gpu(), nvidia_gpu()])
    reader = fleet_reader(node)
    agent = Agent("n1", reader, pod_resources=PodResourcesSource(socket_path=str(kubelet.socket_path)))
    first = agent.step(now=1.0)
    uuids = [g.uuid for g in first.state.gpus]
    kubelet.assign("ml", "qwen-0", "server", "nvidia.com/gpu", [uuids[1]])
    kubelet.assign("ml", "embed-0", "server", "nvidia.com/gpu", [uuids[0] + "::0"])
    kubelet.assign("ml", "rerank-0", "server", "nvidia.com/gpu", [uuids[0] + "::1"])
    state = agent.step(now=2.0).state
    wire = decode_state("n1", node_annotations(state)[keys.ANN_GPU_STATE])
    assert wire.gpus[1].pods == ("ml/qwen-0/server",)
    assert wire.gpus[0].pods == ("ml/embed-0/server", "ml/rerank-0/server") and wire.gpus[0].replicas_used == 2
    single = [ln for ln in _metric_lines(agent, "flexinfer_gpu_memory_used_bytes") if f'uuid="{uuids[1]}"' in ln]
    assert 'pod="qwen-0"' in single[0] and 'namespace="ml"' in single[0] and 'container="server"' in single[0]
    shared = [ln for ln in _metric_lines(agent, "flexinfer_gpu_memory_used_bytes") if f'uuid="{uuids[0]}"' in ln]
    assert 'pod=""' in shared[0]  # several holders: no single pod to name on the GPU's own series
    info = _metric_lines(agent, "flexinfer_gpu_pod_info")
    assert sorted(ln.split('pod="')[1].split('"')[0] for ln in info) == ["embed-0", "qwen-0", "rerank-0"]
    assert state.agent_status == "ok"


def test_holders_changing_is_a_reason_to_publish() -> None:
    from flexinfer.agent.publish import DryRunPublisher

    writes: list[dict] = []
    node = node_from([amd_gpu()])
    source = _Fixed([])
    agent = Agent("n1", fleet_reader(node), DryRunPublisher("n1", lambda *a: writes.append(a[2])),
                  pod_resources=source)
    agent.step(now=1.0)
    uuid = agent.last.state.gpus[0].uuid  # type: ignore[union-attr]
    assert agent.step(now=2.0).publish.written is False  # type: ignore[union-attr]
    source.assignments = [Assignment("ml", "p", "c", "amd.com/gpu", "0000:03:00.0")]
    res = agent.step(now=3.0).publish
    assert res is not None and res.written and res.reason == "pods"
    g = json.loads(writes[-1][keys.ANN_GPU_STATE])["g"][0]
    assert g["u"] == uuid and g["p"] == ["ml/p/c"]


def test_a_failing_kubelet_shows_in_agent_status() -> None:
    agent = Agent("n1", fleet_reader(node_from([amd_gpu()])),
                  pod_resources=_Fixed([], "kubelet pod-resources: UNAVAILABLE: connection refused"))
    assert agent.step(now=1.0).state.agent_status == "kubelet pod-resources: UNAVAILABLE: connection refused"
