"""Helpers for the deploy tests: load manifests, render kustomize trees, CRD schema -> JSON Schema, CEL.

The kustomize renderer is deliberately tiny: it supports exactly what daemonset/ uses (resources that are
files or directories with a kustomization.yaml, `components` (their resources and patches), `namespace`,
`nameSuffix`, and strategic-merge `patches` given as files with a `target` (kind, name, equality label
selector) or matched by kind+name). Strategic merge is implemented for the list shapes our patches touch:
lists of objects merged by `name` (containers, volumes, volumeMounts, env); all other lists are replaced, as
strategic merge does for lists without a merge key. When `kubectl` is on PATH the tests also compare this
rendering with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset"
K8S_VERSION = "1.33.0"  # pinned Kubernetes JSON-schema version for kubernetes-validate


def load_docs(path: pathlib.Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def load_kustomization(directory: pathlib.Path) -> dict[str, Any]:
    return load_docs(directory / "kustomization.yaml")[0]


# --- strategic merge (subset) ------------------------------------------------------------------
def _is_named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def strategic_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if _is_named_list(base) and _is_named_list(patch):
        out = [copy.deepcopy(i) for i in base]
        index = {i["name"]: n for n, i in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _selector_matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selector ("a=b,c!=d", "k", "!k"): the forms kustomize targets use here."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _matches(obj: dict[str, Any], original_name: str, target: dict[str, Any]) -> bool:
    meta = obj.get("metadata", {})
    if "kind" in target and obj.get("kind") != target["kind"]:
        return False
    # kustomize matches a target name against the current or the original (pre-suffix) name
    if "name" in target and target["name"] not in (meta.get("name"), original_name):
        return False
    return "labelSelector" not in target or _selector_matches(meta.get("labels") or {}, target["labelSelector"])


Tracked = list[tuple[str, dict[str, Any]]]  # (original name, object)


def _apply_patches(directory: pathlib.Path, kust: dict[str, Any], objs: Tracked) -> None:
    for patch in kust.get("patches", []):
        for doc in load_docs((directory / patch["path"]).resolve()):
            target = patch.get("target") or {"kind": doc["kind"], "name": doc["metadata"]["name"]}
            hits = [i for i, (orig, o) in enumerate(objs) if _matches(o, orig, target)]
            if not hits:
                raise AssertionError(f"{directory}: patch {patch['path']} matches no resource ({target})")
            for i in hits:
                objs[i] = (objs[i][0], strategic_merge(objs[i][1], doc))


def _render(directory: pathlib.Path) -> Tracked:
    kust = load_kustomization(directory)
    objs: Tracked = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            objs.extend(_render(path))
        else:
            objs.extend((d["metadata"]["name"], d) for d in load_docs(path))
    for comp in kust.get("components", []):
        comp_dir = (directory / comp).resolve()
        comp_kust = load_kustomization(comp_dir)
        for res in comp_kust.get("resources", []):  # a component may add objects too
            path = (comp_dir / res).resolve()
            objs.extend(_render(path) if path.is_dir() else [(d["metadata"]["name"], d) for d in load_docs(path)])
        _apply_patches(comp_dir, comp_kust, objs)
    _apply_patches(directory, kust, objs)
    suffix = kust.get("nameSuffix", "")
    ns = kust.get("namespace")
    out: Tracked = []
    for orig, obj in objs:
        o = copy.deepcopy(obj)
        meta = o.setdefault("metadata", {})
        if suffix:
            meta["name"] = meta["name"] + suffix
        if ns and o.get("kind") not in CLUSTER_SCOPED:
            meta["namespace"] = ns
        if ns:
            for subj in o.get("subjects", []):  # kustomize also moves ServiceAccount subjects
                if subj.get("kind") == "ServiceAccount":
                    subj["namespace"] = ns
        out.append((orig, o))
    return out


def render(directory: pathlib.Path) -> list[dict[str, Any]]:
    """Render a kustomization directory (the subset described in the module docstring)."""
    return [o for _, o in _render(directory)]


CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


# --- CRD structural schema -> JSON Schema ---------------------------------------------------------
def to_json_schema(schema: Any) -> Any:
    """Translate an apiextensions v1 structural schema to Draft 2020-12 JSON Schema.

    x-kubernetes-int-or-string keeps its anyOf; x-kubernetes-preserve-unknown-fields allows unknown
    properties; x-kubernetes-list-type set/map become uniqueItems (map keys checked by the API server,
    not here); other x-kubernetes-* keys (validations are CEL, evaluated separately) are dropped.
    Objects without preserve-unknown-fields get additionalProperties: false, which models the API
    server's pruning as a rejection so a typo in an example is caught.
    """
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k in ("properties",):
            out[k] = {name: to_json_schema(sub) for name, sub in v.items()}
        elif k in ("items", "additionalProperties", "not"):
            out[k] = to_json_schema(v)
        elif k in ("anyOf", "allOf", "oneOf"):
            out[k] = [to_json_schema(s) for s in v]
        elif k == "x-kubernetes-list-type" and v == "set":
            out["uniqueItems"] = True
        elif k.startswith("x-kubernetes-") or k in ("default", "nullable"):
            continue
        else:
            out[k] = v
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Apply structural-schema defaults the way the API server does (before validation)."""
    if isinstance(obj, dict) and "properties" in schema:
        obj = dict(obj)
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        obj = [apply_defaults(schema["items"], i) for i in obj]
    return obj


# --- CEL ----------------------------------------------------------------------------------------
# Kubernetes CEL includes the strings extension library (lowerAscii/upperAscii); cel-python does not,
# so we provide the two functions the CRD uses with the same semantics (ASCII case mapping).
def _ascii_upper(s: Any) -> celpy.celtypes.StringType:
    return celpy.celtypes.StringType("".join(c.upper() if c.isascii() else c for c in str(s)))


def _ascii_lower(s: Any) -> celpy.celtypes.StringType:
    return celpy.celtypes.StringType("".join(c.lower() if c.isascii() else c for c in str(s)))


CEL_FUNCTIONS = {"upperAscii": _ascii_upper, "lowerAscii": _ascii_lower}
_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def cel_program(rule: str) -> Any:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions=CEL_FUNCTIONS)
    return _PROGRAMS[rule]


def collect_rules(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every (path, rule) in the schema; path like '.spec.gpu' ('' = root)."""
    found = [(path, r) for r in schema.get("x-kubernetes-validations", [])]
    for name, sub in schema.get("properties", {}).items():
        found.extend(collect_rules(sub, f"{path}.{name}"))
    if "items" in schema:
        found.extend(collect_rules(schema["items"], f"{path}[]"))
    return found


def cel_failures(schema: dict[str, Any], obj: Any) -> list[str]:
    """Evaluate every x-kubernetes-validations rule against obj (defaults applied); return messages of
    rules that evaluate to false (or fail to evaluate, which the API server also reports)."""
    obj = apply_defaults(schema, obj)
    failures: list[str] = []

    def walk(sch: dict[str, Any], value: Any) -> None:
        for rule in sch.get("x-kubernetes-validations", []):
            try:
                ok = cel_program(rule["rule"]).evaluate({"self": celpy.json_to_cel(value)})
            except Exception as e:  # CELEvalError is returned or raised depending on the path
                ok = e
            if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
                failures.append(rule.get("message", rule["rule"]))
        if isinstance(value, dict):
            for name, sub in sch.get("properties", {}).items():
                if name in value:
                    walk(sub, value[name])
        elif isinstance(value, list) and "items" in sch:
            for item in value:
                walk(sch["items"], item)

    walk(schema, obj)
    return failures


def crd_schema(crd: dict[str, Any], version: str = "v1alpha2") -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(version)


def crd_verdict(obj: dict[str, Any]) -> tuple[bool, list[str]]:
    """What the API server would say about a Model: schema (after defaulting) first, then CEL rules."""
    schema = model_schema()
    defaulted = apply_defaults(schema, obj)
    validator = jsonschema.Draft202012Validator(to_json_schema(schema))
    errors = [e.message for e in validator.iter_errors(defaulted)]
    if errors:  # the API server reports schema errors first; CEL only runs on schema-valid objects
        return False, errors
    fails = cel_failures(schema, obj)
    return not fails, fails


_MODEL_SCHEMA: dict[str, Any] = {}


def model_schema() -> dict[str, Any]:
    if not _MODEL_SCHEMA:
        _MODEL_SCHEMA.update(crd_schema(load_docs(DAEMONSET / "base" / "crd-models.yaml")[0]))
    return _MODEL_SCHEMA
