"""Scheduler throughput through the real kube-scheduler (flexinfer.sim.controlplane), with and without the
extender: `python -m bench --scheduler` (or `--only scheduler`).

Setup: one control plane (etcd, kube-apiserver, kube-controller-manager, kwok), the shipped CRD/RBAC, the
extender as its ServiceAccount (mutual TLS as the shipped configuration says), and kwok Nodes from
`flexinfer.fleet.generate_fleet` carrying what their agents would publish (labels + GPU state
annotations; no agent processes: the extender's --max-state-age-seconds is raised so the fixed state stays
valid for the run). Node counts grow 100 -> 1000 -> 5000 on the same control plane.

Per size, the same kube-scheduler binary runs the shipped default-scheduler configuration
(daemonset/scheduler/kube-scheduler-config.yaml) in two modes, interleaved and repeated: `extender` (as
shipped) and `none` (the `extenders` stanza removed, nothing else changed). GPU pods (llama.cpp, 1000 MiB,
nvidia.com/gpu or amd.com/gpu: 1, alternating):
- throughput: a queue of pods is created while no scheduler runs, then kube-scheduler starts; pods/s =
  (pods - 1) / (last binding seen - first binding seen), so neither the client nor the start-up is measured;
- latency: then pods are created one by one at a fixed rate below both modes' throughput; the wait of each
  is binding seen - creation sent (p50, p99).
Two client-connection variants: `shipped` (kube-scheduler's default qps 50 / burst 100: one binding + one
event per pod, so binding is capped near 25-50 pods/s once the burst is spent) and `qps-1000` (qps 1000 /
burst 2000, so the scheduling cycle is what is measured). The extender's own time per request comes from its
/metrics, kube-scheduler's algorithm time (filter + extender + score) from its, and every component's CPU
per scheduled pod from /proc. When the 1000-node target is missed, one more run samples the extender
process with py-spy (every thread) and reports where its CPU goes.

Everything shares the machine's cores (2 here): kube-apiserver, etcd, kwok, the scheduler, the extender and
this client. The numbers are this machine's, recorded with it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexinfer import keys, kube
from flexinfer.fleet import generate_fleet
from flexinfer.sim.controlplane import ControlPlane, pinned_versions, wait_until
from flexinfer.sim.realcluster import RealCluster, kwok_node_objects

JSON = dict[str, Any]
NAMESPACE = "sched-bench"
TARGET_NODES = 1000
TARGET_MAX_COST = 0.20  # the extender may cost at most 20 % of the scheduler's throughput at 1000 nodes
VARIANTS = {"shipped": None, "qps-1000": {"qps": 1000, "burst": 2000}}
PACED_PODS = 200
PACED_RATE_PER_S = 20.0  # below the shipped configuration's ~25 pods/s (qps 50: one bind + one event per pod)


def bench_pod(i: int, run: str) -> JSON:
    vendor = ("nvidia", "amd")[i % 2]
    resource = {"nvidia": keys.RESOURCE_NVIDIA, "amd": keys.RESOURCE_AMD}[vendor]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{run}-{i:05d}", "namespace": NAMESPACE, "labels": {"bench-run": run},
                         "annotations": {keys.POD_MODEL: "bench", keys.POD_BACKEND: "llamacpp",
                                         keys.POD_VRAM_ESTIMATE_MB: "1000"}},
            "spec": {"containers": [{"name": "m", "image": "registry.invalid/bench:1",
                                     "resources": {"limits": {resource: "1"}}}],
                     "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0}}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def register_nodes(cp: ControlPlane, objs: list[JSON], threads: int = 8) -> None:
    chunks = [objs[i::threads] for i in range(threads)]
    errors: list[str] = []

    def work(chunk: list[JSON]) -> None:
        api = kube.api_client(kubeconfig=str(cp.admin_kubeconfig))
        try:
            for obj in chunk:
                try:
                    kube.create_object(api, obj)
                except kube.KubeError as e:
                    if e.status != 409:
                        errors.append(str(e))
        finally:
            api.close()

    ts = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} node creations failed, first: {errors[0]}")


def ready_nodes(api: Any) -> int:
    n = 0
    for node in kube.list_objects(api, "nodes"):
        conds = {c.get("type"): c.get("status") for c in (node.get("status") or {}).get("conditions") or []}
        taints = [t.get("key", "") for t in (node.get("spec") or {}).get("taints") or []]
        if conds.get("Ready") == "True" and not any(k.startswith("node.kubernetes.io/") for k in taints):
            n += 1
    return n


def metric_sum_count(text: str, name: str, label: str = "") -> tuple[float, float]:
    """(sum, count) of a histogram in Prometheus text, over series whose labels contain `label`."""
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum") and label in line:
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count") and label in line:
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def extender_metrics(cluster: RealCluster) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{cluster.extender_probe_url}/metrics", timeout=10) as r:
        return r.read().decode()


class BindWatch:
    """Watches a run's pods and records when each was first seen bound (local monotonic clock)."""

    def __init__(self, api: Any, run: str, expect: int) -> None:
        self.bound: dict[str, float] = {}
        self.expect = expect
        self.done = threading.Event()
        self.inf = kube.Informer(api, "pods", self._on, NAMESPACE, label_selector=f"bench-run={run}")

    def _on(self, etype: str, obj: JSON) -> None:
        now = time.monotonic()
        for p in obj.get("items", []) if etype == "SYNC" else [obj]:
            name = (p.get("metadata") or {}).get("name", "")
            if (p.get("spec") or {}).get("nodeName") and name not in self.bound:
                self.bound[name] = now
        if len(self.bound) >= self.expect:
            self.done.set()

    def __enter__(self) -> BindWatch:
        self.inf.start()
        self.inf.wait_synced(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.inf.stop()


def create_pods(cp: ControlPlane, indices: range, run: str, *, threads: int = 4,
                rate_per_s: float | None = None) -> dict[str, float]:
    """Create the pods (from `threads` clients, or one client at `rate_per_s`); name -> monotonic send time."""
    sent: dict[str, float] = {}
    t0 = time.monotonic()

    def create(idx: list[int], paced: bool) -> None:
        client = kube.api_client(kubeconfig=str(cp.admin_kubeconfig))
        try:
            for k, i in enumerate(idx):
                if paced and rate_per_s:
                    delay = t0 + k / rate_per_s - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                obj = bench_pod(i, run)
                sent[obj["metadata"]["name"]] = time.monotonic()
                kube.create_object(client, obj)
        finally:
            client.close()

    if rate_per_s:
        create(list(indices), True)
        return sent
    ts = [threading.Thread(target=create, args=(list(indices)[k::threads], False)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sent


def delete_pods(cp: ControlPlane, run: str, timeout_s: float = 300.0) -> None:
    api = cp.admin_api()
    kube.request(api, "DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods",
                 query={"labelSelector": f"bench-run={run}", "gracePeriodSeconds": "0"})
    wait_until(f"pods of {run} deleted",
               lambda: not kube.list_objects(api, "pods", NAMESPACE, label_selector=f"bench-run={run}"), timeout_s,
               interval_s=0.5)


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU time of a process (Linux /proc), 0 when unknown."""
    import os

    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


CPU_COMPONENTS = ("kube-apiserver", "etcd", "kube-scheduler", "flexinfer-extender", "kwok", "kube-controller-manager")


def cpu_snapshot(cp: ControlPlane) -> dict[str, float]:
    return {n: cpu_seconds(cp.procs[n].pid) for n in CPU_COMPONENTS if n in cp.procs and cp.procs[n].alive()}


def _delta(before: str, after: str, name: str, label: str) -> tuple[float, float]:
    s0, c0 = metric_sum_count(before, name, label)
    s1, c1 = metric_sum_count(after, name, label)
    return s1 - s0, c1 - c0


def one_run(cp: ControlPlane, cluster: RealCluster, mode: str, variant: str, pods: int, paced_pods: int,
            rate_per_s: float, run: str, timeout_s: float = 600.0) -> JSON:
    """Throughput: `pods` created while no scheduler runs, then kube-scheduler started: pods/s = pods /
    (last binding - first binding). Latency: then `paced_pods` created at `rate_per_s` (below both modes'
    throughput) with the scheduler running: creation -> binding p50/p99."""
    import os

    api = cp.admin_api()
    load_before = os.getloadavg()[0]
    cp.stop_scheduler()
    with BindWatch(api, run, pods) as watch:
        create_pods(cp, range(pods), run)
        m0 = extender_metrics(cluster)
        cluster.start_scheduler("default", extender=mode == "extender", client_connection=VARIANTS[variant])
        c0 = cpu_snapshot(cp)
        watch.done.wait(timeout_s)
        c1 = cpu_snapshot(cp)
        m1 = extender_metrics(cluster)
    sched = cp.component_metrics(cp.scheduler_ports["kube-scheduler"])
    times = sorted(watch.bound.values())
    drained = len(times)
    span = times[-1] - times[0] if drained > 1 else float("nan")
    f_s, f_n = _delta(m0, m1, "flexinfer_extender_request_duration_seconds", 'verb="filter"')
    p_s, p_n = _delta(m0, m1, "flexinfer_extender_request_duration_seconds", 'verb="prioritize"')
    a_sum, a_cnt = metric_sum_count(sched, "scheduler_scheduling_algorithm_duration_seconds")
    delete_pods(cp, run)
    paced_run = f"{run}-paced"
    with BindWatch(api, paced_run, paced_pods) as watch:
        sent = create_pods(cp, range(paced_pods), paced_run, rate_per_s=rate_per_s)
        watch.done.wait(timeout_s)
    waits = [watch.bound[n] - sent[n] for n in watch.bound if n in sent]
    delete_pods(cp, paced_run)
    return {
        "mode": mode, "variant": variant, "pods": pods, "bound": drained,
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other work on the machine shows here
        "pods_per_s": round((drained - 1) / span, 1) if drained > 1 and span > 0 else 0.0,
        "paced_pods": paced_pods, "paced_rate_per_s": rate_per_s, "paced_bound": len(waits),
        "wait_p50_ms": round(percentile(waits, 50) * 1000, 1), "wait_p99_ms": round(percentile(waits, 99) * 1000, 1),
        "extender_filter_requests": int(f_n), "extender_prioritize_requests": int(p_n),
        "extender_ms_per_pod": round((f_s + p_s) * 1000 / max(1, drained), 2) if f_n else 0.0,
        # CPU per scheduled pod during the drain, by component (from /proc; the scheduler's start-up excluded)
        "cpu_ms_per_pod": {n: round((c1[n] - c0[n]) * 1000 / max(1, drained), 2) for n in c1 if n in c0},
        "scheduler_attempts": int(a_cnt),  # scheduling algorithm runs (filter + extender + score), drain phase
        "scheduler_ms_per_attempt": round(a_sum * 1000 / a_cnt, 2) if a_cnt else None,
    }


def profile_extender(cp: ControlPlane, cluster: RealCluster, variant: str, pods: int, run_id: str,
                     top: int = 20) -> JSON:
    """One more drain run with the extender while py-spy samples every thread of the extender process
    (native frames off, 250 Hz); the functions where its samples land (own) and the request-path frames that
    contain them (inclusive), as milliseconds of extender CPU per scheduled pod."""
    import shutil
    import subprocess
    import sys

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy is not installed (pip install -e '.[test]')"}
    out = cp.workdir / f"extender-{run_id}.collapsed"
    pid = cluster.extender.pid
    rate = 250
    proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    try:
        r = one_run(cp, cluster, "extender", variant, pods, 1, PACED_RATE_PER_S, run_id)
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes what it sampled
        _, err = proc.communicate(timeout=60)
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"}
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    idle = total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]
        count = int(n)
        leaf = frames[-1] if frames else "?"
        if any(w in leaf for w in ("select", "poll", "epoll", "wait (threading", "_worker (", "acquire",
                                   "SSLSocket.read", "recv_into", "_serve (")):
            idle += count
            continue
        total += count
        own[leaf] = own.get(leaf, 0) + count
        for f in set(frames):
            if not f.startswith(("process ", "thread ")):
                incl[f] = incl.get(f, 0) + count
    per = max(1, r["bound"])

    def rows(d: dict[str, int]) -> list[JSON]:
        return [{"function": f, "samples": c, "ms_per_pod": round(c * 1000 / rate / per, 3)}
                for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"run": r, "rate_hz": rate, "busy_samples": total, "idle_samples": idle,
            "busy_ms_per_pod": round(total * 1000 / rate / per, 2), "top_own": rows(own), "top_inclusive": rows(incl),
            "note": "py-spy samples of every extender thread while on CPU; idle = leaf in select/epoll/locks"}


def run(progress: Callable[[str], None], quick: bool = False, sizes: tuple[int, ...] | None = None,
        reps: int | None = None, profile: bool = True) -> JSON:
    sizes = sizes or ((100, 1000) if quick else (100, 1000, 5000))
    reps = reps or (1 if quick else 2)
    out: JSON = {"components": pinned_versions(), "sizes": list(sizes), "reps": reps,
                 "variants": {k: v or "kube-scheduler defaults (qps 50, burst 100)" for k, v in VARIANTS.items()},
                 "pod": "llama.cpp, 1000 MiB, one nvidia.com/gpu or amd.com/gpu (alternating)", "runs": []}
    t_start = time.monotonic()
    progress("scheduler bench: starting the control plane (hack/k8s binaries)")
    with ControlPlane(verbosity=1) as cp:
        fleet = generate_fleet(max(sizes))
        for node in fleet.nodes:
            node.gpu_replicas = 16  # device-plugin slots never limit the burst; VRAM is what the extender checks
        cluster = RealCluster(cp, fleet, extender_args=["--max-state-age-seconds", "86400", "--log-level", "warning"])
        cluster.start(nodes=False, agents=False, extender=True)
        cp.create_namespace(NAMESPACE)
        have = 0
        now = time.time()
        for n in sizes:
            names = [node.name for node in fleet.nodes[have:n]]
            progress(f"scheduler bench: registering {len(names)} kwok nodes ({n} in all)")
            t0 = time.monotonic()
            register_nodes(cp, kwok_node_objects(fleet, names, published=True, now=now, ready=True))
            wait_until(f"{n} kwok nodes Ready", lambda n=n: ready_nodes(cp.admin_api()) >= n, 600, interval_s=2)
            have = n
            reg_s = round(time.monotonic() - t0, 1)
            pods = 200 if n <= 100 else 500
            for variant in VARIANTS:
                for rep in range(reps):
                    for mode in ("extender", "none"):
                        run_id = f"n{n}-{variant}-{mode}-{rep}"
                        progress(f"scheduler bench: {n} nodes, {variant}, {mode}, run {rep + 1}/{reps}: {pods} pods "
                                 f"queued, then {PACED_PODS} at {PACED_RATE_PER_S:g}/s")
                        r = one_run(cp, cluster, mode, variant, pods, PACED_PODS, PACED_RATE_PER_S, run_id)
                        r.update({"nodes": n, "rep": rep, "register_seconds": reg_s})
                        out["runs"].append(r)
                        progress(f"  {r['pods_per_s']} pods/s, wait p99 {r['wait_p99_ms']} ms, extender "
                                 f"{r['extender_ms_per_pod']} ms/pod, scheduler "
                                 f"{r['scheduler_ms_per_attempt']} ms/attempt")
            if n == TARGET_NODES and profile:
                missed = [r for r in summarize(out["runs"]) if r["nodes"] == n and r["extender_cost"] is not None
                          and r["extender_cost"] > TARGET_MAX_COST]
                if missed:
                    progress(f"scheduler bench: target missed at {n} nodes ({missed[0]['variant']}): one more "
                             "extender run sampled by py-spy")
                    out["profile"] = {"nodes": n, "variant": missed[0]["variant"],
                                      **profile_extender(cp, cluster, missed[0]["variant"], pods, f"profile-{n}")}
        cp.stop_scheduler()
        cluster.stop()
    out["summary"] = summarize(out["runs"])
    out["seconds"] = round(time.monotonic() - t_start, 1)
    return out


def summarize(runs: list[JSON]) -> list[JSON]:
    """Per (nodes, variant): median pods/s and wait p99 per mode, and the extender's cost."""
    rows = []
    keys_ = sorted({(r["nodes"], r["variant"]) for r in runs}, key=lambda k: (k[0], k[1] != "shipped"))
    for n, variant in keys_:
        by_mode = {m: [r for r in runs if r["nodes"] == n and r["variant"] == variant and r["mode"] == m]
                   for m in ("extender", "none")}
        if not all(by_mode.values()):
            continue
        tput = {m: round(statistics.median(r["pods_per_s"] for r in rs), 1) for m, rs in by_mode.items()}
        p99 = {m: round(statistics.median(r["wait_p99_ms"] for r in rs), 1) for m, rs in by_mode.items()}
        cost = 1 - tput["extender"] / tput["none"] if tput["none"] else None
        rows.append({"nodes": n, "variant": variant,
                     "pods_per_s_extender": tput["extender"], "pods_per_s_none": tput["none"],
                     "wait_p99_ms_extender": p99["extender"], "wait_p99_ms_none": p99["none"],
                     "extender_cost": round(cost, 3) if cost is not None else None,
                     "extender_ms_per_pod": round(statistics.median(
                         r["extender_ms_per_pod"] for r in by_mode["extender"]), 2),
                     "scheduler_ms_per_attempt_extender": round(statistics.median(
                         r["scheduler_ms_per_attempt"] or 0 for r in by_mode["extender"]), 2),
                     "scheduler_ms_per_attempt_none": round(statistics.median(
                         r["scheduler_ms_per_attempt"] or 0 for r in by_mode["none"]), 2),
                     "cpu_ms_per_pod": {m: _median_dicts([r.get("cpu_ms_per_pod") or {} for r in rs])
                                        for m, rs in by_mode.items()}})
    return rows


def _median_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    keys_ = {k for d in ds for k in d}
    return {k: round(statistics.median(d[k] for d in ds if k in d), 2) for k in sorted(keys_)}


def targets(res: JSON) -> list[tuple[str, float | None, float, str, str]]:
    """(target, measured, limit, unit, detail); lower is better."""
    sc = res.get("scheduler") or {}
    rows = [r for r in sc.get("summary", []) if r["nodes"] == TARGET_NODES]
    out = []
    for r in rows:
        out.append((f"scheduler: the extender costs <= 20 % of kube-scheduler's throughput at {TARGET_NODES} nodes "
                    f"({r['variant']})",
                    round(100 * r["extender_cost"], 1) if r["extender_cost"] is not None else None,
                    100 * TARGET_MAX_COST, "%",
                    f"{r['pods_per_s_extender']} vs {r['pods_per_s_none']} pods/s; wait p99 "
                    f"{r['wait_p99_ms_extender']} vs {r['wait_p99_ms_none']} ms; extender {r['extender_ms_per_pod']} "
                    "ms per pod"))
    return out


def markdown_lines(sc: JSON | None) -> list[str]:
    if not sc:
        return []
    comps = ", ".join(f"{k} {v}" for k, v in (sc.get("components") or {}).items())
    lines = ["", f"## Scheduler throughput (real kube-scheduler, kwok nodes; {comps})", "",
             f"Pods: {sc['pod']}; {sc['reps']} interleaved runs per mode, medians shown. Variants: "
             + "; ".join(f"`{k}` = {v}" for k, v in sc["variants"].items()) + ".", "",
             "| nodes | variant | pods/s with extender | pods/s without | extender cost | wait p99 ms with / without "
             "| extender ms per pod | scheduler ms per attempt with / without |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sc.get("summary", []):
        cost = "-" if r["extender_cost"] is None else f"{100 * r['extender_cost']:.1f} %"
        lines.append(f"| {r['nodes']} | {r['variant']} | {r['pods_per_s_extender']} | {r['pods_per_s_none']} | {cost} "
                     f"| {r['wait_p99_ms_extender']} / {r['wait_p99_ms_none']} | {r['extender_ms_per_pod']} "
                     f"| {r['scheduler_ms_per_attempt_extender']} / {r['scheduler_ms_per_attempt_none']} |")
    lines += ["", "CPU per scheduled pod while the queue drains (ms, from /proc; all processes share the cores):", "",
              "| nodes | variant | mode | " + " | ".join(CPU_COMPONENTS) + " | total |",
              "|---|---|---|" + "---|" * (len(CPU_COMPONENTS) + 1)]
    for r in sc.get("summary", []):
        for mode in ("extender", "none"):
            cpu = (r.get("cpu_ms_per_pod") or {}).get(mode) or {}
            cells = [str(cpu.get(c, "-")) for c in CPU_COMPONENTS]
            lines.append(f"| {r['nodes']} | {r['variant']} | {mode} | " + " | ".join(cells)
                         + f" | {round(sum(cpu.values()), 2)} |")
    lines += ["", "Every run:", "", "| nodes | variant | mode | run | pods/s | wait p50 / p99 ms | bound | "
              "extender filter / prioritize requests | scheduler attempts | load avg before / after |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sc.get("runs", []):
        lines.append(f"| {r['nodes']} | {r['variant']} | {r['mode']} | {r['rep'] + 1} | {r['pods_per_s']} "
                     f"| {r['wait_p50_ms']} / {r['wait_p99_ms']} | {r['bound']}/{r['pods']} "
                     f"| {r['extender_filter_requests']} / {r['extender_prioritize_requests']} "
                     f"| {r['scheduler_attempts']} | {' / '.join(map(str, r.get('loadavg_1m') or []))} |")
    prof = sc.get("profile")
    if prof and "run" in prof:
        r = prof["run"]
        lines += ["", f"### Profile: the extender process under kube-scheduler's traffic, {prof['nodes']} nodes, "
                      f"{prof['variant']} ({r['bound']} pods at {r['pods_per_s']} pods/s while sampled)", "",
                  f"py-spy at {prof['rate_hz']} Hz, every thread: {prof['busy_ms_per_pod']} ms of busy extender "
                  f"time per scheduled pod ({prof['busy_samples']} busy, {prof['idle_samples']} idle samples; "
                  f"{prof['note']}).", "", "Where the busy samples land (own):", "",
                  "| function | samples | ms per pod |", "|---|---|---|"]
        lines += [f"| `{x['function']}` | {x['samples']} | {x['ms_per_pod']} |" for x in prof["top_own"]]
        lines += ["", "Frames on the stack (inclusive):", "", "| function | samples | ms per pod |", "|---|---|---|"]
        lines += [f"| `{x['function']}` | {x['samples']} | {x['ms_per_pod']} |" for x in prof["top_inclusive"]]
    elif prof:
        lines += ["", f"Profile not taken: {prof.get('error')}"]
    return lines
