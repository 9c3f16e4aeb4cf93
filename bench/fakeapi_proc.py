"""flexinfer.sim.fakeapi.FakeApiServer in its own process (so its CPU is not the measured client's):
prints its URL on stdout, serves until stdin closes.

    python -m bench.fakeapi_proc [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import sys

from flexinfer import logs
from flexinfer.sim.fakeapi import FakeApiServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cpu", type=int, default=-1)
    a = p.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    logs.configure("warning", "json")
    with FakeApiServer(history_limit=50000) as fake:
        sys.stdout.write(fake.url + "\n")
        sys.stdout.flush()
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
