"""The proxy benchmark harness still works (a tiny run: three real processes, paired requests, streams)."""

from __future__ import annotations

import pytest

from bench import proxy_bench

pytestmark = pytest.mark.integration


def test_tiny_proxy_bench_run_measures_everything() -> None:
    res = proxy_bench.run(lambda _msg: None, rate=20, streams=2, token_ms=20, seconds=1.0)
    quiet, busy = res["phases"]
    assert quiet["streams"] == 0 and busy["streams"] == 2
    for p in (quiet, busy):
        assert p["errors"] == 0 and p["proxied"]["n"] == p["direct"]["n"] == p["added"]["n"] >= 15
        assert p["proxy_cpu_ms_per_request"] > 0 and p["added_p50_ms"] == p["added"]["p50_ms"]
    assert busy["stream_chunks_per_s"] > 0 and busy["stream_ttfb"]["n"] >= 2
    ((name, measured, limit, unit, detail),) = proxy_bench.targets({"proxy": res})
    assert name.startswith("proxy: p99 added latency < 2 ms") and unit == "ms"
    assert measured == busy["added_p99_ms"] and limit == 2.0 and "stream chunks/s" in detail
    assert any("| with 2 concurrent streams |" in line for line in proxy_bench.markdown_lines(res))
