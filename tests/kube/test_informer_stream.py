"""The informer's watch stream reader: events split anywhere across reads, several in one read, a last line
without its newline, blank lines and junk lines."""

from __future__ import annotations

import json
from typing import Any

from flexinfer.kube import informer as inf


class _Resp:
    status = 200

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, *_args: Any, **_kwargs: Any):
        yield from self.chunks

    def release_conn(self) -> None:
        pass


def _event(etype: str, name: str, rv: int) -> bytes:
    return json.dumps({"type": etype, "object": {"metadata": {"name": name, "namespace": "ns",
                                                              "resourceVersion": str(rv)}}}).encode()


def test_watch_lines_across_and_within_reads(monkeypatch) -> None:
    lines = [_event("ADDED", "a", 1), _event("MODIFIED", "a", 2), _event("ADDED", "b", 3), _event("DELETED", "a", 4)]
    stream = b"\n".join(lines[:2]) + b"\n\n" + b"not json\n" + b"\n".join(lines[2:])  # no final newline
    cuts = [5, len(lines[0]) + 1, len(lines[0]) + 30, len(stream) - 7]
    chunks = [stream[i:j] for i, j in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    monkeypatch.setattr(inf, "open_response", lambda *_a, **_k: _Resp(chunks))
    seen: list[tuple[str, str]] = []
    informer = inf.Informer(None, "pods", lambda t, o: seen.append((t, o["metadata"]["name"])))
    assert informer._watch() is True
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert informer.resource_version == "4"
    assert [i["metadata"]["name"] for i in informer.items()] == ["b"]


def test_lists_are_bounded_by_the_read_timeout_watches_by_the_watch_timeout(monkeypatch) -> None:
    timeouts: dict[str, Any] = {}

    def fake_request(_api: Any, _method: str, _path: str, *, query: Any = None, timeout_s: Any = None,
                     accept: Any = None) -> dict:
        timeouts["list"] = timeout_s
        return {"items": [], "metadata": {"resourceVersion": "7"}}

    def fake_open(*_a: Any, timeout_s: Any = None, **_k: Any) -> _Resp:
        timeouts["watch"] = timeout_s
        return _Resp([])

    monkeypatch.setattr(inf, "request", fake_request)
    monkeypatch.setattr(inf, "open_response", fake_open)
    informer = inf.Informer(None, "nodes", lambda *_: None, read_timeout_s=20.0, watch_timeout_s=300)
    informer._list()
    informer._watch()
    assert timeouts == {"list": (5.0, 20.0), "watch": (5.0, 305.0)}  # a hung list is not waited on for 305 s
