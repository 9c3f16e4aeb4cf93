"""Shared fixtures: a local fake Kubernetes API server and a client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes.client
import pytest

from flexinfer.kube import api_client
from flexinfer.sim.fakeapi import FakeApiServer


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    """A started FakeApiServer on 127.0.0.1:<free port> (fresh state per test)."""
    with FakeApiServer() as server:
        yield server


@pytest.fixture
def kube_api(fake_api: FakeApiServer) -> Iterator[kubernetes.client.ApiClient]:
    """An ApiClient talking HTTP to ``fake_api``."""
    api = api_client(server=fake_api.url)
    try:
        yield api
    finally:
        api.close()
