"""Where the time goes when a target is missed: cProfile of the extender's request path in-process
(same code the HTTP handler runs: `parse_request_body` then `Extender.filter`/`prioritize`), top functions by
own time. py-spy / pyinstrument are used by nobody here: cProfile ships with Python.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import itertools
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench import workload


def _extender(items: list[dict[str, Any]], workdir: Path) -> Any:
    from flexinfer.extender.main import build

    f = workdir / "profile-nodes.json"
    f.write_bytes(msgspec.json.encode(workload.node_list(items)))
    return build(nodes_from=str(f), max_state_age_seconds=3600.0)


def profile_request(n: int, mode: str, verb: str, iters: int, workdir: Path, *, cold: bool = False,
                    new_shape: bool = False, top: int = 14) -> dict[str, Any]:
    from flexinfer.extender.http import parse_request_body

    from flexinfer import logs

    logs.configure("warning")
    items = workload.node_objects(n, time.time(), realistic=True)
    running = _extender([] if cold else items, workdir)
    ext = running.extender
    pod = workload.managed_pod()
    names = [i["metadata"]["name"] for i in items]
    body = workload.args_nodenames(pod, names) if mode == "names" else workload.args_nodes(pod, items)
    # cold full-nodes: every Node new to the extender (two resourceVersions alternate, as in the HTTP bench,
    # so its request memo never hits)
    firsts = itertools.cycle([workload.args_nodes(pod, workload.with_rv_suffix(items, k)) for k in "ab"]
                             if cold and mode == "nodes" else [body])
    # new_shape: every request a pod shape the extender has not seen (vram estimate differs)
    bodies = iter([workload.args_nodenames(workload.managed_pod("bench-new-shape-x", vram_mib=9000 + 7 * i), names)
                   for i in range(2 * iters + 3)] if new_shape else [])

    lists = running.web.name_lists  # as the HTTP handler does

    def once() -> None:
        p = parse_request_body(next(bodies) if new_shape else next(firsts), ext, name_lists=lists)
        if verb == "filter":
            ext.filter(p.req, p.names, p.views)
        else:
            ext.prioritize_scores(p.req, p.names, p.views)

    # keep the JSON log lines out of the bench's output while profiling
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        saved, sys.stderr = sys.stderr, devnull
        try:
            logs.configure("info", "json")  # as the bench servers run (one JSON line per request)
            for _ in range(3):
                once()
            t0 = time.perf_counter()
            for _ in range(iters):
                once()
            plain_ms = (time.perf_counter() - t0) / iters * 1000
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(iters):
                once()
            prof.disable()
        finally:
            sys.stderr = saved
            logs.configure("warning")
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        rows.append({"function": f"{Path(file).name}:{line}({func})", "calls_per_request": round(nc / iters, 1),
                     "own_ms_per_request": round(tt / iters * 1000, 3),
                     "cumulative_ms_per_request": round(ct / iters * 1000, 3)})
    return {"nodes": n, "mode": mode + (", new pod shape per request" if new_shape else ""), "verb": verb,
            "cache": "cold" if cold else "warm",
            "in_process_ms_per_request": round(plain_ms, 3), "top_own_time": rows}


if __name__ == "__main__":
    import json

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(profile_request(1000, "names", "filter", 20, Path(d)), indent=1))
