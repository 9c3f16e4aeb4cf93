"""OpenAI-compatible wire shapes the proxy produces itself: error bodies and the model list (pure).

Errors follow the OpenAI API: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status
carrying the class (400 invalid_request_error, 401 authentication_error, 404 model_not_found, 413,
429 queue full, 502/504 upstream, 503 model unavailable). Clients built on the official SDKs read
``error.message`` and retry 429/503 honouring ``Retry-After``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from .catalog import ModelState

_enc = msgspec.json.Encoder()

# error.type by HTTP status (what the OpenAI API uses for each class)
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> bytes:
    """The OpenAI error object as JSON bytes."""
    return _enc.encode({"error": {"message": message, "type": _TYPES.get(status, "api_error"),
                                  "param": param, "code": code}})


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds (at least 1), or no header."""
    if seconds is None or not math.isfinite(seconds):
        return {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def model_list(states: Mapping[str, ModelState]) -> bytes:
    """``GET /v1/models``: every Model (id = its name) and every serviceLabel (id = the label, an alias of the
    Models carrying it), each with the phase a client would get. Extra facts live under ``flexinfer``."""
    return _enc.encode({"object": "list", "data": _entries(states)})


def model_entry(name: str, states: Mapping[str, ModelState]) -> bytes | None:
    """``GET /v1/models/{id}`` for a Model name or a label, None when unknown."""
    entry = next((e for e in _entries(states) if e["id"] == name), None)
    return None if entry is None else _enc.encode(entry)


def _entries(states: Mapping[str, ModelState]) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = []
    aliases: dict[str, list[ModelState]] = {}
    for name in sorted(states):
        m = states[name]
        data.append(_entry(name, m.created_unix, {
            "kind": "model", "phase": m.phase, "serving": bool(m.endpoints), "serviceLabels": list(m.labels),
            **({"loadingSubstage": m.substage} if m.substage else {}),
            **({"contextWindowTokens": m.context_tokens} if m.context_tokens else {}),
        }))
        for lab in m.labels:
            aliases.setdefault(lab, []).append(m)
    for lab in sorted(aliases):
        if lab in states:
            continue  # a Model's own name wins over a label of the same text
        ms = aliases[lab]
        data.append(_entry(lab, min(m.created_unix for m in ms), {
            "kind": "alias", "models": [m.name for m in ms], "phase": best_phase(m.phase for m in ms),
            "serving": any(m.endpoints for m in ms)}))
    return data


_PHASE_ORDER = ("Ready", "Loading", "Pending", "Preempted", "Idle", "Failed")


def best_phase(phases: Iterable[str]) -> str:
    """The most useful phase among an alias's Models (Ready first, Failed last)."""
    ps = list(phases)
    return min(ps, key=lambda p: _PHASE_ORDER.index(p) if p in _PHASE_ORDER else len(_PHASE_ORDER), default="Idle")


def _entry(ident: str, created: int, extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": ident, "object": "model", "created": created, "owned_by": "flexinfer", "flexinfer": extra}
