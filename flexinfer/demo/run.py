"""`flexinfer demo`: the whole system on a simulated fleet, explained in words a person reads."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from flexinfer.cli.output import table
from flexinfer.demo.cluster import Attempt, DemoCluster
from flexinfer.fleet import Fleet
from flexinfer.model import parse_model

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "daemonset" / "examples"
SWAP_GROUP_MODEL = "qwen3-32b-quality"


def load_example_docs(directory: Path = EXAMPLES) -> list[dict[str, Any]]:
    if not directory.is_dir():
        raise FileNotFoundError(f"example Models not found in {directory}: run from a source checkout "
                                "(bash hack/demo.sh) or pass --examples DIR")
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") == "Model")
    return docs


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v}"


def placement_table(attempts: list[Attempt], title: str | None) -> Any:
    rows = []
    for a in attempts:
        rows.append([a.model, a.backend, _mib(a.need_mib), a.node or "Pending", a.gpus or "-",
                     _mib(a.free_before_mib), _mib(a.free_after_mib),
                     ("-" if a.node is None else "only fit") if a.score is None else a.score])
    return table(["MODEL", "BACKEND", "NEEDS MiB/GPU", "NODE", "GPU", "FREE MiB BEFORE", "FREE MiB AFTER",
                  "SCORE"], rows, title=title)


def print_reasons(console: Console, attempts: list[Attempt]) -> None:
    for a in attempts:
        head = f"{a.model} -> {a.node}" if a.node else f"{a.model} -> not scheduled ({a.message})"
        console.print(f"[bold]{head}[/bold]")
        for node, why in sorted(a.rejections.items()):
            console.print(f"    {node:<20} {why}")


def status_table(status: dict[str, dict[str, Any]]) -> Any:
    rows = [[name, s.get("phase", "-"), s.get("message", "")] for name, s in sorted(status.items())]
    return table(["MODEL", "PHASE", "MESSAGE"], rows)


def run_demo(fleet: Fleet, console: Console, err: Console, examples: Path = EXAMPLES) -> int:
    t0 = time.monotonic()
    docs = load_example_docs(examples)
    with err.status("starting") as status:
        def progress(msg: str) -> None:
            status.update(msg)
            err.print(f"[dim]- {msg}[/dim]")

        cluster = DemoCluster(fleet, progress=progress)
        with cluster:
            progress(f"applying {len(docs)} example Models from daemonset/examples/")
            cluster.apply_models(docs)
            progress("first requests arrive: activating every model outside a shared group")
            for d in docs:
                gpu = (d.get("spec") or {}).get("gpu") or {}
                if not gpu.get("shared"):
                    cluster.activate(d["metadata"]["name"])
            progress("controller reconciles; scheduling loop calls the extender like kube-scheduler")
            first = cluster.settle()
            phase1_status = cluster.model_status()
            cluster.clock.advance(11 * 60)
            progress(f"11 minutes later (simulated): a request for {SWAP_GROUP_MODEL} arrives")
            cluster.activate(SWAP_GROUP_MODEL)
            second = cluster.settle()
            swap_status = cluster.model_status()
            idle_s = next(parse_model(d).idle_timeout_seconds for d in docs
                          if d["metadata"]["name"] == SWAP_GROUP_MODEL)
            cluster.clock.advance(idle_s + 60)
            progress(f"{int(idle_s // 60) + 1} minutes without traffic: {SWAP_GROUP_MODEL} is idle past its timeout")
            third = cluster.settle()
            final_status = cluster.model_status()
            progress("done")
    console.print()
    console.print(placement_table(first, f"Placements on fleet '{fleet.description or 'fleet'}' "
                                         f"({len(fleet.nodes)} nodes)"))
    console.print()
    console.print("[bold]Why each model went where it did (every other node and why it was rejected):[/bold]")
    print_reasons(console, first)
    console.print()
    console.print(status_table(phase1_status))
    console.print()
    group_note = ("Shared GPU group 7900xtx-quality: qwen3-14b-mlc (priority 100, always on), "
                  f"{SWAP_GROUP_MODEL} (80), deepseek-r1 (70)")
    console.print(f"[bold]{group_note}[/bold]")
    for title, attempts, status in (
        (f"11 minutes later a request for {SWAP_GROUP_MODEL} arrives: it preempts the idle 14B", second, swap_status),
        (f"{SWAP_GROUP_MODEL} idles out: qwen3-14b-mlc reclaims the GPU", third, final_status),
    ):
        console.print()
        console.print(f"[bold]{title}[/bold]")
        fresh = [a for a in attempts if a.node]
        if fresh:
            console.print(placement_table(fresh, None))
        console.print(status_table({k: v for k, v in status.items()
                                    if k in ("qwen3-14b-mlc", SWAP_GROUP_MODEL, "deepseek-r1")}))
    console.print()
    console.print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0
