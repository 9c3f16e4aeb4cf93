"""What the proxy reads from an OpenAI request body, and the max_tokens clamp (pure).

Only the routing facts are decoded (``model``, ``stream``, ``max_tokens``, ``max_completion_tokens``);
every other field is skipped by the decoder and the original bytes are forwarded untouched. The body is
re-encoded only when the clamp changes it.

The clamp: a client that sends ``max_tokens`` equal to (or above) the model's context window leaves no
room for the prompt, and servers such as vLLM then reject every request (400: the prompt plus
max_tokens exceed the model length). At the forward seam the proxy lowers such a value to
``context - margin`` (margin 512 tokens by default, ``--clamp-margin-tokens``) and counts it. Values
below the window are never touched: a request that is merely long is the server's business.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
from flexinfer.controller.backends import container_for

from flexinfer import backends
from flexinfer.model import Model

TOKEN_FIELDS = ("max_tokens", "max_completion_tokens")


class BadBody(ValueError):
    """The body is not something the proxy can route (the message is safe to show the client)."""


class _Facts(msgspec.Struct):
    model: Any = None
    stream: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None


_facts = msgspec.json.Decoder(_Facts)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    model: str
    stream: bool
    max_tokens: int | None  # the larger of max_tokens / max_completion_tokens when an integer


def read_facts(body: bytes) -> RequestFacts:
    """Decode the routing facts; BadBody when the body is not a JSON object with a string ``model``."""
    if not body:
        raise BadBody("the request body is empty; send a JSON object with a \"model\" field")
    try:
        f = _facts.decode(body)
    except msgspec.ValidationError:
        raise BadBody("the request body must be a JSON object") from None
    except msgspec.DecodeError as e:
        raise BadBody(f"the request body is not valid JSON ({_short(e)})") from None
    except RecursionError:
        raise BadBody("the request body is not valid JSON (nested too deeply)") from None
    if f.model is None:
        raise BadBody("the request has no \"model\" field; name a Model or one of its serviceLabels")
    if not isinstance(f.model, str) or not f.model.strip():
        raise BadBody("\"model\" must be a non-empty string")
    if len(f.model) > 253:
        raise BadBody("\"model\" is longer than 253 characters")
    tokens = [v for v in (f.max_tokens, f.max_completion_tokens) if isinstance(v, int) and not isinstance(v, bool)]
    return RequestFacts(f.model, f.stream is True, max(tokens) if tokens else None)


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 120 else text[:117] + "..."


def clamp_limit(context_tokens: int, margin_tokens: int) -> int:
    """The largest max_tokens the proxy forwards for a context window (at least 1)."""
    return max(1, context_tokens - margin_tokens)


def clamp_body(body: bytes, context_tokens: int | None, margin_tokens: int) -> tuple[bytes, int | None]:
    """(body to forward, the original value when clamped else None). Touches max_tokens and
    max_completion_tokens only when an integer >= the context window."""
    if not context_tokens or context_tokens <= 0:
        return body, None
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body, None
    if not isinstance(doc, dict):
        return body, None
    limit = clamp_limit(context_tokens, margin_tokens)
    original: int | None = None
    for field in TOKEN_FIELDS:
        v = doc.get(field)
        if isinstance(v, int) and not isinstance(v, bool) and v >= context_tokens:
            original = v if original is None else max(original, v)
            doc[field] = limit
    if original is None:
        return body, None
    return msgspec.json.encode(doc), original


# --- the context window a Model's server runs with ------------------------------------------------

_MLC_WINDOW = re.compile(r"(?:^|;)context_window_size=(\d+)")


def context_window_tokens(model: Model) -> int | None:
    """The context window the Model's server is started with, read from the container the backend registry
    renders for it (``--max-model-len`` for vLLM, ``-c`` for llama.cpp, ``OLLAMA_CONTEXT_LENGTH``, MLC's
    ``context_window_size`` override), so the proxy and the pod never disagree. None when the Model does not
    set one (the server's own default applies and the proxy does not clamp)."""
    if model.backend not in backends.REGISTRY:
        return None
    c = container_for(model, "cpu" if not model.needs_gpu else "nvidia")
    args = c.args
    for flag in ("--max-model-len", "-c", "--ctx-size"):
        if flag in args:
            i = args.index(flag)
            if i + 1 < len(args):
                return _positive(args[i + 1])
    if "OLLAMA_CONTEXT_LENGTH" in c.env:
        return _positive(c.env["OLLAMA_CONTEXT_LENGTH"])
    if "--overrides" in args:
        i = args.index("--overrides")
        m = _MLC_WINDOW.search(args[i + 1]) if i + 1 < len(args) else None
        if m:
            return _positive(m.group(1))
    return None


def _positive(text: str) -> int | None:
    text = str(text)
    if text.isascii() and text.isdigit() and 0 < len(text) < 10:
        return int(text)
    return None
