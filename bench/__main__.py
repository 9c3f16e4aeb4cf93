"""`python -m bench [--quick] [--out bench/results] [--only extender,agent,controller,proxy,fuzz]`

Runs every benchmark and writes bench/results/<date>-<host>.md and .json (see bench/README.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import agent_bench, controller_bench, edge_bench, extender_bench, fuzz, proxy_bench, report, scheduler_bench
from bench.machine import machine
from flexinfer.state import rfc3339

SECTIONS = ("extender", "agent", "controller", "proxy", "fuzz", "edge", "scheduler")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100 and 1000 nodes, fewer requests (~1-2 min)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    p.add_argument("--fuzz-examples", type=int, default=0, help="default 1500 (quick: 300); 5000 takes ~13 min here")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile pass on missed extender targets")
    p.add_argument("--scheduler", action="store_true", help="only the scheduler-throughput section (real "
                   "kube-scheduler + kwok nodes; builds hack/k8s binaries on first use; ~25 min, --quick ~8 min)")
    a = p.parse_args(argv)
    only = {s.strip() for s in ("scheduler" if a.scheduler else a.only).split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    from flexinfer import logs

    logs.configure("warning")
    started = time.monotonic()

    def progress(msg: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - started:6.1f}s] {msg}\n")
        sys.stderr.flush()

    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "started_utc": rfc3339(time.time()),
        "command": "python -m bench" + ("" if argv is None and len(sys.argv) < 2
                                        else " " + shlex.join(argv if argv is not None else sys.argv[1:])),
        "mode": "quick" if a.quick else "full",
        "machine": machine(),
        "notes": [],
    }
    if only != set(SECTIONS):  # a partial run gets its own file: never overwrites a full run's
        res["suffix"] = "-" + "-".join(s for s in SECTIONS if s in only)
    with tempfile.TemporaryDirectory(prefix="flexinfer-bench-") as d:
        work = Path(d)
        if "extender" in only:
            plan = extender_bench.Plan.quick() if a.quick else extender_bench.Plan()
            res["extender"] = extender_bench.run(plan, work, progress)
        if "agent" in only:
            res["agent"] = agent_bench.run(work, progress, quick=a.quick)
        if "controller" in only:
            try:
                res["controller"] = controller_bench.run(progress, quick=a.quick)
            except Exception as e:
                res["notes"].append(f"controller bench failed: {type(e).__name__}: {e}")
        if "proxy" in only:
            try:
                res["proxy"] = proxy_bench.run(progress, quick=a.quick)
            except Exception as e:
                res["notes"].append(f"proxy bench failed: {type(e).__name__}: {e}")
        if "edge" in only:  # mutual TLS and replica forwarding costs, /healthz during a 1M-name request
            try:
                res["edge"] = edge_bench.run(progress, quick=a.quick)
                res["notes"] += edge_bench.notes(res["edge"])
            except Exception as e:
                res["notes"].append(f"edge bench failed: {type(e).__name__}: {e}")
        if "scheduler" in only:  # real kube-scheduler with and without the extender, kwok nodes
            try:
                res["scheduler"] = scheduler_bench.run(progress, quick=a.quick)
            except Exception as e:
                res["notes"].append(f"scheduler bench failed: {type(e).__name__}: {e}")
        if "fuzz" in only:
            res["fuzz"] = fuzz.run(a.fuzz_examples or (300 if a.quick else 1500), progress,
                                   timeout_s=120 if a.quick else 300)
        res["targets"] = report.targets(res)
        if "extender" in only and not a.no_profile:
            from bench.profile import profile_request

            missed = {t["target"] for t in res["targets"] if t["result"] == "MISS" or t["result"].startswith("over")}
            profs = []
            if any(t.startswith("nodenames") and "new shape" not in t for t in missed):
                n = max(s for s in (5000, 1000) if s in (plan.sizes))
                progress(f"profile: filter nodenames {n} nodes (cProfile, in-process)")
                profs.append(profile_request(n, "names", "filter", 5 if n >= 5000 else 20, work))
            if any("new shape" in t for t in missed):
                n = max(s for s in (5000, 1000) if s in (plan.sizes))
                progress(f"profile: filter nodenames {n} nodes, new pod shape per request (cProfile, in-process)")
                profs.append(profile_request(n, "names", "filter", 10, work, new_shape=True))
            if any(t.startswith("full-nodes") for t in missed):
                progress("profile: filter full-nodes 1000 nodes, empty cache (cProfile, in-process)")
                profs.append(profile_request(1000, "nodes", "filter", 5, work, cold=True))
            if any("requests/s" in t for t in missed):
                progress("profile: filter nodenames 100 nodes (cProfile, in-process)")
                profs.append(profile_request(100, "names", "filter", 100, work))
            res["profiles"] = profs
    res["seconds"] = round(time.monotonic() - started, 1)
    md, js = report.write(res, Path(a.out))
    progress(f"wrote {md} and {js}")
    for t in res["targets"]:
        meas = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}"
        sys.stdout.write(f"{t['result']:>26}  {t['target']}: {meas}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
