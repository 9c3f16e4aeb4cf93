"""Issue 7 item 3 for the agent's parsers: KFD sysfs properties trees and fleet files (YAML text).

KFD: a random sysfs tree (topology node `properties`, `mem_banks/*/properties`, amdgpu `mem_info_vram_*`)
goes through the whole agent step (KfdReader -> node state -> metrics -> annotation encoding). Nothing
raises; every KFD GPU node either becomes a published GPU or is named in the agent status; every
unhealthy GPU carries a reason; free memory stays within 0..total; the published annotation decodes back.

Fleet files: YAML text (mutations of the packaged homelab fleet, YAML oddities) through `load_fleet`, as
`flexinfer-agent --fake-gpus` reads it: a Fleet or a ParseError naming the file, nothing else; an accepted
fleet samples cleanly through the fake vendor libraries.

Examples: a third of env FLEXINFER_FUZZ_EXAMPLES (default 300; each example
writes files); `python -m bench` raises it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from flexinfer.agent.agent import Agent
from flexinfer.agent.readers.fake import fleet_reader
from flexinfer.agent.readers.kfd import KfdReader, read_kfd_nodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexinfer.errors import ParseError
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.state import decode_state, encode_state

EXAMPLES = int(os.environ.get("FLEXINFER_FUZZ_EXAMPLES", "300"))
SLOW = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KFD_FUZZ = settings(max_examples=max(1, EXAMPLES // 3), **SLOW)  # a sysfs tree on disk per example
FLEET_FUZZ = settings(max_examples=max(1, EXAMPLES // 3), **SLOW)  # a 3 KB YAML document per example
# Hundreds of small trees: tmpfs when there is one (a disk-backed /tmp costs ~8 ms per tree here).
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# --- KFD sysfs ------------------------------------------------------------------------------------------

GFX_TARGETS = [110000, 110001, 110501, 90006, 90010, 90402, 100300, 120001, 80003, 0, 12, -1, 99999999, 2**63]
PROP_KEYS = ["gfx_target_version", "vendor_id", "device_id", "drm_render_minor", "location_id", "domain",
             "unique_id", "simd_count", "cpu_cores_count"]
numbers = (st.sampled_from(GFX_TARGETS) | st.integers(-(2**70), 2**70)
           | st.sampled_from(["0x10", "0b11", "1_000", "-0", "٣", "1e3", "nan", "", "9" * 5000]).map(str))
prop_line = st.one_of(
    st.tuples(st.sampled_from(PROP_KEYS), numbers).map(lambda kv: f"{kv[0]} {kv[1]}"),
    st.text(max_size=30),
    st.sampled_from(["gfx_target_version", "gfx_target_version 1 2", "  ", "\x00\xff", "simd_count\t96"]),
)
props_text = st.lists(prop_line, max_size=8).map("\n".join)
bank_text = st.lists(st.one_of(
    st.tuples(st.sampled_from(["heap_type", "size_in_bytes"]), st.sampled_from([0, 1, 2, 3, -1]) | numbers)
    .map(lambda kv: f"{kv[0]} {kv[1]}"),
    st.text(max_size=20)), max_size=4).map("\n".join)
kfd_node = st.fixed_dictionaries(
    {"name": st.sampled_from(["0", "1", "2", "3", "10", "x", "-1", "01"]),
     "props": st.one_of(props_text, st.binary(max_size=60), st.none())},
    optional={"banks": st.lists(st.one_of(bank_text, st.binary(max_size=30)), max_size=3),
              "vram": st.tuples(st.integers(0, 300), st.text(max_size=12) | numbers.map(str),
                                st.text(max_size=12) | numbers.map(str))},
)


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, errors="surrogateescape")


def make_tree(root: Path, nodes: list[dict[str, object]]) -> None:
    topo = root / "class/kfd/kfd/topology/nodes"
    topo.mkdir(parents=True)
    for n in nodes:
        d = topo / str(n["name"])
        d.mkdir(exist_ok=True)
        if n["props"] is not None:
            write(d / "properties", n["props"])  # type: ignore[arg-type]
        for i, b in enumerate(n.get("banks", [])):  # type: ignore[arg-type]
            write(d / "mem_banks" / str(i) / "properties", b)
        if "vram" in n:
            minor, total, used = n["vram"]  # type: ignore[misc]
            dev = root / "class/drm" / f"renderD{minor}" / "device"
            write(dev / "mem_info_vram_total", total)
            write(dev / "mem_info_vram_used", used)


@KFD_FUZZ
@given(st.lists(kfd_node, max_size=4))
def test_fuzz_kfd_sysfs_tree_through_the_agent_step(nodes: list[dict[str, object]]) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        root = Path(tmp)
        make_tree(root, nodes)
        kfd = read_kfd_nodes(root)
        agent = Agent("fuzz-node", KfdReader(root, reason="cannot load amdsmi: KeyError"))
        step = agent.step(now=1_764_000_000.0)
        exposition = agent.metrics.exposition()
    state = step.state
    assert state.agent_status.strip()
    assert len(step.samples) == len(kfd)
    published = {g.index for g in state.gpus}
    for s in step.samples:  # a GPU left out is named in the status, with the reason
        assert s.index in published or f"gpu {s.index} (amd) architecture unknown" in state.agent_status
        assert s.healthy or s.reason.strip()
    for g in state.gpus:
        assert 0 <= g.free_mib <= g.total_mib
        assert g.healthy or g.reason.strip()
    back = decode_state(state.node, encode_state(state), "amd")
    assert [(g.index, g.arch, g.total_mib, g.free_mib, g.healthy, g.reason) for g in back.gpus] == [
        (g.index, g.arch, g.total_mib, g.free_mib, g.healthy, g.reason) for g in state.gpus]
    assert b"flexinfer_agent_info" in exposition


# --- fleet files ----------------------------------------------------------------------------------------

HOMELAB = default_fleet_path().read_text()
YAML_ODDITIES = ["!!python/object:os.system {}", "2026-01-01", "~", ".inf", "-.nan", "0x1F", "0o17", "1_000",
                 "&a [*a]", "{? a}", "!!binary aGk=", "'", "\"\\x\"", "\t", "- - -", "9" * 5000, "[", "}", ":",
                 "yes", "!!set {a, b}", "<<: {}", "%YAML 1.1", "---", "...", "*undefined"]


@st.composite
def fleet_text(draw: st.DrawFn) -> str:
    text = HOMELAB
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 40))
        insert = draw(st.sampled_from(YAML_ODDITIES) | st.text(max_size=12))
        text = text[:pos] + insert + text[pos + cut:]
    return text


@FLEET_FUZZ
@given(st.one_of(fleet_text(), st.text(max_size=200), st.sampled_from(YAML_ODDITIES)))
def test_fuzz_fleet_file_is_a_fleet_or_a_parse_error_naming_the_file(text: str) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        path = Path(tmp) / "fleet.yaml"
        path.write_text(text, errors="surrogateescape")
        try:
            fleet = load_fleet(path)
        except ParseError as e:
            assert str(path) in str(e) and e.expected.strip()
            return
    for node in fleet.nodes:
        agent = Agent(node.name, fleet_reader(node))
        state = agent.step(now=1_764_000_000.0).state
        assert state.agent_status.strip()
        assert all(g.healthy or g.reason.strip() for g in state.gpus)
        assert all(0 <= g.free_mib <= g.total_mib for g in state.gpus)
