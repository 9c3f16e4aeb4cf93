"""`flexinfer nodes`, `explain` and `activate` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from flexinfer import keys, kube
from flexinfer.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def test_nodes_table_and_json():
    res = CliRunner().invoke(cli, ["nodes"])
    assert res.exit_code == 0
    assert "cblevins-gtx980ti" in res.output and "sm_52" in res.output and "FREE MiB" in res.output
    rows = json.loads(CliRunner().invoke(cli, ["nodes", "-o", "json"]).output)
    maxwell = next(r for r in rows if r["node"] == "cblevins-gtx980ti")
    assert maxwell["freeMiB"] == 5800 and maxwell["totalMiB"] == 6144 and maxwell["family"] == "maxwell"


def test_explain_model_offline_gives_every_node_a_verdict():
    res = CliRunner().invoke(cli, ["explain", str(ROOT / "daemonset/examples/qwen3-8b-fast.yaml"), "-o", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["node"]: r for r in json.loads(res.output)}
    from flexinfer.fleet import default_fleet_path, load_fleet

    assert set(rows) == {n.name for n in load_fleet(default_fleet_path()).nodes}
    assert rows["cblevins-gtx980ti"]["verdict"] == "unresolvable"
    assert "maxwell" in rows["cblevins-gtx980ti"]["reason"]
    assert all(r["reason"] for r in rows.values() if r["verdict"] != "pass")


def test_explain_rejects_junk_target():
    res = CliRunner().invoke(cli, ["explain", "nonsense"])
    assert res.exit_code != 0 and "pod/NAME or model/NAME" in res.output


@pytest.mark.integration
def test_activate_sets_the_annotation(fake_api):
    fake_api.put_object({"apiVersion": keys.MODEL_API_VERSION, "kind": "Model",
                         "metadata": {"name": "m", "namespace": "ai"},
                         "spec": {"backend": "ollama", "source": "ollama://x:1b"}})
    res = CliRunner().invoke(cli, ["activate", "m", "-n", "ai", "--kube-server", fake_api.url])
    assert res.exit_code == 0, res.output
    obj = fake_api.get_object("models", "m", "ai")
    assert keys.MODEL_ACTIVATE in obj["metadata"]["annotations"]
    missing = CliRunner().invoke(cli, ["activate", "nope", "-n", "ai", "--kube-server", fake_api.url])
    assert missing.exit_code == 1 and "not found" in missing.output
    api = kube.api_client(server=fake_api.url)
    assert kube.get_object(api, "models", "m", "ai") is not None


@pytest.mark.integration
def test_explain_from_a_cluster_counts_vram_committed_to_bound_pods(fake_api, tmp_path):
    """`explain --kube-server` applies the extender's accounting: a bound pod's estimate is committed on its GPU
    whether or not its model shows in the agent's numbers yet."""
    import time

    from tests.extender.ext_fixtures import gpu, model_pod, node_obj

    fake_api.put_object({"apiVersion": "v1", "kind": "Node",
                         **node_obj("ada", [gpu(0, total=24576, free=24000)], time.time())})
    pod_file = tmp_path / "pod.yaml"
    pod_file.write_text(json.dumps(model_pod(12000, "llamacpp", 1, uid="next", name="next")))

    def verdict() -> dict:
        res = CliRunner().invoke(cli, ["explain", str(pod_file), "--kube-server", fake_api.url, "-o", "json"])
        assert res.exit_code in (0, 20), res.output
        (row,) = json.loads(res.stdout)
        return row

    assert verdict()["verdict"] == "pass"
    fake_api.put_object({"apiVersion": "v1", "kind": "Pod",
                         **model_pod(16000, "llamacpp", 1, uid="lazy", name="lazy", node_name="ada")})
    row = verdict()
    assert row["verdict"] == "failed" and row["reason"] == (
        "needs 12000 MiB on one GPU; best GPU has 8576 MiB free (16000 MiB committed to bound pods)")


def test_nodes_from_a_cluster_that_refuses_is_a_clear_error(fake_api, tmp_path):
    """An API server that refuses the Node list (403 is not retried) or a kubeconfig that cannot be loaded: exit 1
    with the reason, not a traceback (README: `flexinfer nodes` exits 1 when the node source cannot be read)."""
    fake_api.fail("GET", "/api/v1/nodes", status=403, times=-1)
    res = CliRunner().invoke(cli, ["nodes", "--kube-server", fake_api.url])
    assert res.exit_code == 1, res.output
    assert "cannot read Nodes from the cluster" in res.output and "403" in res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, kube.KubeError)
    junk = tmp_path / "kubeconfig"
    junk.write_text("just a string\n")
    res = CliRunner().invoke(cli, ["nodes", "--kubeconfig", str(junk)])
    assert res.exit_code == 1 and "cannot load kubeconfig" in res.output, res.output


def test_explain_and_preflight_agree_on_a_cpu_only_model(tmp_path):
    """A Model without spec.gpu runs on CPU: its pod says vendor cpu (controller.render), so explain does not
    judge it as a 1-GPU pod (every node accepts it, as preflight says), and it never asks for GPU memory."""
    doc = {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "metadata": {"name": "tiny-cpu"},
           "spec": {"backend": "llamacpp", "source": "HF://org/tiny-GGUF"}}
    f = tmp_path / "cpu.yaml"
    f.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, ["explain", str(f), "-o", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert rows and all(r["verdict"] == "pass" for r in rows), rows
    assert not any("GPU" in (r.get("reason") or "") for r in rows)
    pre = CliRunner().invoke(cli, ["preflight", str(f)])
    assert pre.exit_code == 0, pre.output
