"""`flexinfer demo`: the whole system on a simulated fleet, explained in words a person reads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from flexinfer.cli.output import table
from flexinfer.demo import proxystory
from flexinfer.fleet import Fleet
from flexinfer.model import parse_model
from flexinfer.sim.cluster import Attempt, DemoCluster

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "daemonset" / "examples"


@dataclass(frozen=True)
class GroupStory:
    """The shared-group part of the demo, chosen from the examples: the always-on holder of a group and the
    member a request will activate (the highest-priority member that scales to zero)."""

    group: str
    members: tuple[tuple[str, int, bool], ...]  # (name, priority, always on), highest priority first
    holder: str
    challenger: str
    challenger_idle_seconds: float

    def summary(self) -> str:
        parts = [f"{n} (priority {p}{', always on' if on else ''})" for n, p, on in self.members]
        return f"Shared GPU group {self.group}: " + ", ".join(parts)


def group_story(docs: list[dict[str, Any]]) -> GroupStory | None:
    """The first shared group (by name) with an always-on member and a scale-to-zero member, or None."""
    groups: dict[str, list[Any]] = {}
    for d in docs:
        try:
            m = parse_model(d)
        except ValueError:
            continue
        if m.spec.gpu is not None and m.spec.gpu.shared:
            groups.setdefault(m.spec.gpu.shared, []).append(m)
    for name in sorted(groups):
        ms = sorted(groups[name], key=lambda m: (-m.spec.gpu.priority, m.name))
        always = [m for m in ms if m.spec.serverless.min_replicas >= 1]
        on_demand = [m for m in ms if m.spec.serverless.min_replicas == 0]
        if always and on_demand:
            members = tuple((m.name, m.spec.gpu.priority, m.spec.serverless.min_replicas >= 1) for m in ms)
            return GroupStory(name, members, always[0].name, on_demand[0].name, on_demand[0].idle_timeout_seconds)
    return None


def swap_heading(story: GroupStory, status: dict[str, dict[str, Any]], minutes: int | None) -> str:
    """What the activation of the challenger actually did, read back from the Models' status. `minutes`: the
    simulated time since the first act (None: no clock was advanced, as on the real control plane)."""
    c, h = story.challenger, story.holder
    c_phase = status.get(c, {}).get("phase")
    h_phase = status.get(h, {}).get("phase")
    head = (f"A request for {c} arrives: " if minutes is None
            else f"{minutes} minutes later a request for {c} arrives: ")
    if c_phase in ("Ready", "Loading") and h_phase == "Preempted":
        return head + f"it preempts {h} ({c} is {c_phase})"
    if c_phase in ("Ready", "Loading"):
        return head + f"it is {c_phase} without preempting anyone ({h} is {h_phase or 'absent'})"
    why = status.get(c, {}).get("message") or "no reason given"
    return head + f"it is {c_phase or 'not admitted'} ({why}); {h} stays {h_phase or 'absent'}"


def reclaim_heading(story: GroupStory, status: dict[str, dict[str, Any]],
                    before: dict[str, dict[str, Any]] | None = None) -> str:
    """What the challenger's idle timeout did. `before`: the statuses after the swap act; the holder only
    "reclaims" a GPU it gave up (it was Preempted then), else it kept it all along."""
    c, h = story.challenger, story.holder
    c_phase = status.get(c, {}).get("phase")
    h_phase = status.get(h, {}).get("phase")
    gave_up = before is None or before.get(h, {}).get("phase") == "Preempted"
    if h_phase in ("Ready", "Loading") and c_phase not in ("Ready", "Loading"):
        if gave_up:
            return f"{c} idles out ({c_phase}): {h} reclaims the GPU ({h_phase})"
        return f"after {c}'s idle timeout: {c} is {c_phase}; {h} kept the GPU throughout ({h_phase})"
    return f"after {c}'s idle timeout: {c} is {c_phase}, {h} is {h_phase}"


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


def print_story(console: Console, story: GroupStory | None,
                acts: list[tuple[str, list[Attempt], dict[str, dict[str, Any]]]]) -> None:
    """The shared-group story: its summary, then per act its heading, the new placements and the members' phases
    (or a line saying the examples have no such group)."""
    if story is None:
        console.print("[bold]No shared GPU group with an always-on and a scale-to-zero member in the examples: "
                      "no preemption story to play.[/bold]")
        return
    console.print(f"[bold]{story.summary()}[/bold]")
    names = {n for n, _, _ in story.members}
    for title, attempts, st in acts:
        console.print()
        console.print(f"[bold]{title}[/bold]")
        fresh = [a for a in attempts if a.node]
        if fresh:
            console.print(placement_table(fresh, None))
        console.print(status_table({k: v for k, v in st.items() if k in names}))


def run_demo(fleet: Fleet, console: Console, err: Console, examples: Path = EXAMPLES) -> int:
    t0 = time.monotonic()
    docs = load_example_docs(examples)
    story = group_story(docs)
    later_minutes = 11
    with err.status("starting") as status:
        def progress(msg: str) -> None:
            status.update(msg)
            err.print(f"[dim]- {msg}[/dim]")

        cluster = DemoCluster(fleet, progress=progress)
        with cluster:
            progress(f"applying {len(docs)} example Models from {examples}")
            cluster.apply_models(docs)
            progress("first requests arrive: activating every model outside a shared group")
            for d in docs:
                gpu = (d.get("spec") or {}).get("gpu") or {}
                if not gpu.get("shared"):
                    cluster.activate(d["metadata"]["name"])
            progress("controller reconciles; scheduling loop calls the extender like kube-scheduler")
            first = cluster.settle()
            phase1_status = cluster.model_status()
            acts: list[tuple[str, list[Attempt], dict[str, dict[str, Any]]]] = []
            if story is not None:
                cluster.clock.advance(later_minutes * 60)
                progress(f"{later_minutes} minutes later (simulated): a request for {story.challenger} arrives")
                cluster.activate(story.challenger)
                second = cluster.settle()
                swap_status = cluster.model_status()
                acts.append((swap_heading(story, swap_status, later_minutes), second, swap_status))
                cluster.clock.advance(story.challenger_idle_seconds + 60)
                progress(f"{int(story.challenger_idle_seconds // 60) + 1} minutes without traffic for "
                         f"{story.challenger}")
                third = cluster.settle()
                final_status = cluster.model_status()
                acts.append((reclaim_heading(story, final_status, swap_status), third, final_status))
            served = proxystory.play(cluster, progress)
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
    print_story(console, story, acts)
    console.print()
    console.print(f"[bold]{served.heading()}[/bold]")
    fresh = [a for a in served.attempts if a.node]
    if fresh:
        console.print(placement_table(fresh, None))
    console.print()
    console.print(f"demo finished in {time.monotonic() - t0:.1f} s")
    return 0
