"""flexinfer.nodes: the bounded (name, resourceVersion) memo of parsed NodeViews."""

from __future__ import annotations

import pytest

from flexinfer.nodes import NodeViewMemo
from flexinfer.state import node_view


def test_memo_same_rv_reuses_changed_rv_misses_empty_rv_never_kept() -> None:
    memo = NodeViewMemo(10)
    v1, v2 = node_view("a", {}, {}), node_view("a", {"x": "1"}, {})
    memo.put("a", "7", v1)
    assert memo.get("a", "7") is v1
    assert memo.get("a", "8") is None
    memo.put("a", "8", v2)  # one entry per name: the new version replaces the old
    assert memo.get("a", "8") is v2 and memo.get("a", "7") is None and len(memo) == 1
    memo.put("b", "", v1)
    assert memo.get("b", "") is None and len(memo) == 1
    assert (memo.hits, memo.misses) == (2, 2)


def test_memo_bound_drops_least_recently_used() -> None:
    memo = NodeViewMemo(3)
    for n in "abc":
        memo.put(n, "1", node_view(n, {}, {}))
    assert memo.get("a", "1") is not None  # a is now the most recently used
    memo.put("d", "1", node_view("d", {}, {}))
    assert len(memo) == 3
    assert memo.get("b", "1") is None
    assert all(memo.get(n, "1") is not None for n in "acd")
    for i in range(50):
        memo.put(f"n{i}", "1", node_view(f"n{i}", {}, {}))
    assert len(memo) == 3
    with pytest.raises(ValueError, match="max_nodes"):
        NodeViewMemo(0)
