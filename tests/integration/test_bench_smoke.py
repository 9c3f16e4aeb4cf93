"""The benchmark harness itself still works (a tiny run), so `python -m bench` does not rot between runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from bench import extender_bench, report, workload
from bench.stats import percentile, summary_ms

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 201))  # 1..200
    assert percentile(values, 50) == 100
    assert percentile(values, 99) == 198
    assert percentile([5.0], 99) == 5.0
    s = summary_ms([0.001, 0.002, 0.003])
    assert (s["n"], s["p50_ms"], s["max_ms"]) == (3, 2.0, 3.0)


def test_realistic_nodes_are_kubelet_sized_and_keep_our_keys() -> None:
    plain = workload.node_objects(30, 1_800_000_000.0)
    real = workload.node_objects(30, 1_800_000_000.0, realistic=True)
    sizes = [len(msgspec.json.encode(o)) for o in real]
    assert min(sizes) >= 5_000 and max(sizes) <= 10_500, sizes
    for p, r in zip(plain, real, strict=True):
        assert r["metadata"]["name"] == p["metadata"]["name"]
        for k, v in p["metadata"]["annotations"].items():
            assert r["metadata"]["annotations"][k] == v
        assert r["metadata"]["managedFields"] and r["status"]["images"]


def test_tiny_extender_run_measures_everything(tmp_path: Path) -> None:
    plan = extender_bench.Plan(sizes=(20,), names_iters={20: 30}, nodes_iters={20: 10}, grpc_iters={20: 20},
                               load_seconds=0.5, load_concurrency=2, budget_s=2.0, churn_seconds=1.0,
                               hostile_scale=0.001, new_shape_min_iters=30, transport_iters=20)
    res = extender_bench.run(plan, tmp_path, lambda _msg: None)
    assert not res["notes"], res["notes"]
    rows = {(r["mode"], r["verb"]): r for r in res["latency"]}
    assert set(rows) == {("names", "filter"), ("names", "prioritize"), ("nodes", "filter"), ("nodes", "prioritize")}
    v = rows[("names", "filter")]["extender"]["verdicts"]
    assert v["passed"] + v["failed"] + v["unresolvable"] == 20 and v["passed"] > 0
    assert rows[("nodes", "filter")]["extender-cold-cache"]["verdicts"] == v  # same answer parsed from the request
    assert {g["verb"] for g in res["grpc"]} == {"Filter", "Prioritize"}
    # HTTP and gRPC agree on the same question asked at the same time (reservations made by the prioritize rows
    # between the HTTP latency rows and the gRPC section may change verdicts since)
    grpc_filter = next(g for g in res["grpc"] if g["verb"] == "Filter")
    assert grpc_filter["verdicts"] == grpc_filter["http_verdicts"]
    assert sum(grpc_filter["verdicts"].values()) == 20
    assert {(t["mode"], t["server"]) for t in res["throughput"]} == {
        ("names", "extender"), ("names", "floor"), ("nodes", "extender"), ("nodes", "floor")}
    assert all(t["requests"] > 0 and t["errors"] == 0 for t in res["throughput"])
    new_shape = rows[("names", "filter")]
    assert sum(new_shape["extender-new-shape"]["verdicts"].values()) == 20 and new_shape["floor-new-shape"]["n"] > 0
    assert res["churn"]["pods"] >= 20 and res["churn"]["filter"]["n"] > 0 and res["churn"]["server-filter"]["n"] > 0
    bound = res["churn_bound"]  # the same with bound model pods on 60 % of the GPU nodes: their VRAM committed
    assert bound["bound_pods_held"] > 0 and bound["filter"]["n"] > 0 and bound["server-prioritize"]["n"] > 0
    assert res["rss_shapes"]["shapes"] == 100 and res["rss_shapes"]["rss_after_mib"] > 0
    assert res["hostile"]["gfx_targets"]["verdict_series"] < 20  # 50 invented gfx targets here: a closed set
    assert all(g["floor"]["n"] > 0 for g in res["grpc"])  # grpcio's own cost next to the extender's
    # the transports alone: an echo process answered the extender's own answer bytes over both (it checks them)
    assert {t["verb"] for t in res["transport"]} == {"Filter", "Prioritize"}
    echo = next(t for t in res["transport"] if t["verb"] == "Filter")
    assert echo["grpc"]["n"] == echo["http"]["n"] == 20 and echo["grpc_server_cpu_us"] >= 0
    assert echo["answer_bytes"]["http"] > 20 * len("node-00000")  # the real 20-node answer, not a stand-in

    full = {"date": "2026-01-01", "command": "python -m bench", "mode": "quick", "seconds": 1.0, "notes": [],
            "machine": {"host": "h", "nproc": 2, "cpu_model": "cpu", "memory_mib": 1, "kernel": "k", "python": "3",
                        "packages": {"msgspec": "x", "starlette": "x", "uvicorn": "x", "grpcio": "x"}},
            "extender": res}
    full["targets"] = report.targets(full)
    assert {t["result"] for t in full["targets"]} == {"NOT MEASURED"}  # no 1000/5000-node rows, no agent
    md, js = report.write(full, tmp_path / "out")
    text = md.read_text()
    assert "| 20 | names | filter |" in text
    assert "## gRPC and HTTP transports alone" in text and "| 20 | Filter |" in text
    assert "### Churn with bound model pods (60 % of the GPU nodes)" in text  # churn_bound rendered, not only in JSON
    assert f"| filter | {bound['filter']['p50_ms']} / {bound['filter']['p99_ms']} |" in text
    md.write_text("stale")  # `python -m bench.report FILE.json --write-md` renders the .md again from the JSON
    subprocess.run([sys.executable, "-m", "bench.report", str(js), "--write-md"], check=True, cwd=ROOT)
    assert md.read_text() == text
    assert msgspec.json.decode(js.read_bytes())["extender"]["latency"]
