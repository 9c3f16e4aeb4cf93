"""`flexinfer demo` end to end on the embedded homelab fleet (fake API server, agents, extender, controller)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flexinfer.arch import arch_info
from flexinfer.cli.main import cli
from flexinfer.compat import Verdict, check
from flexinfer.demo.run import load_example_docs
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.sim.cluster import DemoCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_run():
    fleet = load_fleet(default_fleet_path())
    docs = load_example_docs()
    with DemoCluster(fleet) as cluster:
        cluster.apply_models(docs)
        for d in docs:
            if not ((d.get("spec") or {}).get("gpu") or {}).get("shared"):
                cluster.activate(d["metadata"]["name"])
        attempts = cluster.settle()
        status = cluster.model_status()
        yield fleet, cluster, attempts, status


def test_every_scheduled_model_is_compatible_and_fits(demo_run):
    fleet, _cluster, attempts, _ = demo_run
    placed = [a for a in attempts if a.node]
    assert len(placed) >= 4
    for a in placed:
        node = fleet.node(a.node)
        for idx in (int(i) for i in a.gpus.split(",")):
            gpu = node.gpus[idx]
            info = arch_info(gpu.vendor, gpu.arch)
            assert check(a.backend, info).verdict is not Verdict.UNSUPPORTED, (a.model, a.node)
        assert a.free_before_mib is not None and a.need_mib is not None
        assert a.free_before_mib >= a.need_mib, f"{a.model} placed on {a.node} without room"


def test_no_gpu_is_overcommitted(demo_run):
    fleet, *_ = demo_run
    for node in fleet.nodes:
        for g in node.gpus:
            assert 0 <= g.used_mi_b <= g.total_mi_b, (node.name, g.used_mi_b, g.total_mi_b)


def test_too_large_model_stays_pending_with_a_reason_per_node(demo_run):
    _, _, attempts, status = demo_run
    big = next(a for a in attempts if a.model == "llama-405b")
    assert big.node is None
    assert any("largest GPU has" in why for why in big.rejections.values())
    assert status["llama-405b"]["phase"] == "Pending"


def test_vllm_never_lands_on_maxwell_or_gfx906(demo_run):
    _, _, attempts, _ = demo_run
    for a in attempts:
        if a.backend in ("vllm", "vllm-omni", "diffusers"):
            assert a.node not in ("cblevins-gtx980ti", "cblevins-radeonvii")


def test_placed_models_report_ready(demo_run):
    _, _, attempts, status = demo_run
    for a in attempts:
        if a.node:
            assert status[a.model]["phase"] == "Ready", (a.model, status[a.model])


def test_a_loaded_model_is_counted_once_and_sdxl_fits_next_to_it(demo_run):
    """qwen3-8b-fast's 16000 MiB is both in its agent's numbers (free 24057 -> 8057 MiB) and committed to its bound
    pod; the extender counts it once (min(observed free, total - committed)), so sdxl-turbo (7500 MiB) is placed on
    the same GPU. Counting it twice (reserved until an agent sample postdated Ready + 1 s) left sdxl-turbo Pending
    with "best GPU has 0 MiB free (16000 MiB reserved for pods being placed)"."""
    _, cluster, attempts, status = demo_run
    fast = next(a for a in attempts if a.model == "qwen3-8b-fast")
    sdxl = next(a for a in attempts if a.model == "sdxl-turbo")
    assert fast.node == sdxl.node == "rtxpro4000-worker", (fast, sdxl)
    assert fast.free_before_mib is not None and fast.free_after_mib == fast.free_before_mib - 16000
    assert sdxl.free_before_mib == fast.free_after_mib and sdxl.free_after_mib == sdxl.free_before_mib - 7500
    assert status["sdxl-turbo"]["phase"] == "Ready" and status["qwen3-8b-fast"]["phase"] == "Ready"
    cache = cluster.running.extender.cache
    assert cache.committed_mib("rtxpro4000-worker") == {0: 16000 + 7500}  # both bound: both committed
    assert not any("reserved for pods being placed" in why for a in attempts for why in a.rejections.values())


def test_demo_cli_exits_zero_and_explains():
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Why each model went where it did" in result.output
    assert "llama-405b" in result.output and "largest GPU has" in result.output


# --- the demo's story text comes from what happened ---------------------------------------------------------


def _examples_without(tmp_path, drop=(), patch=None):
    import shutil

    from flexinfer.demo.run import EXAMPLES

    out = tmp_path / "examples"
    out.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        if f.stem not in drop:
            shutil.copy(f, out / f.name)
    if patch:
        import yaml

        name, fn = patch
        doc = yaml.safe_load((out / f"{name}.yaml").read_text())
        fn(doc)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return out


def test_group_summary_lists_only_the_members_present(tmp_path):
    examples = _examples_without(tmp_path, drop=("deepseek-r1",))
    res = CliRunner().invoke(cli, ["demo", "--examples", str(examples)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("Shared GPU group"))
    assert "qwen3-14b-mlc (priority 100, always on)" in line and "qwen3-32b-quality (priority 80)" in line
    assert "deepseek-r1" not in res.output


def test_no_group_in_the_examples_means_no_preemption_story(tmp_path):
    examples = _examples_without(tmp_path, drop=("qwen3-32b-quality", "deepseek-r1"))
    res = CliRunner().invoke(cli, ["demo", "--examples", str(examples)])
    assert res.exit_code == 0, res.output
    assert "no preemption story" in res.output and "preempts" not in res.output


def test_swap_heading_says_what_the_statuses_say():
    from flexinfer.demo.run import GroupStory, reclaim_heading, swap_heading

    story = GroupStory("g", (("big", 80, False), ("small", 100, True)), holder="small", challenger="big",
                       challenger_idle_seconds=900)
    assert swap_heading(story, {"big": {"phase": "Ready"}, "small": {"phase": "Preempted"}}, 11) == (
        "11 minutes later a request for big arrives: it preempts small (big is Ready)")
    assert swap_heading(story, {"big": {"phase": "Ready"}, "small": {"phase": "Preempted"}}, None) == (
        "A request for big arrives: it preempts small (big is Ready)")  # the real control plane: no clock
    stuck = swap_heading(story, {"big": {"phase": "Pending", "message": "waiting for the pod to be scheduled"},
                                 "small": {"phase": "Ready"}}, 11)
    assert "preempts" not in stuck
    assert stuck.endswith("it is Pending (waiting for the pod to be scheduled); small stays Ready")
    assert reclaim_heading(story, {"big": {"phase": "Idle"}, "small": {"phase": "Ready"}}) == (
        "big idles out (Idle): small reclaims the GPU (Ready)")
    assert "reclaims" not in reclaim_heading(story, {"big": {"phase": "Ready"}, "small": {"phase": "Preempted"}})


def test_reclaim_heading_only_reclaims_a_gpu_that_was_given_up():
    from flexinfer.demo.run import GroupStory, reclaim_heading

    story = GroupStory("g", (("big", 80, False), ("small", 100, True)), holder="small", challenger="big",
                       challenger_idle_seconds=900)
    final = {"big": {"phase": "Idle"}, "small": {"phase": "Ready"}}
    swapped = {"big": {"phase": "Ready"}, "small": {"phase": "Preempted"}}
    stuck = {"big": {"phase": "Pending"}, "small": {"phase": "Ready"}}
    assert reclaim_heading(story, final, swapped) == "big idles out (Idle): small reclaims the GPU (Ready)"
    kept = reclaim_heading(story, final, stuck)
    assert "reclaims" not in kept
    assert kept == "after big's idle timeout: big is Idle; small kept the GPU throughout (Ready)"


def test_a_challenger_that_never_fits_preempts_nobody(tmp_path):
    """The 32B asks for more VRAM than any GPU has: the demo says it stayed Pending and the 14B kept the GPU,
    never that it preempted or that the 14B reclaimed anything."""

    def too_big(doc):
        doc["spec"]["gpu"]["vramEstimateMB"] = 60000

    examples = _examples_without(tmp_path, drop=("deepseek-r1",), patch=("qwen3-32b-quality", too_big))
    res = CliRunner().invoke(cli, ["demo", "--examples", str(examples)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long headings
    assert "a request for qwen3-32b-quality arrives: it is Pending" in text
    assert "qwen3-14b-mlc stays Ready" in text
    assert "preempts qwen3-14b-mlc" not in text and "reclaims the GPU" not in text
    assert "qwen3-14b-mlc kept the GPU throughout (Ready)" in text


def test_a_policy_tie_is_explained_as_a_tie_toward_the_reserved_node(demo_run):
    """qwen3-14b-mlc pins gfx1100: the two 7900 XTX nodes tie in the policy; the extender breaks the tie toward the
    node it reserved the pod's memory on (policy.lead), and the demo says so instead of 'lower score 6 vs 7'."""
    _, _, attempts, _ = demo_run
    mlc = next(a for a in attempts if a.model == "qwen3-14b-mlc")
    assert mlc.node is not None
    ties = [why for why in mlc.rejections.values() if "tie broken toward" in why]
    assert ties and all(mlc.node in why and f"same score {mlc.score}" in why for why in ties)
    assert not any(f"vs {mlc.score + 1}" in why for why in mlc.rejections.values())
