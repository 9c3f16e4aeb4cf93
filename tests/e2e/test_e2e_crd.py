"""The shipped Model CRD on the real kube-apiserver: every CEL rule and schema constraint enforced with our
messages, the status subresource, and the printer columns kubectl shows (the Table view)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from flexinfer import keys
from tests.deploy.test_deploy_crd import CASES, model

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "daemonset" / "base" / "crd-models.yaml").read_text())
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def models_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    p = f"/apis/{keys.MODEL_GROUP}/{keys.MODEL_VERSION}/namespaces/{ns}/{keys.MODEL_PLURAL}"
    return p + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")


def test_every_case_is_judged_by_the_real_api_server_as_by_our_tests(homelab, control_plane, ns):
    """The same cases tests/deploy evaluates with cel-python + jsonschema, now sent to kube-apiserver
    (dry run, strict field validation as `kubectl apply` does): accepted exactly when expected, and every
    CEL rejection carries our message."""
    wrong: list[str] = []
    for case_id, spec, name, accept, fragment in CASES:
        obj = model(copy.deepcopy(spec), name)
        obj["metadata"]["namespace"] = ns
        status, body = control_plane.admin_request(
            "POST", models_path(ns) + "?dryRun=All&fieldValidation=Strict", obj)
        message = body.get("message", "") if isinstance(body, dict) else str(body)
        if accept and status != 201:
            wrong.append(f"{case_id}: expected accepted, got {status}: {message}")
        elif not accept and status not in (400, 422):
            wrong.append(f"{case_id}: expected rejected, got {status}")
        elif not accept and fragment and fragment not in message:
            wrong.append(f"{case_id}: rejected without our message {fragment!r}: {message}")
    assert not wrong, "\n".join(wrong)


def valid_model(ns: str, name: str = "status-demo") -> dict[str, Any]:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND,
            "metadata": {"name": name, "namespace": ns},
            "spec": {"backend": "llamacpp", "source": "HF://org/model",
                     "gpu": {"vendor": "amd", "shared": "lane-a", "priority": 7, "vramEstimateMB": 4096}}}


def test_status_subresource(homelab, control_plane, ns):
    cp = control_plane
    status, created = cp.admin_request("POST", models_path(ns), valid_model(ns))
    assert status == 201, created
    gen = created["metadata"]["generation"]
    # status written through the main resource is ignored...
    status, body = cp.admin_request("PATCH", models_path(ns, "status-demo"), {"status": {"phase": "Ready"}},
                                    headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and "phase" not in (body.get("status") or {}), body
    # ...and through /status it is kept, without touching spec or generation
    status, body = cp.admin_request(
        "PATCH", models_path(ns, "status-demo", "status"),
        {"status": {"phase": "Ready", "endpoint": "http://status-demo.x.svc:8080"}, "spec": {"backend": "vllm"}},
        headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200, body
    assert body["status"]["phase"] == "Ready" and body["spec"]["backend"] == "llamacpp"
    assert body["metadata"]["generation"] == gen
    # the status schema is enforced too
    status, body = cp.admin_request("PATCH", models_path(ns, "status-demo", "status"), {"status": {"phase": "Bogus"}},
                                    headers={"Content-Type": "application/merge-patch+json"})
    assert status == 422 and "phase" in body["message"], body
    # a spec change bumps the generation (the controller's observedGeneration compares with it)
    status, body = cp.admin_request("PATCH", models_path(ns, "status-demo"), {"spec": {"gpu": {"priority": 8}}},
                                    headers={"Content-Type": "application/merge-patch+json"})
    assert status == 200 and body["metadata"]["generation"] == gen + 1


def test_printer_columns_in_the_table_view(homelab, control_plane, ns):
    """What `kubectl get models` (and -o wide) prints: our columns, in order, with the object's values."""
    cp = control_plane
    assert cp.admin_request("POST", models_path(ns), valid_model(ns, "table-demo"))[0] == 201
    cp.admin_request("PATCH", models_path(ns, "table-demo", "status"),
                     {"status": {"phase": "Loading", "endpoint": "http://table-demo.x.svc:8080"}},
                     headers={"Content-Type": "application/merge-patch+json"})
    status, table = cp.admin_request("GET", models_path(ns), headers={"Accept": TABLE})
    assert status == 200 and table["kind"] == "Table", table
    shipped = CRD["spec"]["versions"][0]["additionalPrinterColumns"]
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name"] + [c["name"] for c in shipped], columns
    wide = {c["name"]: c["priority"] for c in table["columnDefinitions"]}
    for c in shipped:
        assert wide[c["name"]] == c.get("priority", 0), c
    (row,) = table["rows"]
    cells = dict(zip(columns, row["cells"], strict=True))
    assert cells["Name"] == "table-demo"
    assert cells["Backend"] == "llamacpp" and cells["Phase"] == "Loading"
    assert cells["Group"] == "lane-a" and cells["Priority"] == 7
    assert cells.get("Endpoint", "http://table-demo.x.svc:8080") == "http://table-demo.x.svc:8080"
