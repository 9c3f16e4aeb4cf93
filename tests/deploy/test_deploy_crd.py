"""The Model CRD: structural schema + CEL rules agree with flexinfer.model.parse_model.

Each case is a Model; the CRD verdict is "schema (jsonschema, after defaulting) and every CEL rule
(cel-python) accept it"; the Python verdict is "parse_model does not raise". They must agree, and every
CEL rule must be the reason for at least one rejection (so no rule is dead or untested).
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from flexinfer import keys
from flexinfer.errors import ValidationError
from flexinfer.model import parse_model

try:  # tests/ as packages (tests/deploy/__init__.py) or as rootdir-relative modules
    from .deploy_helpers import DAEMONSET, cel_failures, cel_program, collect_rules, crd_verdict, load_docs
except ImportError:
    from deploy_helpers import DAEMONSET, cel_failures, cel_program, collect_rules, crd_verdict, load_docs

CRD = load_docs(DAEMONSET / "base" / "crd-models.yaml")[0]
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def model(spec: dict[str, Any], name: str = "m1") -> dict[str, Any]:
    return {"apiVersion": keys.MODEL_API_VERSION, "kind": keys.MODEL_KIND, "metadata": {"name": name}, "spec": spec}


BASE = {"backend": "llamacpp", "source": "HF://org/model"}
MAXWELL = {keys.LABEL_FAMILY: "maxwell"}
SM52 = {keys.LABEL_ARCH: "sm_52"}


def with_(**kw: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec.update(kw)
    return spec


def python_verdict(obj: dict[str, Any]) -> tuple[bool, str]:
    try:
        parse_model(obj)
    except ValidationError as e:
        return False, str(e)
    return True, ""


# (id, spec, name, expect_accept, CEL message fragment that must be among the failures or None)
CASES: list[tuple[str, dict[str, Any], str, bool, str | None]] = [
    ("minimal", BASE, "m1", True, None),
    ("minimal-ollama", {"backend": "ollama", "source": "ollama://llama3:8b"}, "m1", True, None),
    ("alias-mlc", with_(backend="mlc"), "m1", True, None),
    ("alias-llama.cpp", with_(backend="llama.cpp"), "m1", True, None),
    ("unknown-backend", with_(backend="tgi"), "m1", False, None),
    ("file-source", with_(source="file:///models/x.gguf"), "m1", True, None),
    ("pvc-source", with_(source="pvc://cache/qwen"), "m1", True, None),
    ("bad-scheme", with_(source="s3://bucket/model"), "m1", False, "spec.source must start"),
    ("lowercase-hf", with_(source="hf://org/model"), "m1", False, "spec.source must start"),
    ("scheme-only", with_(source="HF://"), "m1", False, "spec.source must start"),
    ("scheme-slashes", with_(source="pvc:///"), "m1", False, "spec.source must start"),
    ("missing-source", {"backend": "vllm"}, "m1", False, None),
    ("bad-name", BASE, "Bad_Name", False, "metadata.name must be a DNS-1123 label"),
    ("long-name", BASE, "a" * 64, False, "metadata.name must be a DNS-1123 label"),
    ("gpu-full", with_(gpu={"vendor": "amd", "shared": "grp", "priority": 100, "count": 2,
                            "vramEstimateMB": 12288}), "m1", True, None),
    ("gpu-upper-vendor", with_(gpu={"vendor": "NVIDIA"}), "m1", True, None),
    ("gpu-bad-vendor", with_(gpu={"vendor": "ati"}), "m1", False, None),
    ("gpu-intel", with_(gpu={"vendor": "intel", "vramEstimateMB": 1200}), "m1", True, None),
    ("cpu-ok", with_(gpu={"vendor": "cpu"}), "m1", True, None),
    ("cpu-count", with_(gpu={"vendor": "cpu", "count": 1}), "m1", False, "spec.gpu.count must be omitted"),
    ("CPU-count", with_(gpu={"vendor": "CPU", "count": 1}), "m1", False, "spec.gpu.count must be omitted"),
    ("cpu-vram", with_(gpu={"vendor": "cpu", "vramEstimateMB": 100}), "m1", False,
     "spec.gpu.vramEstimateMB must be omitted"),
    ("cpu-shared", with_(gpu={"vendor": "cpu", "shared": "g"}), "m1", False, "spec.gpu.shared must be omitted"),
    ("count-0", with_(gpu={"count": 0}), "m1", False, None),
    ("count-17", with_(gpu={"count": 17}), "m1", False, None),
    ("count-16", with_(gpu={"count": 16}), "m1", True, None),
    ("vram-0", with_(gpu={"vramEstimateMB": 0}), "m1", False, None),
    ("priority-high", with_(gpu={"priority": 1001}), "m1", False, None),
    ("shared-bad", with_(gpu={"shared": "Bad Group"}), "m1", False, None),
    ("min-replicas-1", with_(serverless={"minReplicas": 1}), "m1", True, None),
    ("min-replicas-2", with_(serverless={"minReplicas": 2}), "m1", False, None),
    ("durations", with_(serverless={"idleTimeout": "1h30m", "coldStartTimeout": 300}), "m1", True, None),
    ("bad-duration", with_(serverless={"idleTimeout": "10 minutes"}), "m1", False, None),
    ("bad-duration-ms", with_(serverless={"idleTimeout": "10ms"}), "m1", False, None),
    ("cache-shared-pvc", with_(cache={"strategy": "SharedPVC", "pvcName": "c", "size": "100Gi"}), "m1", True, None),
    ("cache-pvc-without-shared", with_(cache={"strategy": "Memory", "pvcName": "c"}), "m1", False,
     "spec.cache.pvcName and storageClass are only valid"),
    ("cache-default-with-pvc", with_(cache={"pvcName": "c"}), "m1", False,
     "spec.cache.pvcName and storageClass are only valid"),
    ("cache-sc-without-shared", with_(cache={"storageClass": "nfs"}), "m1", False,
     "spec.cache.pvcName and storageClass are only valid"),
    ("cache-bad-strategy", with_(cache={"strategy": "Disk"}), "m1", False, None),
    ("config-anything", with_(config={"a": {"b": [1, 2]}, "jitPolicy": "READONLY"}), "m1", True, None),
    ("labels-10", with_(serviceLabels=[f"l{i}" for i in range(10)]), "m1", True, None),
    # maxItems: 10 rejects it (kube-apiserver runs no CEL rule on an object that fails the schema, so a CEL
    # size rule here was never reached: the e2e tier showed it)
    ("labels-11", with_(serviceLabels=[f"l{i}" for i in range(11)]), "m1", False, None),
    ("labels-dup", with_(serviceLabels=["a", "a"]), "m1", False, None),
    ("labels-bad", with_(serviceLabels=["Not OK"]), "m1", False, None),
    ("litellm", with_(litellm={"aliases": ["x"], "modelName": "x"}), "m1", True, None),
    ("tolerations", with_(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]), "m1",
     True, None),
    ("unknown-field", with_(replicas=3), "m1", False, None),
    # Maxwell rules
    ("maxwell-llamacpp", with_(nodeSelector=MAXWELL), "m1", True, None),
    ("maxwell-ollama", with_(backend="ollama", source="ollama://qwen3:4b", nodeSelector=MAXWELL), "m1", True, None),
    ("maxwell-vllm", with_(backend="vllm", nodeSelector=MAXWELL), "m1", False, "do not run on Maxwell"),
    ("sm52-vllm", with_(backend="vllm", nodeSelector=SM52), "m1", False, "do not run on Maxwell"),
    ("maxwell-vllm-omni", with_(backend="vllm-omni", nodeSelector=MAXWELL), "m1", False, "do not run on Maxwell"),
    ("maxwell-diffusers", with_(backend="diffusers", nodeSelector=MAXWELL), "m1", False, "do not run on Maxwell"),
    ("maxwell-comfyui", with_(backend="comfyui", nodeSelector=MAXWELL), "m1", False, "do not run on Maxwell"),
    ("maxwell-mlc-jit", with_(backend="mlc-llm", nodeSelector=MAXWELL), "m1", False,
     "spec.config.jitPolicy: mlc-llm on Maxwell"),
    ("maxwell-mlc-alias-jit", with_(backend="mlc", nodeSelector=SM52, config={"jitPolicy": "JIT"}), "m1", False,
     "spec.config.jitPolicy: mlc-llm on Maxwell"),
    ("maxwell-mlc-readonly", with_(backend="mlc-llm", nodeSelector=MAXWELL, config={"jitPolicy": "READONLY"}),
     "m1", True, None),
    ("maxwell-mlc-readonly-lower", with_(backend="mlc-llm", nodeSelector=SM52, config={"jitPolicy": "readonly"}),
     "m1", True, None),
    ("turing-vllm", with_(backend="vllm", nodeSelector={keys.LABEL_ARCH: "sm_75"}), "m1", True, None),
    ("pascal-family-vllm", with_(backend="vllm", nodeSelector={keys.LABEL_FAMILY: "pascal"}), "m1", True, None),
]


@pytest.mark.parametrize(("spec", "name", "accept", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crd_and_parser_agree(spec: dict[str, Any], name: str, accept: bool, fragment: str | None) -> None:
    obj = model(spec, name)
    crd_ok, crd_why = crd_verdict(obj)
    py_ok, py_why = python_verdict(obj)
    assert crd_ok == accept, f"CRD verdict {crd_ok}: {crd_why}"
    assert py_ok == accept, f"parse_model verdict {py_ok}: {py_why}"
    if fragment:  # the CEL rule itself rejects it (evaluated on its own, even where the schema also does)
        cel_why = cel_failures(SCHEMA, obj)
        assert any(fragment in m for m in cel_why), cel_why


def test_every_cel_rule_rejects_some_case() -> None:
    rules = {r["message"] for _, r in collect_rules(SCHEMA)}
    hit = {m for _, spec, name, _, frag in CASES if frag for m in rules if frag in m}
    assert rules == hit, f"CEL rules without a rejecting case: {rules - hit}"


def test_every_cel_rule_compiles_and_has_message() -> None:
    for path, rule in collect_rules(SCHEMA):
        assert rule.get("message"), path
        cel_program(rule["rule"])


def test_backend_case_is_a_documented_difference() -> None:
    """The Python parser reads 'VLLM' leniently; the API server only accepts the enum spelling."""
    obj = model(with_(backend="VLLM"))
    assert python_verdict(obj)[0]
    assert not crd_verdict(obj)[0]


def test_crd_shape() -> None:
    spec = CRD["spec"]
    assert CRD["metadata"]["name"] == f"{keys.MODEL_PLURAL}.{keys.MODEL_GROUP}"
    assert spec["group"] == keys.MODEL_GROUP
    assert spec["names"]["kind"] == keys.MODEL_KIND and spec["names"]["shortNames"] == ["mdl"]
    (version,) = spec["versions"]
    assert version["name"] == keys.MODEL_VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    cols = {c["name"]: (c["jsonPath"], c.get("priority", 0)) for c in version["additionalPrinterColumns"]}
    assert cols == {"Backend": (".spec.backend", 0), "Phase": (".status.phase", 0),
                    "Ready": ('.status.conditions[?(@.type=="Ready")].status', 0),
                    "Group": (".spec.gpu.shared", 0), "Priority": (".spec.gpu.priority", 0),
                    "Substage": (".status.loadingSubstage", 1),  # -o wide
                    "Endpoint": (".status.endpoint", 1),  # -o wide
                    "Age": (".metadata.creationTimestamp", 0)}
    phases = SCHEMA["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == ["Idle", "Pending", "Loading", "Ready", "Preempted", "Failed"]


def test_crd_backend_enum_is_the_registry() -> None:
    from flexinfer import backends

    enum = SCHEMA["properties"]["spec"]["properties"]["backend"]["enum"]
    assert sorted(enum) == sorted([*backends.NAMES, *backends.ALIASES]) and len(enum) == len(set(enum))


def test_crd_maxwell_rules_list_what_the_registry_says() -> None:
    """The two Maxwell CEL rules name backends by spelling; the lists must be the registry's: every name and
    alias that never runs on sm_5x, and every name and alias that runs there only precompiled (READONLY)."""
    from flexinfer import backends
    from flexinfer.arch import arch_info
    from flexinfer.compat import Verdict, check

    sm52 = arch_info("nvidia", "sm_52")
    never, readonly_only = set(), set()
    for name, b in backends.REGISTRY.items():
        spellings = {name, *b.aliases}
        jit = check(name, sm52, jit_policy="").verdict is Verdict.UNSUPPORTED
        ro = check(name, sm52, jit_policy="READONLY").verdict is Verdict.UNSUPPORTED
        if jit and ro:
            never |= spellings
        elif jit:
            readonly_only |= spellings
    lists = []
    for _, rule in collect_rules(SCHEMA):
        m = re.search(r"self\.backend in \[([^\]]*)\]", rule["rule"])
        if m:
            lists.append({x.strip().strip("'") for x in m.group(1).split(",")})
    assert sorted(map(sorted, lists)) == sorted(map(sorted, [never, readonly_only]))


def test_status_validates() -> None:
    obj = model(BASE)
    obj["status"] = {"phase": "Ready", "endpoint": "http://m1.default.svc:8080", "observedGeneration": 2,
                     "lastActiveTime": "2026-11-23T10:00:00Z", "message": "serving",
                     "cache": {"ready": True, "job": "Complete"},
                     "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "serving",
                                     "lastTransitionTime": "2026-11-23T10:00:00Z"}]}
    assert crd_verdict(obj)[0]
    obj["status"]["phase"] = "Running"
    assert not crd_verdict(obj)[0]


@pytest.mark.parametrize(("change", "ok"), [
    ({}, True),
    ({"reason": "Waiting for GPU"}, False),  # metav1.Condition reason: CamelCase, no blanks
    ({"reason": ""}, False),
    ({"reason": "9Lives"}, False),
    ({"type": "bad type"}, False),
    ({"status": "Yes"}, False),
    ({"message": None}, False),  # required (may be empty)
    ({"lastTransitionTime": None}, False),
    ({"message": ""}, True),
    ({"type": "example.com/Custom", "reason": "A_b:c,D"}, True),
])
def test_conditions_are_metav1_conditions(change: dict[str, Any], ok: bool) -> None:
    cond = {"type": "Ready", "status": "False", "reason": "Loading", "message": "loading",
            "lastTransitionTime": "2026-11-23T10:00:00Z", "observedGeneration": 1}
    cond.update(change)
    cond = {k: v for k, v in cond.items() if v is not None}
    obj = model(BASE)
    obj["status"] = {"phase": "Loading", "conditions": [cond]}
    assert crd_verdict(obj)[0] is ok, crd_verdict(obj)


def test_every_condition_reason_the_controller_writes_fits_the_schema() -> None:
    """Every reason the controller can put in a condition matches metav1.Condition's pattern."""
    from flexinfer.controller import phases

    pattern = re.compile(SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]["properties"]["reason"]
                         ["pattern"])
    for reason in phases.ALL_REASONS:
        assert pattern.match(reason), reason


# --- structural schema rules the API server enforces (no kube-apiserver here, so checked directly) -----
_INT_OR_STRING_ANYOF = [{"type": "integer"}, {"type": "string"}]
_FORBIDDEN_IN_JUNCTORS = ("type", "default", "description", "nullable", "additionalProperties", "properties",
                          "items", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")


def _structural_errors(schema: dict[str, Any], path: str = "") -> list[str]:
    errors: list[str] = []
    special = schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields")
    if "type" not in schema and not special and path != ".metadata":
        errors.append(f"{path or '(root)'}: type must be set")
    if schema.get("x-kubernetes-int-or-string"):
        if "type" in schema:
            errors.append(f"{path}: int-or-string must not set type")
        if "anyOf" in schema and schema["anyOf"] != _INT_OR_STRING_ANYOF:
            errors.append(f"{path}: int-or-string anyOf must be exactly [{{type: integer}}, {{type: string}}]")
    else:
        for junctor in ("anyOf", "allOf", "oneOf"):
            for sub in schema.get(junctor, []):
                bad = [k for k in _FORBIDDEN_IN_JUNCTORS if k in sub]
                if bad:
                    errors.append(f"{path}.{junctor}: {bad} not allowed inside {junctor}")
    if "default" in schema and path.count(".") and schema.get("type") == "object" and "properties" not in schema:
        errors.append(f"{path}: default on an object without properties")
    for name, sub in schema.get("properties", {}).items():
        errors.extend(_structural_errors(sub, f"{path}.{name}"))
    if isinstance(schema.get("items"), dict):
        errors.extend(_structural_errors(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        errors.extend(_structural_errors(schema["additionalProperties"], f"{path}{{}}"))
    return errors


def test_schema_is_structural() -> None:
    assert _structural_errors(SCHEMA) == []


def test_structural_lint_catches_a_non_structural_int_or_string() -> None:
    bad = {"type": "object", "properties": {"t": {"x-kubernetes-int-or-string": True,
                                                  "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}}}
    assert _structural_errors(bad)


def _schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in filter(None, path.replace("[]", ".[]").split(".")):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


def test_cel_rules_only_read_declared_fields() -> None:
    """Fields kept only by x-kubernetes-preserve-unknown-fields are invisible to CEL in the API server."""
    for path, rule in collect_rules(SCHEMA):
        here = _schema_at(SCHEMA, path)
        for chain in re.findall(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", rule["rule"]):
            node = here
            for field in chain.strip(".").split("."):
                if field in ("matches", "startsWith", "upperAscii", "lowerAscii", "size", "all", "exists"):
                    break
                if path == "" and field == "metadata":
                    break  # metadata.name / generateName are readable
                assert field in node.get("properties", {}), f"rule at {path or '(root)'} reads undeclared {chain}"
                node = node["properties"][field]
