"""The demo's story (flexinfer demo --control-plane real) on the session's control plane: the example
Models placed by kube-scheduler through the extender, and the shared group's preemption and reclaim by
the real controller on real objects."""

from __future__ import annotations

from flexinfer.extender.policy import R_TOO_SMALL

from flexinfer import keys, kube
from flexinfer.demo.realrun import play_story
from flexinfer.demo.run import load_example_docs


def test_the_demo_story_on_real_objects(homelab, api, ns):
    result = play_story(homelab, load_example_docs(), ns)
    by = {a.model: a for a in result.placements}
    # every placement is one the extender rated best just before the request (ties: kube-scheduler's pick)
    for a in result.placements:
        feasible = {n: v["Score"] for n, v in result.verdicts[a.model].items() if v["Feasible"]}
        if a.node:
            assert feasible.get(a.node) == max(feasible.values()), (a.model, a.node, feasible)
        else:
            assert not feasible, (a.model, feasible)
    assert by["qwen3-8b-fast"].node == "rtxpro4000-worker"  # vLLM: never the 980 Ti
    assert by["llama-405b"].node is None and R_TOO_SMALL in by["llama-405b"].message
    assert by["bge-reranker"].node == "cblevins-arca770"  # the only Intel GPU
    assert by["qwen3-vl-vision"].node and result.phase1_status["qwen3-vl-vision"]["phase"] == "Ready"
    assert result.phase1_status["qwen3-8b-fast"]["endpoint"]

    story = result.story
    assert story is not None and (story.holder, story.challenger) == ("qwen3-14b-mlc", "qwen3-32b-quality")
    (_, swapped, swap_status), (_, reclaimed, final_status) = result.acts
    assert swap_status["qwen3-32b-quality"]["phase"] == "Ready"
    assert swap_status["qwen3-14b-mlc"]["phase"] == "Preempted"
    assert [a.model for a in swapped if a.node] == ["qwen3-32b-quality"]
    assert final_status["qwen3-14b-mlc"]["phase"] == "Ready"
    assert final_status["qwen3-32b-quality"]["phase"] == "Idle"
    assert [a.model for a in reclaimed if a.node] == ["qwen3-14b-mlc"]
    # on the GPUs: the 32B's memory is gone again, the 14B's is back, as the agents published it
    loads = {k[1].rsplit("-", 2)[0]: v for k, v in homelab.load.loads.items() if k[0] == ns}
    assert "qwen3-32b-quality" not in loads and "qwen3-14b-mlc" in loads
    pods = kube.list_objects(api, "pods", ns, label_selector=f"{keys.LABEL_MODEL}=qwen3-32b-quality")
    assert not [p for p in pods if not p["metadata"].get("deletionTimestamp")]
