"""Helpers shared by the agent tests (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

from typing import Any

from flexinfer.fleet import FleetNode, parse_fleet


def node_from(gpus: list[dict[str, Any]], faults: list[dict[str, Any]] | None = None, name: str = "n1") -> FleetNode:
    doc = {"nodes": [{"name": name, "gpus": gpus, **({"faults": faults} if faults else {})}]}
    return parse_fleet(doc).node(name)


def nvidia_gpu(**kw: Any) -> dict[str, Any]:
    g = {"vendor": "nvidia", "arch": "sm_86", "product": "NVIDIA A10", "totalMiB": 23028, "usedMiB": 1000}
    g.update(kw)
    return g


def amd_gpu(**kw: Any) -> dict[str, Any]:
    g = {"vendor": "amd", "arch": "gfx1100", "product": "AMD Radeon RX 7900 XTX", "totalMiB": 24560, "usedMiB": 500}
    g.update(kw)
    return g


class ManualClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
