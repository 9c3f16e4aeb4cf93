"""Structured logging: console renderer on a terminal, JSON lines in a cluster (or FLEXINFER_LOG_FORMAT)."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog once per process. fmt: 'json' | 'console' | None (auto)."""
    level_name = (level or os.environ.get("FLEXINFER_LOG_LEVEL", "info")).upper()
    fmt = fmt or os.environ.get("FLEXINFER_LOG_FORMAT")
    if fmt is None:
        in_cluster = "KUBERNETES_SERVICE_HOST" in os.environ
        fmt = "json" if in_cluster or not sys.stderr.isatty() else "console"
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
