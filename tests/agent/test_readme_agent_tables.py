"""The README's agent tables come from the code: the label-interop table from flexinfer.interop.EQUIVALENTS, the
agent metric table from agent.metrics.METRIC_NAMES, and every name the agent really exports is in it."""

from __future__ import annotations

import re
from pathlib import Path

from flexinfer.agent.agent import Agent
from flexinfer.agent.metrics import METRIC_NAMES
from flexinfer.agent.readers.fake import fleet_reader

from flexinfer import keys
from flexinfer.interop import EQUIVALENTS

from .agent_helpers import amd_gpu, node_from, nvidia_gpu

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _table_after(heading_text: str) -> list[list[str]]:
    start = README.index(heading_text)
    rows = []
    for line in README[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
        elif rows:
            break
    return rows[1:]  # the separator row (the heading line itself was skipped)


def test_interop_table_is_the_code() -> None:
    rows = _table_after("| ours | GPU Feature Discovery | AMD node labeller |")
    want = [[f"`{e.ours}`", f"`{e.gfd}`" if e.gfd else "—", f"`{e.amd}`" if e.amd else "—", e.note]
            for e in EQUIVALENTS]
    assert rows == want
    ours = {e.ours for e in EQUIVALENTS}
    assert ours <= set(keys.NODE_LABEL_KEYS)
    assert set(keys.NODE_LABEL_KEYS) - ours == set(), "every label of ours has an interop row"


def test_metric_table_is_the_code() -> None:
    rows = _table_after("| metric | type | extra labels |")
    assert [r[0].strip("`") for r in rows] == list(METRIC_NAMES)


def test_every_exported_family_is_listed() -> None:
    node = node_from([nvidia_gpu(faults=[{"type": "xid", "xid": 13, "atSample": 1}]), amd_gpu()])
    agent = Agent("n1", fleet_reader(node))
    agent.step(now=1.0)
    text = agent.metrics.exposition().decode()
    families = {f for f in re.findall(r"^# TYPE (\S+) ", text, re.M) if not f.endswith("_created")}
    exported = {f + "_total" if f + "_total" in METRIC_NAMES else f for f in families}
    assert exported <= set(METRIC_NAMES), exported - set(METRIC_NAMES)
