"""Structured logging: console renderer on a terminal, JSON lines in a cluster (or FLEXINFER_LOG_FORMAT)."""

from __future__ import annotations

import importlib
import logging
import os
import sys


def resolve_format(fmt: str | None = None) -> str:
    """'json' | 'console': the explicit fmt, else $FLEXINFER_LOG_FORMAT, else json in a cluster or off a tty."""
    fmt = fmt or os.environ.get("FLEXINFER_LOG_FORMAT")
    if fmt is None:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        fmt = "json" if in_cluster or not sys.stderr.isatty() else "console"
    return fmt


def _import_structlog() -> None:
    """Import structlog; when logs will be JSON, without `rich` (~6 MiB RSS in the agent).

    structlog's package __init__ imports structlog.dev and structlog.tracebacks, which import `rich` when it
    is installed (for pretty console tracebacks). JSON logging never uses it, so while structlog is imported
    `rich` is masked (a None entry in sys.modules makes `import rich` raise ImportError, which structlog
    handles); the mask is removed right after, so the CLI's own `import rich` still works. Our processor
    chain formats exceptions with format_exc_info before any renderer, so console output is the same either
    way.
    """
    if "structlog" in sys.modules or "rich" in sys.modules or resolve_format() != "json":
        return
    sys.modules["rich"] = None  # type: ignore[assignment]
    try:
        importlib.import_module("structlog")
    finally:
        if sys.modules.get("rich", "") is None:
            del sys.modules["rich"]


_import_structlog()

import structlog  # noqa: E402


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog once per process. fmt: 'json' | 'console' | None (auto)."""
    level_name = (level or os.environ.get("FLEXINFER_LOG_LEVEL", "info")).upper()
    fmt = resolve_format(fmt)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
