"""`flexinfer demo` plays a request through the proxy: it wakes a scaled-to-zero Model on the embedded cluster."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from flexinfer.cli.main import cli
from flexinfer.demo.proxystory import play
from flexinfer.demo.run import load_example_docs
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.sim.cluster import DemoCluster

pytestmark = pytest.mark.integration


def test_a_request_through_the_proxy_wakes_an_idle_model_on_the_embedded_cluster() -> None:
    with DemoCluster(load_fleet(default_fleet_path())) as cluster:
        cluster.apply_models(load_example_docs())
        cluster.settle()
        story = play(cluster)
        assert story.label and story.phase_before == "Idle" and story.status_code == 200, story.heading()
        assert story.routed_to == story.model and story.status[story.model]["phase"] == "Ready"
        assert any(a.model == story.model and a.node for a in story.attempts)  # placed by the scheduling loop
        assert story.status[story.model].get("lastActiveTime")
        if story.context_tokens:
            assert story.max_tokens_received == story.context_tokens - 512


def test_demo_prints_the_proxy_story() -> None:
    out = CliRunner().invoke(cli, ["demo"]).output
    text = " ".join(out.split())  # rich wraps long lines at the terminal width
    assert re.search(r"A request for '[a-z0-9.-]+' arrives at flexinfer-proxy: \S+ was Idle; the proxy activated it",
                     text), out[-2000:]
