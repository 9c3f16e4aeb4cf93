"""KFD sysfs parsing (properties files, junk, mem banks, amdgpu VRAM) and the KFD-only reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from flexinfer.agent.readers.kfd import KfdReader, drm_vram_bytes, parse_properties, read_kfd_nodes


@pytest.mark.parametrize("text,expected", [
    ("gfx_target_version 110000\n", {"gfx_target_version": 110000}),
    ("a 1\nb 0x10\n", {"a": 1, "b": 16}),
    ("junk\n\n  \nkey notanumber\nthree words here\nok 5", {"ok": 5}),
    ("", {}),
    ("\x00\xff garbage \x01\n", {}),
    ("simd_count 96\r\nvendor_id 4098\r\n", {"simd_count": 96, "vendor_id": 4098}),
])
def test_parse_properties(text: str, expected: dict[str, int]) -> None:
    assert parse_properties(text) == expected


def make_node(root: Path, n: int, props: str, banks: list[str] = ()) -> None:  # type: ignore[assignment]
    d = root / "class/kfd/kfd/topology/nodes" / str(n)
    d.mkdir(parents=True)
    (d / "properties").write_text(props)
    for i, b in enumerate(banks):
        (d / "mem_banks" / str(i)).mkdir(parents=True)
        (d / "mem_banks" / str(i) / "properties").write_text(b)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    make_node(tmp_path, 0, "cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\n")
    make_node(tmp_path, 1, "cpu_cores_count 0\nsimd_count 192\ngfx_target_version 110000\nvendor_id 4098\n"
                           "device_id 29772\ndrm_render_minor 128\nlocation_id 768\ndomain 0\nunique_id 12345\n",
              ["heap_type 1\nsize_in_bytes 25753026560\n", "heap_type 0\nsize_in_bytes 999\n"])
    make_node(tmp_path, 2, "gfx_target_version 90006\ndrm_render_minor 129\n")
    make_node(tmp_path, 3, "gfx_target_version 12\n")  # junk value
    (tmp_path / "class/kfd/kfd/topology/nodes/notanode").mkdir()
    (tmp_path / "class/kfd/kfd/topology/nodes/4").mkdir()  # no properties file
    dev = tmp_path / "class/drm/renderD128/device"
    dev.mkdir(parents=True)
    (dev / "mem_info_vram_total").write_text("25753026560\n")
    (dev / "mem_info_vram_used").write_text("1073741824\n")
    return tmp_path


def test_read_kfd_nodes(sysfs: Path) -> None:
    nodes = read_kfd_nodes(sysfs)
    assert [(n.node_id, n.gfx) for n in nodes] == [(1, "gfx1100"), (2, "gfx906"), (3, "")]
    n1 = nodes[0]
    assert n1.vram_bytes == 25753026560 and n1.vendor_id == 4098 and n1.drm_render_minor == 128
    assert n1.pci_bus_id == "0000:03:00.0"


def test_missing_tree_is_empty(tmp_path: Path) -> None:
    assert read_kfd_nodes(tmp_path / "nope") == []


def test_drm_vram(sysfs: Path) -> None:
    assert drm_vram_bytes(sysfs, 128) == (25753026560, 1073741824)
    assert drm_vram_bytes(sysfs, 129) == (None, None)


def test_kfd_reader(sysfs: Path) -> None:
    r = KfdReader(sysfs, reason="cannot load amdsmi: KeyError")
    out = r.sample()
    assert [s.arch for s in out] == ["gfx1100", "gfx906", ""]
    assert out[0].memory_total_bytes == 25753026560 and out[0].memory_used_bytes == 2**30 and out[0].healthy
    assert not out[2].healthy and "gfx_target_version 12" in out[2].reason
    assert "KFD sysfs only" in r.status


def test_kfd_reader_reports_an_apu_as_unified_memory(tmp_path: Path) -> None:
    make_node(tmp_path, 1, "cpu_cores_count 0\nsimd_count 80\ngfx_target_version 110501\n",
              ["heap_type 0\nsize_in_bytes 68719476736\n"])
    (s,) = KfdReader(tmp_path).sample()
    assert s.arch == "gfx1151" and s.unified_memory and s.healthy
