"""The machine line for a results file: cores, CPU model, Python, package versions."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("flexinfer", "msgspec", "starlette", "uvicorn", "uvloop", "httptools", "grpcio", "protobuf",
            "prometheus-client", "structlog", "kubernetes", "aiohttp", "httpx", "hypothesis")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


def machine() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "nproc": affinity,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "packages": versions(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['nproc']} cores ({m['cpu_model']}), {m['memory_mib']} MiB RAM, Linux {m['kernel']}, "
            f"Python {m['python']}, msgspec {m['packages']['msgspec']}, starlette {m['packages']['starlette']}, "
            f"uvicorn {m['packages']['uvicorn']}, grpcio {m['packages']['grpcio']}")
