"""flexinfer.fleet: the embedded homelab fleet, junk fleet documents, the generated fleet."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from flexinfer.arch import arch_info
from flexinfer.errors import ParseError
from flexinfer.fleet import (
    Fleet,
    FleetGpu,
    default_fleet_path,
    dump_fleet,
    generate_fleet,
    gpu_uuid,
    load_fleet,
    parse_fleet,
)

REPO = Path(__file__).resolve().parents[2]

# node -> [(vendor, arch, total MiB range, unified)]
HOMELAB = {
    "cblevins-7900xtx": [("amd", "gfx1100", (24 * 1024 - 100, 24 * 1024), False)],
    "cblevins-5930k": [("amd", "gfx1100", (24 * 1024 - 100, 24 * 1024), False)],
    "cblevins-radeonvii": [("amd", "gfx906", (16 * 1024 - 100, 16 * 1024), False)],
    "cblevins-gtx980ti": [("nvidia", "sm_52", (6 * 1024 - 100, 6 * 1024), False)],
    "rtxpro4000-worker": [("nvidia", "sm_120", (24 * 1024 - 200, 24 * 1024), False)],
    "khelben": [("amd", "gfx1151", (16 * 1024, 128 * 1024), True)],
    "cblevins-arca770": [("intel", "dg2", (16 * 1024 - 200, 16 * 1024), False)],
    "cpu-worker": [],
}


@pytest.fixture(scope="module")
def homelab() -> Fleet:
    return load_fleet(default_fleet_path())


def test_homelab_nodes(homelab: Fleet) -> None:
    assert [n.name for n in homelab.nodes] == list(HOMELAB)
    for name, want in HOMELAB.items():
        node = homelab.node(name)
        assert len(node.gpus) == len(want), name
        for g, (vendor, arch, (lo, hi), unified) in zip(node.gpus, want, strict=True):
            assert (g.vendor, g.arch, g.unified_memory) == (vendor, arch, unified), name
            assert lo <= g.total_mib <= hi, (name, g.total_mib)
            assert 0 <= g.used_mib < g.total_mib and g.healthy
            assert arch_info(g.vendor, g.arch).known


def test_homelab_details(homelab: Fleet) -> None:
    assert homelab.api_version == "flexinfer.ai/v1" and homelab.kind == "Fleet"
    assert homelab.node("cblevins-gtx980ti").gpus[0].product == "NVIDIA GeForce GTX 980 Ti"
    assert homelab.node("cblevins-7900xtx").gpus[0].faults[0].type == "noise"
    assert homelab.node("rtxpro4000-worker").taints[0]["effect"] == "NoSchedule"
    cpu = homelab.node("cpu-worker")
    assert cpu.gpus == [] and cpu.cpu == "32" and cpu.memory == "128Gi"
    with pytest.raises(KeyError, match="not in the fleet"):
        homelab.node("nope")


def test_hack_symlink_is_the_same_fleet(homelab: Fleet) -> None:
    path = REPO / "hack" / "fleets" / "homelab.yaml"
    assert path.exists()
    assert load_fleet(path) == homelab
    assert default_fleet_path().is_file()


def test_dump_and_reparse(homelab: Fleet) -> None:
    text = dump_fleet(homelab)
    assert parse_fleet(yaml.safe_load(text)) == homelab


UUID_NV = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
UUID_AMD = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def test_gpu_uuid() -> None:
    nv = FleetGpu(vendor="nvidia", arch="sm_52", total_mi_b=6144)
    amd = FleetGpu(vendor="amd", arch="gfx1100", total_mi_b=24560)
    assert UUID_NV.match(gpu_uuid("n", 0, nv)) and UUID_AMD.match(gpu_uuid("n", 0, amd))
    assert gpu_uuid("n", 0, nv) == gpu_uuid("n", 0, nv)
    assert gpu_uuid("n", 0, nv) != gpu_uuid("n", 1, nv) != gpu_uuid("m", 1, nv)
    assert gpu_uuid("n", 0, FleetGpu(vendor="nvidia", arch="sm_52", total_mi_b=1, uuid="GPU-fixed")) == "GPU-fixed"


def gpu_doc(**kw: Any) -> dict[str, Any]:
    return {"vendor": "amd", "arch": "gfx1100", "totalMiB": 24560, **kw}


def doc(*gpus: dict[str, Any], **node: Any) -> dict[str, Any]:
    return {"nodes": [{"name": "n0", "gpus": list(gpus), **node}]}


def test_minimal_fleet() -> None:
    f = parse_fleet(doc(gpu_doc()))
    g = f.nodes[0].gpus[0]
    assert (g.used_mib, g.healthy, g.pcie.gen, g.unified_memory) == (0, True, 4, False)


JUNK: list[tuple[str, object, str]] = [
    # (id, document, text that must be in the message: the path)
    ("not a mapping", [1, 2], "fleet"),
    ("null", None, "fleet"),
    ("no nodes", {}, "nodes"),
    ("nodes not list", {"nodes": {"a": 1}}, ".nodes"),
    ("node not object", {"nodes": ["n0"]}, ".nodes[0]"),
    ("name missing", {"nodes": [{"gpus": []}]}, "name"),
    ("name empty", {"nodes": [{"name": ""}]}, "nodes[0].name"),
    ("duplicate names", {"nodes": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}, "nodes[2].name"),
    ("unknown node field", doc(gpuz=[]), ".nodes[0]"),
    ("unknown gpu field", doc(gpu_doc(vram=1)), ".nodes[0].gpus[0]"),
    ("total as string", doc(gpu_doc(totalMiB="24Gi")), ".nodes[0].gpus[0].totalMiB"),
    ("total float", doc(gpu_doc(totalMiB=1.5)), ".nodes[0].gpus[0].totalMiB"),
    ("total missing", doc({"vendor": "amd", "arch": "gfx1100"}), ".nodes[0].gpus[0]"),
    ("total zero", doc(gpu_doc(totalMiB=0)), "nodes[0].gpus[0]"),
    ("used > total", doc(gpu_doc(), gpu_doc(usedMiB=30000)), "nodes[0].gpus[1]"),
    ("used negative", doc(gpu_doc(usedMiB=-1)), "nodes[0].gpus[0]"),
    ("bad arch", doc(gpu_doc(arch="gfx")), "nodes[0].gpus[0]"),
    ("arch vendor mismatch", doc(gpu_doc(vendor="nvidia", arch="gfx1100")), "nodes[0].gpus[0]"),
    ("bad vendor", doc(gpu_doc(vendor="ati")), "nodes[0].gpus[0]"),
    ("healthy string", doc(gpu_doc(healthy="yes")), ".nodes[0].gpus[0].healthy"),
    ("fault type", doc(gpu_doc(faults=[{"type": "meteor"}])), ".nodes[0].gpus[0].faults[0].type"),
    ("fault field", doc(gpu_doc(faults=[{"type": "xid", "code": 79}])), ".nodes[0].gpus[0].faults[0]"),
    ("pcie junk", doc(gpu_doc(pcie={"gen": "four"})), ".nodes[0].gpus[0].pcie.gen"),
    ("not-supported typo", doc(gpu_doc(faults=[{"type": "not-supported", "metric": "powr"}])),
     "nodes[0].gpus[0].faults[0].metric"),
    ("not-supported without metric", doc(gpu_doc(faults=[{"type": "not-supported"}])),
     "nodes[0].gpus[0].faults[0].metric"),
    ("labels not strings", doc(labels={"a": 1}), ".nodes[0].labels"),
    ("node faults junk", doc(faults="lost"), ".nodes[0].faults"),
]


@pytest.mark.parametrize(("data", "path"), [j[1:] for j in JUNK], ids=[j[0] for j in JUNK])
def test_junk_fleet_names_the_path(data: object, path: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_fleet(data, "fleet")
    msg = str(e.value)
    assert msg.startswith("fleet") and path in msg, msg
    assert e.value.expected


def test_deep_error_path_survives_long_values() -> None:
    long_field = "x" * 200
    data = {"nodes": [{"name": f"n{i}"} for i in range(12)]}
    data["nodes"][11]["gpus"] = [gpu_doc(), gpu_doc(faults=[{"type": "noise", long_field: 1}])]
    with pytest.raises(ParseError) as e:
        parse_fleet(data)
    assert "nodes[11].gpus[1].faults[0]" in str(e.value)


def test_load_fleet_errors(tmp_path: Path) -> None:
    with pytest.raises(ParseError, match="readable file"):
        load_fleet(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [unclosed\n")
    with pytest.raises(ParseError, match=r"fleet file .*bad\.yaml.*valid YAML"):
        load_fleet(bad)
    junk = tmp_path / "junk.yaml"
    junk.write_text(yaml.safe_dump({"nodes": [{"name": "a", "gpus": [gpu_doc(usedMiB=99999)]}]}))
    with pytest.raises(ParseError, match=r"junk\.yaml: nodes\[0\]\.gpus\[0\]"):
        load_fleet(junk)
    huge = tmp_path / "huge.yaml"
    huge.write_text("nodes: [{name: a, gpus: [{vendor: amd, arch: gfx1100, totalMiB: " + "9" * 5000 + "}]}]\n")
    with pytest.raises(ParseError, match="valid YAML"):
        load_fleet(huge)
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(ParseError, match="readable file"):
        load_fleet(d)


@pytest.mark.parametrize("n", [0, 1, 10, 60])
def test_generate_fleet(n: int) -> None:
    f = generate_fleet(n, seed=7)
    assert len(f.nodes) == n and len({x.name for x in f.nodes}) == n
    assert f == generate_fleet(n, seed=7)  # deterministic
    assert parse_fleet(yaml.safe_load(dump_fleet(f))) == f  # valid by its own rules
    for node in f.nodes:
        for g in node.gpus:
            assert 0 <= g.used_mib <= g.total_mib


def test_generate_fleet_seed_and_mix() -> None:
    a, b = generate_fleet(100, seed=1), generate_fleet(100, seed=2)
    assert a != b
    vendors = {g.vendor for node in a.nodes for g in node.gpus}
    assert vendors == {"nvidia", "amd"}
    assert any(not node.gpus for node in a.nodes)  # CPU-only nodes too
    assert generate_fleet(3000).nodes[2999].name == "node-02999"


def test_load_fleet_bounds_size_and_encoding(tmp_path: Path) -> None:
    """A fleet file is read up to MAX_FLEET_FILE_BYTES (never whole when it is larger) and must be UTF-8: a
    clear ParseError otherwise. A generated 5000-node fleet stays well within the bound."""
    from flexinfer.fleet import MAX_FLEET_FILE_BYTES

    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"# " + b"x" * MAX_FLEET_FILE_BYTES + b"\n")
    with pytest.raises(ParseError, match=f"at most {MAX_FLEET_FILE_BYTES} bytes"):
        load_fleet(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("nodes: [{name: n\xe9}]\n".encode("latin-1"))
    with pytest.raises(ParseError, match="UTF-8"):
        load_fleet(latin)
    generated = tmp_path / "gen.yaml"
    generated.write_text(dump_fleet(generate_fleet(5000)))
    assert generated.stat().st_size < MAX_FLEET_FILE_BYTES // 2
