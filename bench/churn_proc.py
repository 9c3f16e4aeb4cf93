"""An agent heartbeat fleet for the churn bench, in its own process: a fake API server
(`flexinfer.sim.fakeapi.FakeApiServer`) holding N kubelet-sized Nodes, and a patcher that rewrites the GPU
annotations of `--rate` percent of them every second (free memory moves, a new observation time), as N
agents publishing would. The extender under test watches these Nodes through its informer.

With `--bound-percent P`, P % of the GPU Nodes also run one bound, Running model pod each (the pods the extender
watches and commits VRAM for), so most GPU nodes hold a commitment, as in a busy cluster.

Prints `{"url": ...}` on stdout once the Nodes are in; on stdin EOF stops and prints `{"patches": n,
"seconds": s}`.

    python -m bench.churn_proc --nodes 5000 --rate 5 [--cpu 1] [--bound-percent 60]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--rate", type=float, default=5.0, help="percent of the Nodes patched per second")
    p.add_argument("--cpu", type=int, default=-1)
    p.add_argument("--bound-percent", type=float, default=0.0, help="percent of the GPU Nodes running a model pod")
    a = p.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})

    from dataclasses import replace

    from bench import workload
    from flexinfer import logs
    from flexinfer.fleet import generate_fleet
    from flexinfer.nodes import fleet_gpu_states
    from flexinfer.sim.fakeapi import FakeApiServer
    from flexinfer.state import NodeGpuState, node_annotations

    logs.configure("warning", "json")
    now = time.time()
    items = workload.node_objects(a.nodes, now, realistic=True)
    fleet = {n.name: fleet_gpu_states(n) for n in generate_fleet(a.nodes).nodes}
    rng = random.Random(1)
    stop = threading.Event()
    count = [0]

    def patcher(fake: FakeApiServer) -> None:
        names = [i["metadata"]["name"] for i in items if fleet[i["metadata"]["name"]]]
        per_tick = max(1, round(a.nodes * a.rate / 100 / 10))  # ten ticks a second
        tick = time.monotonic()
        while not stop.is_set():
            for name in rng.sample(names, min(per_tick, len(names))):
                gpus = [replace(g, free_mib=rng.randrange(0, g.total_mib + 1, 256)) for g in fleet[name]]
                ann = node_annotations(NodeGpuState(name, tuple(gpus), time.time()))
                fake.patch_object("nodes", name, {"metadata": {"annotations": ann}})
                count[0] += 1
            tick += 0.1
            stop.wait(max(0.0, tick - time.monotonic()))

    with FakeApiServer(history_limit=50000) as fake:
        for obj in items:
            fake.put_object({"apiVersion": "v1", "kind": "Node", **obj})
        gpu_nodes = [i["metadata"]["name"] for i in items if fleet[i["metadata"]["name"]]]
        for k, name in enumerate(random.Random(2).sample(gpu_nodes, round(len(gpu_nodes) * a.bound_percent / 100))):
            pod = workload.managed_pod(f"bound-model-{k}-abcde", vram_mib=(4000, 8000, 12000)[k % 3])
            pod["metadata"]["uid"] = f"bound-{k}"
            fake.put_object({"apiVersion": "v1", "kind": "Pod", **pod,
                             "spec": {**pod["spec"], "nodeName": name}, "status": {"phase": "Running"}})
        sys.stdout.write(json.dumps({"url": fake.url}) + "\n")
        sys.stdout.flush()
        started = time.monotonic()
        t = threading.Thread(target=patcher, args=(fake,), daemon=True)
        if a.rate > 0:
            t.start()
        sys.stdin.read()
        stop.set()
        if t.is_alive():
            t.join(5)
        sys.stdout.write(json.dumps({"patches": count[0], "seconds": round(time.monotonic() - started, 2)}) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
