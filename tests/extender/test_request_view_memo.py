"""Full-Nodes requests: parse_request_body reuses views from the bounded (name, resourceVersion) memo
(flexinfer.nodes.NodeViewMemo, tested in tests/core/test_core_nodes.py)."""

from __future__ import annotations

import json

from extender.cache import NodeCache
from extender.http import parse_request_body
from extender.service import Extender
from flexinfer import keys
from flexinfer.nodes import NodeViewMemo

from .ext_fixtures import gpu, model_pod, node_obj


def body(nodes: list[dict]) -> bytes:
    return json.dumps({"Pod": model_pod(), "Nodes": {"metadata": {}, "items": nodes}, "NodeNames": None}).encode()


def memo_extender(max_nodes: int = 100) -> Extender:
    ext = Extender(NodeCache())
    ext.request_views = NodeViewMemo(max_nodes)
    return ext


def test_parse_request_body_reuses_view_for_same_rv_and_reparses_a_new_rv() -> None:
    ext = memo_extender()
    first = parse_request_body(body([node_obj("n1", [gpu(free=24576)], resource_version="5")]), ext).views
    assert first is not None and first["n1"].state is not None
    again = parse_request_body(body([node_obj("n1", [gpu(free=24576)], resource_version="5")]), ext).views
    assert again is not None and again["n1"] is first["n1"]
    changed = parse_request_body(body([node_obj("n1", [gpu(free=1000)], resource_version="6")]), ext).views
    assert changed is not None and changed["n1"] is not first["n1"]
    assert changed["n1"].state is not None and changed["n1"].state.gpus[0].free_mib == 1000


def test_parse_request_body_without_memo_parses_every_time() -> None:
    ext = Extender(NodeCache())
    a = parse_request_body(body([node_obj("n1", [gpu()], resource_version="5")]), ext).views
    b = parse_request_body(body([node_obj("n1", [gpu()], resource_version="5")]), ext).views
    assert a is not None and b is not None and a["n1"] == b["n1"] and a["n1"] is not b["n1"]


def test_informer_cache_still_wins_and_is_not_filled_from_requests() -> None:
    ext = memo_extender()
    obj = node_obj("n1", [gpu()], resource_version="9")
    ext.cache.replace_all([obj])
    views = parse_request_body(body([obj]), ext).views
    assert views is not None and views["n1"] is ext.cache.get("n1")
    assert len(ext.request_views) == 0
    parse_request_body(body([node_obj("other", [gpu()], resource_version="3")]), ext)
    assert "other" not in ext.cache and len(ext.request_views) == 1


def test_junk_annotation_view_is_memoised_with_its_error_text() -> None:
    ext = memo_extender()
    junk = node_obj("bad", [gpu()], resource_version="2", extra_annotations={keys.ANN_GPU_STATE: "{nope"})
    for _ in range(2):
        views = parse_request_body(body([junk]), ext).views
        assert views is not None and keys.ANN_GPU_STATE in views["bad"].error
