"""The agent process's import set stays lean (issue target: < 80 MiB RSS, bench/agent_bench.py).

Each check runs in a fresh interpreter (this test process has imported everything already) with JSON
logs, as the DaemonSet runs in a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flexinfer import keys
from flexinfer.sim.fakeapi import FakeApiServer

ROOT = Path(__file__).resolve().parents[2]

# Never needed by the agent process in production: rich/pygments come only with structlog's console
# tracebacks; the web stacks belong to the extender and the fake API server; core_v1_api and the typed
# models are ~20 MiB (the agent reads its Node as raw JSON through flexinfer.kube); the fake readers and
# fleet parsing are for --fake-gpus and the demo.
NOT_IN_AGENT = (
    "rich", "pygments", "starlette", "uvicorn", "aiohttp", "kubernetes.client.api.core_v1_api",
    "kubernetes.client.models.v1_node", "kubernetes.client.models.v1_pod", "flexinfer.fleet",
    "flexinfer.agent.readers.fake",
)


def run_py(code: str) -> dict[str, Any]:
    env = {**os.environ, "FLEXINFER_LOG_FORMAT": "json"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


REPORT = (
    "import json, sys\n"
    f"NOT_IN_AGENT = {NOT_IN_AGENT!r}\n"
    "def report(**extra):\n"
    "    print(json.dumps({'loaded': [m for m in NOT_IN_AGENT if m in sys.modules], **extra}))\n"
)


def test_agent_modules_do_not_import_unneeded_packages() -> None:
    got = run_py(REPORT + (
        "import flexinfer.agent, flexinfer.agent.main, flexinfer.agent.metrics, flexinfer.agent.grpc_server\n"
        "import flexinfer.kube\n"
        "loaded = [m for m in NOT_IN_AGENT if m in sys.modules]\n"
        "import structlog.dev, rich.console\n"  # the mask is lifted: the CLI can still import rich itself
        "report(structlog='structlog' in sys.modules, grpc='grpc' in sys.modules, before=loaded,\n"
        "       rich_after=rich.console.__name__)\n"
    ))
    assert got["structlog"] and got["grpc"]
    assert got["before"] == [], f"imported by the agent without need: {got['before']}"
    assert got["rich_after"] == "rich.console"


@pytest.mark.integration
def test_publishing_reads_the_node_without_typed_models(fake_api: FakeApiServer) -> None:
    fake_api.put_object({"apiVersion": "v1", "kind": "Node",
                         "metadata": {"name": "n1", "labels": {keys.LABEL_COMPUTE: "8.6", "team": "a"}}})
    got = run_py(REPORT + (
        "from flexinfer.agent.agent import Agent\n"
        "from flexinfer.agent.publish import Publisher\n"
        "from flexinfer.agent.readers.base import NullReader\n"
        "from flexinfer.kube import api_client\n"
        f"pub = Publisher(api_client(server={fake_api.url!r}), 'n1')\n"
        "res = Agent('n1', NullReader('no GPU library usable'), pub).step(now=1.0).publish\n"
        "report(written=res.written, node_labels=pub.node_labels)\n"
    ))
    assert got["written"]
    assert got["loaded"] == [], f"imported while publishing: {got['loaded']}"
    labels = fake_api.get_object("nodes", "n1")["metadata"]["labels"]
    assert keys.LABEL_COMPUTE not in labels and labels["team"] == "a"  # stale key learned from the raw read
    assert got["node_labels"]["team"] == "a" and keys.LABEL_COMPUTE not in got["node_labels"]
