"""The installed version, one source for `--version`, the `_info` metrics and the API client's User-Agent."""

from __future__ import annotations

import functools
import importlib.metadata

DIST_NAME = "flexinfer"


@functools.cache
def version() -> str:
    """The installed distribution's version ('0+unknown' when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def user_agent(component: str) -> str:
    """User-Agent for API requests, e.g. `flexinfer-agent/0.2.0`."""
    return f"{component}/{version()}"
