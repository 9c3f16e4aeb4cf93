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


def test_memo_skips_oversized_views_and_bounds_their_total_size() -> None:
    from flexinfer.nodes import view_bytes

    small = node_view("a", {"kubernetes.io/hostname": "a"}, {})
    huge = node_view("a", {f"example.com/l{i}": "x" * 63 for i in range(2000)}, {})  # ~260 KiB of labels
    assert view_bytes(huge) > 64 * 1024 > view_bytes(small)
    memo = NodeViewMemo(10)
    memo.put("a", "1", small)
    memo.put("a", "2", huge)  # too big to keep: parsed on every request instead; the stale version goes too
    assert memo.get("a", "2") is None and memo.get("a", "1") is None and len(memo) == 0 and memo.bytes == 0
    assert memo.oversized == 1
    # the total: at most max_bytes of views, least recently used dropped first
    memo = NodeViewMemo(100, max_bytes=3 * view_bytes(small) + 10)
    for n in "abcd":
        memo.put(n, "1", node_view(n, {"kubernetes.io/hostname": "a"}, {}))
    assert len(memo) == 3 and memo.get("a", "1") is None and memo.get("d", "1") is not None
    assert memo.bytes == sum(view_bytes(memo.get(n, "1")) for n in "bcd")  # type: ignore[arg-type]
    memo.put("b", "2", node_view("b", {"kubernetes.io/hostname": "a"}, {}))  # a new version replaces, not adds
    assert len(memo) == 3 and memo.bytes <= memo.max_bytes
