"""The load process: N concurrent keep-alive connections (aiohttp) POSTing one body for a bounded time
and count. Runs as a separate OS process (`python -m bench.load ...`), pinned to a core other than
the server's, and prints one JSON line: requests, errors, seconds, rps, client CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

import aiohttp


async def _run(url: str, body: bytes, concurrency: int, seconds: float, max_requests: int) -> dict[str, float]:
    done = errors = 0
    stop_at = time.perf_counter() + seconds
    headers = {"Content-Type": "application/json"}
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def worker() -> None:
            nonlocal done, errors
            while done + errors < max_requests and time.perf_counter() < stop_at:
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 200:
                            done += 1
                        else:
                            errors += 1
                except (TimeoutError, aiohttp.ClientError):
                    errors += 1

        async def warm() -> None:
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(concurrency)))  # open the connections (not counted)
        t0 = time.perf_counter()
        stop_at = t0 + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"requests": done, "errors": errors, "seconds": round(elapsed, 3),
            "rps": round(done / elapsed, 1) if elapsed else 0.0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--body", required=True, help="file with the request body")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-requests", type=int, default=100_000)
    p.add_argument("--cpu", type=int, default=-1, help="pin this process to one CPU")
    a = p.parse_args(argv)
    if a.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    with open(a.body, "rb") as f:
        body = f.read()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    out = asyncio.run(_run(a.url, body, a.concurrency, a.seconds, a.max_requests))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out["client_cpu_seconds"] = round(ru.ru_utime + ru.ru_stime, 3)
    out["concurrency"] = a.concurrency
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
