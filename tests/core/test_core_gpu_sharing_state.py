"""The state annotation's shared-GPU facts (pods, time-slicing replicas, MIG instances) and the labels that
interoperate (memory in MiB, compute capability, driver/CUDA/ROCm versions, sharing strategy)."""

from __future__ import annotations

import json

import pytest

from flexinfer import keys
from flexinfer.errors import ParseError
from flexinfer.state import (
    MAX_PODS,
    GpuState,
    NodeGpuState,
    decode_state,
    encode_state,
    node_labels,
    state_labels,
)


def gpu(i: int = 0, **kw: object) -> GpuState:
    base: dict[str, object] = dict(index=i, uuid=f"GPU-{i}", vendor="nvidia", arch="sm_90", total_mib=81559,
                                   free_mib=80000)
    base.update(kw)
    return GpuState(**base)  # type: ignore[arg-type]


def test_shared_fields_round_trip() -> None:
    gpus = (
        gpu(0, uuid="MIG-a", total_mib=40192, free_mib=40000, mig_profile="3g.40gb", mig_parent=0,
            pods=("ml/qwen-0/server",)),
        gpu(1, uuid="MIG-b", total_mib=40192, free_mib=40192, mig_profile="3g.40gb", mig_parent=0),
        gpu(2, uuid="GPU-2", replicas=4, replicas_used=2, pods=("a/p1/c", "b/p2/c")),
    )
    state = NodeGpuState("n", gpus, 10.0)
    raw = encode_state(state)
    back = decode_state("n", raw)
    assert back.gpus == gpus
    wire = json.loads(raw)["g"]
    assert "s" not in wire[0] and "p" not in wire[1] and "mp" not in wire[2]  # defaults stay off the wire
    assert encode_state(back) == raw


def test_available_memory_follows_time_slicing_replicas() -> None:
    assert gpu(replicas=4, replicas_used=3).available_mib == 80000
    assert gpu(replicas=4, replicas_used=4).available_mib == 0  # every replica handed out
    assert gpu(replicas=1, replicas_used=1).available_mib == 80000  # not shared: memory decides
    assert gpu(replicas=4, replicas_used=4).free_mib == 80000  # the memory itself is still free


def test_describe() -> None:
    assert gpu(3).describe() == "GPU 3"
    assert gpu(5, mig_profile="1g.10gb", mig_parent=1).describe() == "MIG 1g.10gb on GPU 1"
    assert gpu(0, replicas=4, replicas_used=1).describe() == "GPU 0, 4 time-slicing replicas (1 in use)"


def shared_wire(**fields: object) -> str:
    g = {"i": 0, "u": "u", "a": "sm_90", "t": 100, "f": 50, "v": "nvidia"} | fields
    return json.dumps({"v": 1, "t": 1.0, "g": [g]})


@pytest.mark.parametrize("fields", [
    {"p": ["no-slashes"]},
    {"p": ["UPPER/pod/c"]},
    {"p": ["ns/pod/c"] * (MAX_PODS + 1)},
    {"p": [5]},
    {"s": 0},
    {"s": 5000},
    {"su": -1},
    {"mn": "big", "mp": 0},
    {"mn": "3g.40gb"},  # no physical GPU index
])
def test_junk_shared_fields_name_the_annotation(fields: dict[str, object]) -> None:
    with pytest.raises(ParseError, match=keys.ANN_GPU_STATE):
        decode_state("n", shared_wire(**fields))


def test_labels_of_a_mig_node_count_instances() -> None:
    gpus = [gpu(i, uuid=f"MIG-{i}", total_mib=mib, mig_profile=p, mig_parent=0)
            for i, (p, mib) in enumerate([("3g.40gb", 40192), ("2g.20gb", 19968), ("1g.10gb", 9856)])]
    labels = node_labels(gpus)
    assert labels[keys.LABEL_COUNT] == "3" and labels[keys.LABEL_MEMORY_MIB] == "9856"
    assert labels[keys.LABEL_SHARING] == "mig" and labels[keys.LABEL_REPLICAS] == "1"


def test_labels_of_a_time_sliced_node() -> None:
    labels = node_labels([gpu(0, replicas=4), gpu(1, replicas=8)])
    assert labels[keys.LABEL_SHARING] == "time-slicing" and labels[keys.LABEL_REPLICAS] == "4"


def test_version_labels_are_integers_for_affinity() -> None:
    state = NodeGpuState("n", (gpu(arch="sm_52", total_mib=6144),), 1.0, driver_version="570.86.15",
                         cuda_version="12.8")
    labels = state_labels(state)
    assert labels[keys.LABEL_DRIVER_VERSION] == "570.86.15" and labels[keys.LABEL_DRIVER_MAJOR] == "570"
    assert labels[keys.LABEL_CUDA_VERSION] == "12.8"
    assert (labels[keys.LABEL_CUDA_MAJOR], labels[keys.LABEL_CUDA_MINOR]) == ("12", "8")
    assert (labels[keys.LABEL_COMPUTE_MAJOR], labels[keys.LABEL_COMPUTE_MINOR]) == ("5", "2")
    assert keys.LABEL_ROCM_VERSION not in labels


def test_version_labels_on_a_two_vendor_node_drop_the_ambiguous_driver() -> None:
    gpus = (gpu(0), gpu(1, vendor="amd", arch="gfx1100", total_mib=24560, free_mib=24000))
    labels = state_labels(NodeGpuState("n", gpus, 1.0, driver_version="580.95.05", cuda_version="13.0",
                                       rocm_version="7.0.2"))
    assert keys.LABEL_DRIVER_VERSION not in labels
    assert labels[keys.LABEL_CUDA_VERSION] == "13.0" and labels[keys.LABEL_ROCM_VERSION] == "7.0.2"
    assert (labels[keys.LABEL_ROCM_MAJOR], labels[keys.LABEL_ROCM_MINOR]) == ("7", "0")


@pytest.mark.parametrize("junk", ["", "unknown", "N/A", "v" * 200])
def test_unparsable_versions_give_no_labels(junk: str) -> None:
    labels = state_labels(NodeGpuState("n", (gpu(),), 1.0, driver_version=junk, cuda_version=junk))
    assert not any(k in labels for k in (keys.LABEL_DRIVER_VERSION, keys.LABEL_DRIVER_MAJOR, keys.LABEL_CUDA_VERSION))
