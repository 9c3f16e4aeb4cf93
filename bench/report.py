"""Targets (PASS/MISS) and the results files: bench/results/<date>-<host>.md and .json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import proxy_bench, scheduler_bench
from bench.machine import machine_line


def _lat(res: dict[str, Any], n: int, mode: str, verb: str) -> dict[str, Any] | None:
    for r in res.get("extender", {}).get("latency", []):
        if r["nodes"] == n and r["mode"] == mode and r["verb"] == verb:
            return r
    return None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, limit: float, unit: str, *, lower_is_better: bool = True,
            detail: str = "", informational: bool = False) -> None:
        if measured is None:
            out.append({"target": name, "measured": None, "limit": limit, "unit": unit, "result": "NOT MEASURED",
                        "detail": detail})
            return
        ok = measured < limit if lower_is_better else measured >= limit
        result = ("within" if ok else "over") + " (no issue target)" if informational else ("PASS" if ok else "MISS")
        out.append({"target": name, "measured": measured, "limit": limit, "unit": unit,
                    "result": result, "detail": detail})

    for verb in ("filter", "prioritize"):
        r = _lat(res, 5000, "names", verb)
        add(f"nodenames {verb}, 5000 nodes: p99 < 10 ms", r["extender"]["p99_ms"] if r else None, 10.0, "ms")
        add(f"nodenames {verb}, 5000 nodes: p99 within 2x of the do-nothing floor",
            r["ratio_p99"] if r else None, 2.0001, "x floor",
            detail=(f"floor p99 {r['floor']['p99_ms']} ms; p50 ratio {r['ratio_p50']}x" if r else ""))
    for n in (5000, 1000):
        for verb in ("filter", "prioritize"):
            r = _lat(res, n, "names", verb)
            fresh, ffloor = (r.get("extender-new-shape"), r.get("floor-new-shape")) if r else (None, None)
            ratio = round(fresh["p99_ms"] / ffloor["p99_ms"], 2) if fresh and ffloor else None
            add(f"nodenames {verb}, {n} nodes, a pod shape never seen before: p99 within 2x of the floor "
                "(interleaved)", ratio, 2.0001, "x floor", informational=verb == "prioritize",
                detail=(f"p50 {fresh['p50_ms']} / p99 {fresh['p99_ms']} ms; floor p50 {ffloor['p50_ms']} / p99 "
                        f"{ffloor['p99_ms']} ms" if fresh and ffloor else ""))
    c = res.get("extender", {}).get("churn")
    if c and c["nodes"] >= 5000:
        ratio = round(c["filter"]["p99_ms"] / c["floor-filter"]["p99_ms"], 2)
        add(f"churn ({c['rate_percent_per_s']:g} % of the Nodes changing per second through the watch, 10 shapes, "
            f"prioritize after filter), {c['nodes']} nodes: filter p99 within 2x of the floor", ratio, 2.0001,
            "x floor", detail=f"filter p50 {c['filter']['p50_ms']} / p99 {c['filter']['p99_ms']} ms; floor p50 "
            f"{c['floor-filter']['p50_ms']} / p99 {c['floor-filter']['p99_ms']} ms; {c['pods']} pods, "
            f"{c['patches']} Node updates in {c['patch_seconds']} s")
    else:
        add("churn, 5000 nodes: filter p99 within 2x of the floor", None, 2.0001, "x floor")
    cb = res.get("extender", {}).get("churn_bound")
    if cb and cb["nodes"] >= 5000:
        ratio = round(cb["filter"]["p99_ms"] / cb["floor-filter"]["p99_ms"], 2)
        add(f"churn as above, a bound model pod on {cb['bound_percent']:g} % of the GPU nodes (VRAM committed), "
            f"{cb['nodes']} nodes: filter p99 within 2x of the floor", ratio, 2.0001, "x floor", informational=True,
            detail=f"filter p50 {cb['filter']['p50_ms']} / p99 {cb['filter']['p99_ms']} ms; floor p50 "
            f"{cb['floor-filter']['p50_ms']} / p99 {cb['floor-filter']['p99_ms']} ms; {cb['bound_pods_held']:g} "
            f"bound pods committed; {cb['pods']} pods, {cb['patches']} Node updates in {cb['patch_seconds']} s")
    else:
        add("churn with bound model pods, 5000 nodes: filter p99 within 2x of the floor", None, 2.0001, "x floor",
            informational=True)
    for verb, hverb in (("Filter", "filter"), ("Prioritize", "prioritize")):
        big = max((g["nodes"] for g in res.get("extender", {}).get("grpc", [])), default=0)
        g = next((g for g in res.get("extender", {}).get("grpc", []) if g["nodes"] == big and g["verb"] == verb), None)
        if big < 5000:  # the target is at 5000 nodes
            g = None
        # HTTP asked the same question right after every gRPC call (same run, same noise); older results: the
        # HTTP latency section's row
        lat_row = _lat(res, big, "names", hverb)
        h = g.get("http") if g and g.get("http") else (lat_row["extender"] if lat_row else None)
        worst = round(max(g["p50_ms"] / h["p50_ms"], g["p99_ms"] / h["p99_ms"]), 2) if g and h else None
        gf = g.get("floor") if g else None
        how = " (interleaved)" if g and g.get("http") else ""
        tr = next((t for t in res.get("extender", {}).get("transport", [])
                   if t["nodes"] == big and t["verb"] == verb), None) if g else None
        add(f"gRPC {verb}, 5000 nodes: p50 and p99 no slower than HTTP {hverb}", worst, 1.0001, "x HTTP",
            detail=(f"gRPC {g['p50_ms']} / {g['p99_ms']} ms, HTTP{how} {h['p50_ms']} / {h['p99_ms']} ms "
                    "(p50 / p99)" if g and h else "")
            + (f"; gRPC do-nothing floor {gf['p50_ms']} / {gf['p99_ms']} ms" if gf else "")
            + (f"; the transports alone (an echo of these answers): gRPC p50 {tr['grpc']['p50_ms']} vs HTTP "
               f"{tr['http']['p50_ms']} ms, server CPU {tr['grpc_server_cpu_us']:g} vs {tr['http_server_cpu_us']:g} us "
               "per call" if tr else ""))
    for verb in ("filter", "prioritize"):
        r = _lat(res, 1000, "nodes", verb)
        add(f"full-nodes {verb}, 1000 nodes: p99 < 100 ms (node cache warm)",
            r["extender"]["p99_ms"] if r else None, 100.0, "ms")
        add(f"full-nodes {verb}, 1000 nodes: p99 < 100 ms (no node cache, Nodes seen before: request memo)",
            r["extender-request-memo"]["p99_ms"] if r and r.get("extender-request-memo") else None, 100.0, "ms")
        add(f"full-nodes {verb}, 1000 nodes: p99 < 100 ms (no node cache, every Node new: all parsed)",
            r["extender-cold-cache"]["p99_ms"] if r else None, 100.0, "ms")
    rs = res.get("extender", {}).get("rss_shapes")
    rs = rs if rs and rs["nodes"] >= 5000 else None  # the setup: 5000 cached Nodes
    add("extender RSS with 5000 cached Nodes and 100 pod shapes < 300 MiB", rs["rss_after_mib"] if rs else None,
        300.0, "MiB", detail=f"{rs['rss_before_mib']} MiB before the shapes" if rs else "")
    h = res.get("extender", {}).get("hostile")
    if h and h["http_unknown_names"]["names_each"] >= 100_000:  # the rows at full size
        gfx = h["gfx_targets"]
        add(f"verdict metric series after Nodes with {gfx['distinct_gfx']} invented gfx targets: a closed set",
            gfx["verdict_series"], 100, "series", detail=f"/metrics {gfx['metrics_bytes']} bytes")
        parts = [f"HTTP {h['http_unknown_names']['requests']} x {h['http_unknown_names']['names_each']} unknown "
                 f"names ({h['http_unknown_names']['statuses']}): {h['http_unknown_names']['rss_mib']} MiB"]
        if h.get("grpc_unknown_names"):
            gu = h["grpc_unknown_names"]
            parts.append(f"gRPC {gu['requests']} x {gu['names_each']} ({gu['codes']}): {gu['rss_mib']} MiB")
        add("extender RSS after the hostile run (issue 14 rows), same server: reported", h["rss_after_mib"], 300.0,
            "MiB", informational=True, detail=f"before {h['rss_before_mib']} MiB; " + "; ".join(parts))
    tp = next((t for t in res.get("extender", {}).get("throughput", [])
               if t["nodes"] == 100 and t["mode"] == "names" and t["server"] == "extender"), None)
    add(">= 500 filter requests/s at 100 nodes (nodenames, separate load process)", tp["rps"] if tp else None,
        500.0, "req/s", lower_is_better=False,
        detail=f"{tp['concurrency']} connections, {tp['seconds']} s, {tp['errors']} errors" if tp else "")
    agent = res.get("agent", {})
    cpu = max((c["cpu_ms_per_sample"] for c in agent.get("cpu", [])), default=None)
    add("agent: < 5 ms CPU per sample (8 GPUs)", cpu, 5.0, "ms",
        detail=", ".join(f"{c['vendor']} {c['cpu_ms_per_sample']} ms" for c in agent.get("cpu", [])))
    proc = agent.get("process")
    add("agent: < 80 MiB RSS", proc["rss_mib"] if proc else None, 80.0, "MiB",
        detail=f"peak {proc['peak_rss_mib']} MiB" if proc else "")
    w = agent.get("writes")
    add("agent: <= 1 Node write per minute under +/-100 MiB noise", w["writes_per_minute"] if w else None, 1.0001,
        "writes/min", detail=f"{w['writes']} writes in {w['samples']} samples ({w['writes_per_hour']}/h)" if w else "")
    if "proxy" in res:
        for name, measured, limit, unit, detail in proxy_bench.targets(res):
            add(name, measured, limit, unit, detail=detail)
    if "scheduler" in res:
        for name, measured, limit, unit, detail in scheduler_bench.targets(res):
            add(name, measured, limit, unit, detail=detail)
    return out



def _churn_table(c: dict[str, Any]) -> list[str]:
    """A churn run's filter and prioritize latencies beside the floor's (markdown table lines)."""
    return ["| verb | extender p50 / p99 ms | floor p50 / p99 ms |", "|---|---|---|",
            f"| filter | {_pp(c['filter'])} | {_pp(c['floor-filter'])} |",
            f"| prioritize | {_pp(c['prioritize'])} | {_pp(c['floor-prioritize'])} |"]

def _pp(d: dict[str, Any] | None) -> str:
    return f"{d['p50_ms']} / {d['p99_ms']}" if d else "-"


def _vv(v: dict[str, int] | None) -> str:
    return f"{v['passed']} / {v['failed']} / {v['unresolvable']}" if v else "-"


def markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"# FlexInfer bench: {res['date']} on {m['host']}", "",
             f"Machine: {machine_line(m)}.", "",
             f"Command: `{res['command']}` ({res['mode']} run, {res['seconds']:.0f} s). "
             f"Servers pinned to CPU {res.get('extender', {}).get('pinning', {}).get('server_cpu', '-')}, "
             f"clients/load to CPU {res.get('extender', {}).get('pinning', {}).get('client_cpu', '-')}.", ""]
    lines += ["## Targets", "", "| target | measured | result | detail |", "|---|---|---|---|"]
    for t in res["targets"]:
        meas = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}"
        lines.append(f"| {t['target']} | {meas} | **{t['result']}** | {t['detail']} |")
    ext = res.get("extender", {})
    if ext:
        lines += ["", "## Extender over HTTP (loopback, one keep-alive connection, sequential)", "",
                  f"Node objects average {ext.get('node_json_bytes_avg', '-')} bytes of JSON (kubelet-like: "
                  "managedFields, conditions, images). Pod: llama.cpp, 12000 MiB, 1 nvidia.com/gpu.", "",
                  "Columns: `extender` = the same pod every request (the extender memoises verdicts per pod shape, "
                  "as for the replicas of one Model); `new shape` = every request a pod shape never seen before "
                  "(memo misses: the policy runs for every node); `empty cache` (full-nodes form) = no informer cache, "
                  "every node new (a new resourceVersion each request), so every node is parsed; `request memo` = "
                  "no informer cache, the same Nodes as the previous request (views reused by (name, "
                  "resourceVersion)); `floor` = decode + answer only.", "",
                  "| nodes | form | verb | body | extender p50 / p99 ms | new shape p50 / p99 ms "
                  "| extender, empty cache p50 / p99 ms | extender, request memo p50 / p99 ms "
                  "| floor p50 / p99 ms | ratio p50 / p99 | passed / failed / unresolvable |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ext.get("latency", []):
            e, f = r["extender"], r["floor"]
            c = r.get("extender-cold-cache")
            v = e.get("verdicts")
            lines.append(
                f"| {r['nodes']} | {r['mode']} | {r['verb']} | {r['body_bytes'] / 1024:.0f} KiB "
                f"| {_pp(e)} | {_pp(r.get('extender-new-shape'))} (floor {_pp(r.get('floor-new-shape'))}) | {_pp(c)} "
                f"| {_pp(r.get('extender-request-memo'))} "
                f"| {_pp(f)} "
                f"| {r['ratio_p50']} / {r['ratio_p99']} | {_vv(v)} |")
        if ext.get("grpc"):
            lines += ["", "## Extender over gRPC (same policy, same cache; node names in the request)", "",
                      "Client: the request serialised once, the answer's bytes read (as the HTTP client reads its "
                      "body); `HTTP, interleaved` = the same question over HTTP right after each gRPC call.", "",
                      "| nodes | rpc | p50 ms | p99 ms | HTTP, interleaved p50 / p99 ms "
                      "| do-nothing floor p50 / p99 ms | passed / failed / unresolvable |",
                      "|---|---|---|---|---|---|---|"]
            for r in ext["grpc"]:
                v = r.get("verdicts")
                lines.append(f"| {r['nodes']} | {r['verb']} | {r['p50_ms']} | {r['p99_ms']} | {_pp(r.get('http'))} "
                             f"| {_pp(r.get('floor'))} | {_vv(v)} |")
        if ext.get("transport"):
            lines += ["", "## gRPC and HTTP transports alone (bench.transport)", "",
                      "One echo process answers with the extender's own answer bytes from the rows above: gRPC "
                      "through grpcio with the extender's server options, HTTP through uvicorn with the extender's "
                      "configuration; no policy, no parsing. Interleaved like the rows above; CPU per call from "
                      "each transport alone (/proc, 10 ms ticks).", "",
                      "| nodes | rpc | answer bytes gRPC / HTTP | gRPC p50 / p99 ms | HTTP p50 / p99 ms "
                      "| server CPU per call gRPC / HTTP us | client CPU per call gRPC / HTTP us |",
                      "|---|---|---|---|---|---|---|"]
            for t in ext["transport"]:
                b = t["answer_bytes"]
                lines.append(f"| {t['nodes']} | {t['verb']} | {b['grpc']} / {b['http']} | {_pp(t['grpc'])} "
                             f"| {_pp(t['http'])} | {t['grpc_server_cpu_us']:g} / {t['http_server_cpu_us']:g} "
                             f"| {t['grpc_client_cpu_us']:g} / {t['http_client_cpu_us']:g} |")
        lines += ["", "## Throughput (separate load process, aiohttp, keep-alive connections)", "",
                  "| nodes | form | server | connections | requests | errors | req/s | server CPU s | load CPU s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in ext.get("throughput", []):
            lines.append(f"| {t['nodes']} | {t['mode']} | {t['server']} | {t['concurrency']} | {t['requests']} "
                         f"| {t['errors']} | {t['rps']} | {t['server_cpu_seconds']} | {t['client_cpu_seconds']} |")
        ch = ext.get("churn")
        if ch:
            lines += ["", "## Churn (agent heartbeat fleet through the watch)", "",
                      f"{ch['nodes']} kubelet-sized Nodes on a fake API server (own process, client CPU); "
                      f"{ch['rate_percent_per_s']:g} % of them get new GPU annotations every second "
                      f"({ch['patches']} updates in {ch['patch_seconds']} s); the extender watches them (informer). "
                      f"10 pod shapes in rotation, each filter (every node) followed by prioritize (the nodes that "
                      f"passed), as kube-scheduler does; extender and floor interleaved; {ch['pods']} pods in "
                      f"{ch['seconds']:g} s; extender CPU {ch['extender_cpu_seconds']} s, RSS {ch['rss_mib']} MiB.", "",
                      *_churn_table(ch)]
            if ch.get("server-filter"):
                lines += ["", f"Inside the extender (its own per-request time, from its log): filter "
                              f"{_pp(ch['server-filter'])} ms, prioritize {_pp(ch.get('server-prioritize'))} ms "
                              "(p50 / p99)."]
        cb = ext.get("churn_bound")
        if cb:
            lines += ["", f"### Churn with bound model pods ({cb['bound_percent']:g} % of the GPU nodes)", "",
                      f"The same run with a bound model pod on {cb['bound_percent']:g} % of the GPU nodes, as in a "
                      f"busy cluster: the extender's pod watch holds {cb['bound_pods_held']:g} commitments (VRAM "
                      f"committed to bound pods) folded into the free columns it filters on; waited for before "
                      f"measuring. {cb['patches']} Node updates in {cb['patch_seconds']} s; {cb['pods']} pods in "
                      f"{cb['seconds']:g} s; extender CPU {cb['extender_cpu_seconds']} s, RSS {cb['rss_mib']} MiB.", "",
                      *_churn_table(cb)]
            if cb.get("server-filter"):
                lines += ["", f"Inside the extender: filter {_pp(cb['server-filter'])} ms, prioritize "
                              f"{_pp(cb.get('server-prioritize'))} ms (p50 / p99)."]
        rs, hz = ext.get("rss_shapes"), ext.get("hostile")
        if rs or hz:
            lines += ["", "## Memory", ""]
            if rs:
                lines.append(f"- {rs['shapes']} pod shapes (filter + prioritize each) over {rs['nodes']} cached Nodes: "
                             f"RSS {rs['rss_before_mib']} -> {rs['rss_after_mib']} MiB.")
            if hz:
                lines.append(f"- Hostile run on the same server: {json.dumps(hz)}")
        if ext.get("loadavg_start"):
            lines += ["", f"Load average (1/5/15 min) when the extender section started: "
                          f"{', '.join(f'{x:.1f}' for x in ext['loadavg_start'])}; when it ended: "
                          f"{', '.join(f'{x:.1f}' for x in ext.get('loadavg_end') or ())} (other work shares the "
                          "machine's cores; the interleaved ratios cancel most of it)."]
        if ext.get("server_rss_mib"):
            lines += ["", "Server RSS after the run (MiB): " + ", ".join(
                f"{k} {v}" for k, v in ext["server_rss_mib"].items()) + "."]
    agent = res.get("agent", {})
    if agent:
        lines += ["", "## Agent", "", "| measurement | value |", "|---|---|"]
        for c in agent.get("cpu", []):
            lines.append(f"| CPU per sample, 8 {c['vendor']} GPUs (fake library, real reader), {c['samples']} samples "
                         f"| {c['cpu_ms_per_sample']} ms (wall {c['wall_ms_per_sample']} ms); /metrics render "
                         f"{c['metrics_scrape_cpu_ms']} ms for {c['metrics_bytes']} bytes |")
        for key, label in (("process", "agent process"), ("process_arena2", "agent process, MALLOC_ARENA_MAX=2")):
            p = agent.get(key)
            if p:
                lines.append(f"| RSS, {label} (8 GPUs, metrics + gRPC + publishing) | {p['rss_mib']} MiB "
                             f"(peak {p['peak_rss_mib']}; anonymous {p.get('rss_anon_mib', '-')}, file-backed "
                             f"{p.get('rss_file_mib', '-')}; {p.get('threads', '-')} threads); whole-process CPU "
                             f"{p['process_cpu_ms_per_sample']} ms per sample at {p['interval_seconds']} s |")
        mods = (agent.get("process") or {}).get("modules_note") or {}
        if mods:
            lines.append(f"| import cost (RSS) | interpreter {mods['interpreter_mib']} MiB; agent modules "
                         f"{mods['agent_imports_without_kubernetes_mib']} MiB; + kubernetes.client "
                         f"{mods['plus_kubernetes_client_mib']} MiB |")
        w = agent.get("writes")
        if w:
            lines.append(f"| Node writes, {w['samples']} samples at {w['interval_seconds']:g} s, +/-{w['noise_mib']} "
                         f"MiB noise per GPU (threshold {w['threshold_mib']} MiB, heartbeat "
                         f"{w['heartbeat_seconds']:g} s) | {w['writes']} writes = {w['writes_per_hour']}/h "
                         f"({w['writes_per_minute']}/min); {w['api_requests']} API requests |")
        for n in agent.get("notes", []):
            lines.append(f"| note | {n} |")
    ctl = res.get("controller", {})
    if ctl:
        lines += ["", f"## Controller: {ctl.get('models')} Models in {ctl.get('groups')} groups", "",
                  f"API: {ctl.get('api')}.", "", "| pass | wall s | controller CPU s | writes | errors |",
                  "|---|---|---|---|---|"]
        for p in ctl.get("passes", []):
            lines.append(f"| {p['pass']} | {p['seconds']} | {p['client_cpu_seconds']} | {p['writes']} "
                         f"| {p['errors']} |")
        lines += ["", f"Pure decision path (groups.decide_group, 20 groups of 10): "
                      f"{ctl.get('pure_decision_ms_for_200_models')} ms. Deployments running after the activation "
                      f"pass: {ctl.get('deployments_running_after')} (activated members running: "
                      f"{ctl.get('activated_members_running')})."]
    lines += proxy_bench.markdown_lines(res.get("proxy"))
    lines += scheduler_bench.markdown_lines(res.get("scheduler"))
    fz = res.get("fuzz")
    if fz:
        lines += ["", "## Fuzz (hypothesis)", "", f"`{fz['command']}` with FLEXINFER_FUZZ_EXAMPLES={fz['examples']}: "
                  f"exit {fz['exit_code']}, {fz['seconds']} s — {fz['summary']}"]
    profs = res.get("profiles", [])
    if profs:
        lines += ["", "## Profiles (targets missed)", ""]
        for p in profs:
            lines += [f"### {p['verb']} {p['mode']} {p['nodes']} nodes, cache {p['cache']}: "
                      f"{p['in_process_ms_per_request']} ms per request in-process", "",
                      "| function | calls/request | own ms | cumulative ms |", "|---|---|---|---|"]
            for row in p["top_own_time"]:
                lines.append(f"| `{row['function']}` | {row['calls_per_request']} | {row['own_ms_per_request']} "
                             f"| {row['cumulative_ms_per_request']} |")
            lines.append("")
    notes = res.get("notes", []) + ext.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write(res: dict[str, Any], outdir: Path) -> tuple[Path, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    quick = "-quick" if res["mode"] == "quick" else ""
    stem = f"{res['date']}-{res['machine']['host']}{res.get('suffix', '')}{quick}"
    j = outdir / f"{stem}.json"
    md = outdir / f"{stem}.md"
    j.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    md.write_text(markdown(res))
    return md, j


def readme_block(res: dict[str, Any], results_name: str) -> str:
    """The compact Results section for bench/README.md (and the top-level README)."""
    m = res["machine"]
    lines = [f"Run `{res['command']}` on {res['date']}: {machine_line(m)}; servers pinned to one core. "
             f"Raw numbers, profiles and the exact method: [`results/{results_name}.md`](results/{results_name}.md) "
             f"and `.json`.", "",
             "| target (one core) | measured | result |", "|---|---|---|"]
    for t in res["targets"]:
        meas = "-" if t["measured"] is None else f"{t['measured']:g} {t['unit']}"
        extra = f" ({t['detail']})" if t["detail"] else ""
        lines.append(f"| {t['target']} | {meas}{extra} | **{t['result']}** |")
    ext = res.get("extender", {})
    if ext.get("latency"):
        lines += ["", "| nodes | form | verb | extender p50 / p99 ms | new pod shape p50 / p99 ms "
                      "| floor p50 / p99 ms | gRPC p50 / p99 ms |", "|---|---|---|---|---|---|---|"]
        grpc = {(g["nodes"], g["verb"].lower()): g for g in ext.get("grpc", [])}
        for r in ext["latency"]:
            g = grpc.get((r["nodes"], r["verb"])) if r["mode"] == "names" else None
            form = "nodenames" if r["mode"] == "names" else "full nodes"
            ext_cell = _pp(r["extender"])
            if r.get("extender-cold-cache"):
                ext_cell += f" (empty cache {_pp(r['extender-cold-cache'])}"
                memo = r.get("extender-request-memo")
                ext_cell += f", request memo {_pp(memo)})" if memo else ")"
            lines.append(f"| {r['nodes']} | {form} | {r['verb']} | {ext_cell} | {_pp(r.get('extender-new-shape'))} "
                         f"| {_pp(r['floor'])} | {_pp(g)} |")
    tps = ext.get("throughput", [])
    if tps:
        lines += ["", "Throughput, filter at 100 nodes, separate load process: " + "; ".join(
            f"{t['mode']} {t['server']} {t['rps']:g} req/s" for t in tps) + "."]
    agent = res.get("agent", {})
    if agent:
        cpu = ", ".join(f"{c['vendor']} {c['cpu_ms_per_sample']} ms" for c in agent.get("cpu", []))
        p = agent.get("process") or {}
        w = agent.get("writes") or {}
        lines += ["", f"Agent (8 GPUs): CPU per sample {cpu}; RSS {p.get('rss_mib', '-')} MiB; "
                      f"{w.get('writes', '-')} Node writes in {w.get('samples', '-')} noisy samples "
                      f"({w.get('writes_per_hour', '-')}/h)."]
    ctl = res.get("controller", {})
    if ctl.get("passes"):
        lines += ["", f"Controller, {ctl['models']} Models in {ctl['groups']} groups on the local fake API server: "
                  + "; ".join(f"{p['pass']} pass {p['seconds']} s ({p['writes']} writes)" for p in ctl["passes"])
                  + f"; the pure decision alone {ctl.get('pure_decision_ms_for_200_models')} ms."]
    fz = res.get("fuzz")
    if fz:
        lines += ["", f"Fuzz: FLEXINFER_FUZZ_EXAMPLES={fz['examples']}: {fz['summary']} (exit {fz['exit_code']})."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse

    cli = argparse.ArgumentParser(prog="python -m bench.report",
                                  description="Render a results JSON file: the README block (default), or with "
                                              "--write-md its results .md again, targets recomputed from the numbers.")
    cli.add_argument("file", type=Path, help="bench/results/<date>-<host>[-suffix].json")
    cli.add_argument("--write-md", action="store_true", help="rewrite the .md next to the JSON file (not the JSON)")
    a = cli.parse_args()
    data = json.loads(a.file.read_text())
    if a.write_md:
        data["targets"] = targets(data)
        a.file.with_suffix(".md").write_text(markdown(data))
        sys.stdout.write(f"{a.file.with_suffix('.md')}\n")
    else:
        sys.stdout.write(readme_block(data, a.file.stem))
