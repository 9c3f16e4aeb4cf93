"""The dry-run CLI and the fleet-driven fake readers over the homelab fleet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flexinfer.agent.agent import Agent
from flexinfer.agent.main import main
from flexinfer.agent.readers.base import MultiReader, NullReader
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer import keys
from flexinfer.fleet import default_fleet_path, dump_fleet, load_fleet, parse_fleet
from flexinfer.state import decode_state

from .agent_helpers import amd_gpu, node_from, nvidia_gpu

HOMELAB = str(default_fleet_path())


def dry_run(*args: str) -> dict:
    res = CliRunner().invoke(main, ["--fake-gpus", HOMELAB, "--once", "--dry-run", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_dry_run_gtx980ti() -> None:
    out = dry_run("--node", "cblevins-gtx980ti")
    labels, ann = out["labels"], out["annotations"]
    assert labels == {
        keys.LABEL_VENDOR: "nvidia", keys.LABEL_ARCH: "sm_52", keys.LABEL_FAMILY: "maxwell",
        keys.LABEL_COMPUTE: "5.2", keys.LABEL_VRAM: "6Gi", keys.LABEL_COUNT: "1",
        keys.LABEL_PRODUCT: "NVIDIA-GeForce-GTX-980-Ti", keys.LABEL_MEMORY_MIB: "6144",
        keys.LABEL_COMPUTE_MAJOR: "5", keys.LABEL_COMPUTE_MINOR: "2", keys.LABEL_DRIVER_VERSION: "580.95.05",
        keys.LABEL_DRIVER_MAJOR: "580", keys.LABEL_CUDA_VERSION: "13.0", keys.LABEL_CUDA_MAJOR: "13",
        keys.LABEL_CUDA_MINOR: "0", keys.LABEL_SHARING: "none", keys.LABEL_REPLICAS: "1",
    }
    assert ann[keys.ANN_FREE_MEMORY] == "5800" and ann[keys.ANN_AGENT_STATUS] == "ok"
    st = decode_state("cblevins-gtx980ti", ann[keys.ANN_GPU_STATE], "nvidia")
    assert st.gpus[0].total_mib == 6144 and st.gpus[0].free_mib == 5800


def test_dry_run_node_from_env_and_strix_halo() -> None:
    res = CliRunner().invoke(main, ["--fake-gpus", HOMELAB, "--once", "--dry-run"], env={"NODE_NAME": "khelben"})
    assert res.exit_code == 0, res.output
    labels = json.loads(res.stdout)["labels"]
    assert labels[keys.LABEL_ARCH] == "gfx1151" and labels[keys.LABEL_UNIFIED_MEMORY] == "true"


def test_dry_run_cpu_node() -> None:
    out = dry_run("--node", "cpu-worker")
    assert out["labels"] == {keys.LABEL_VENDOR: "none", keys.LABEL_COUNT: "0"}
    assert out["annotations"][keys.ANN_FREE_MEMORY] == "0"


@pytest.mark.parametrize("args,text", [
    (["--node", "nope"], "not in the fleet"),
    ([], "--node is required"),
])
def test_cli_errors(args: list[str], text: str) -> None:
    res = CliRunner().invoke(main, ["--fake-gpus", HOMELAB, "--once", "--dry-run", *args], env={"NODE_NAME": ""})
    assert res.exit_code != 0 and text in res.output


def test_bad_fleet_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "f.yaml"
    p.write_text("nodes: [{name: a, gpus: [{vendor: nvidia, arch: banana, totalMiB: 1}]}]\n")
    res = CliRunner().invoke(main, ["--fake-gpus", str(p), "--node", "a", "--once", "--dry-run"])
    assert res.exit_code == 1 and "banana" in res.output


def test_console_script_subprocess_stdout_is_pure_json() -> None:
    out = subprocess.run([sys.executable, "-m", "flexinfer.agent.main", "--fake-gpus", HOMELAB, "--node",
                          "cblevins-7900xtx", "--once", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["labels"][keys.LABEL_ARCH] == "gfx1100"


def test_library_missing_node(tmp_path: Path) -> None:
    fleet = parse_fleet({"nodes": [
        {"name": "nv", "faults": [{"type": "library-missing"}], "gpus": [nvidia_gpu()]},
        {"name": "amd", "faults": [{"type": "library-missing"}], "gpus": [amd_gpu()]},
    ]})
    path = tmp_path / "f.yaml"
    path.write_text(dump_fleet(fleet))
    for name, text in (("nv", "Library Not Found"), ("amd", "cannot load amdsmi")):
        res = CliRunner().invoke(main, ["--fake-gpus", str(path), "--node", name, "--once", "--dry-run"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["labels"][keys.LABEL_COUNT] == "0" and text in out["annotations"][keys.ANN_AGENT_STATUS]


def test_every_homelab_node_samples_cleanly() -> None:
    fleet = load_fleet(HOMELAB)
    for n in fleet.nodes:
        agent = Agent(n.name, fleet_reader(n))
        for i in range(5):
            st = agent.step(now=float(i)).state
        assert st.agent_status == "ok", (n.name, st.agent_status)
        assert len(st.gpus) == len(n.gpus) and all(g.healthy for g in st.gpus)
        for g, fg in zip(st.gpus, n.gpus, strict=True):
            assert g.arch == fg.arch and g.total_mib == fg.total_mib
            assert abs((g.total_mib - g.free_mib) - fg.used_mib) <= 100  # noise fault is +/-100 MiB


def test_mixed_vendor_node_uses_both_readers() -> None:
    node = node_from([nvidia_gpu(), amd_gpu()])
    reader = fleet_reader(node)
    assert isinstance(reader, MultiReader)
    st = Agent("mix", reader).step(now=1.0).state
    assert [g.vendor for g in st.gpus] == ["nvidia", "amd"] and [g.index for g in st.gpus] == [0, 1]
    assert isinstance(fleet_reader(node_from([])), NullReader)


def test_noise_is_deterministic() -> None:
    node = node_from([nvidia_gpu(faults=[{"type": "noise", "mib": 100}])])
    runs = []
    for _ in range(2):
        agent = Agent("n1", fleet_reader(node))
        runs.append([agent.step(now=float(i)).state.gpus[0].free_mib for i in range(10)])
    assert runs[0] == runs[1] and len(set(runs[0])) > 1
    assert all(abs(f - (23028 - 1000)) <= 100 for f in runs[0])


def test_lost_fault_from_fleet() -> None:
    node = node_from([nvidia_gpu(faults=[{"type": "lost", "atSample": 2}])])
    agent = Agent("n1", fleet_reader(node))
    assert agent.step(now=1.0).state.gpus[0].healthy
    st = agent.step(now=2.0).state
    assert not st.gpus[0].healthy and st.gpus[0].reason == "GPU is lost"
    assert st.healthy_free_mib == 0


def test_real_reader_on_a_host_without_gpu_libraries(tmp_path: Path) -> None:
    """No libnvidia-ml, no libamd_smi, no KFD: no GPUs and a reason naming both (in a clean subprocess)."""
    code = ("from flexinfer.agent.main import build_real_reader; "
            f"r = build_real_reader('auto', sys_root={str(tmp_path)!r}); "
            "print('RESULT', type(r).__name__, r.sample(), r.status)")
    env = {"PATH": "/usr/bin:/bin", "FLEXINFER_LOG_LEVEL": "error"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("RESULT NullReader []") and "NVML" in line and "amdsmi" in line


def test_dry_run_streaming_mode_prints_json_lines_and_stops_on_sigterm() -> None:
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "flexinfer.agent.main", "--fake-gpus", HOMELAB, "--node",
                             "cblevins-5930k", "--dry-run", "--interval-seconds", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["labels"][keys.LABEL_ARCH] == "gfx1100"
        time.sleep(0.5)  # a few samples; nothing changes, so nothing more is printed
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0 and rest.strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
