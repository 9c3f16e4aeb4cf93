"""The e2e tier: FlexInfer against a real control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok) built from hack/k8s by `bash hack/k8s/build.sh` on first use.

One control plane per session (`control_plane`), with the homelab fleet registered as kwok Nodes, one
`flexinfer-agent --fake-gpus` per node, the extender and kube-scheduler with the shipped configuration
(`homelab`). Scenarios that need their own pods take a fresh namespace (`ns`) that is emptied afterwards,
so the GPU memory its pods took is given back before the next test.

If the binaries are missing and cannot be built, every test here ERRORS with the build's output: the tier
never skips (CI must prove it ran). Reuse from other tiers: `control_plane` gives a started
`flexinfer.sim.controlplane.ControlPlane` (admin client `cp.admin_api()`, `cp.spawn(...)`,
`cp.service_account_kubeconfig(ns, name)`), `homelab` a `flexinfer.sim.realcluster.RealCluster`
(`start_controller(...)`, `start_extender()`, agents, the GPU load simulator).
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flexinfer import kube
from flexinfer.fleet import default_fleet_path, load_fleet
from flexinfer.sim.controlplane import ControlPlane
from flexinfer.sim.realcluster import RealCluster

from .helpers import delete_namespace_and_wait

_COUNTER = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A started control plane (no scheduler yet); stopped at the end of the session, whatever happens."""
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"),
                      verbosity=int(os.environ.get("FLEXINFER_E2E_VERBOSITY", "2")))
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def homelab(control_plane: ControlPlane) -> Iterator[RealCluster]:
    """The homelab fleet on the control plane: shipped CRD/RBAC, kwok Nodes, agents, extender and the
    default kube-scheduler with the shipped extender configuration."""
    cluster = RealCluster(control_plane, load_fleet(default_fleet_path()))
    try:
        cluster.start()
        cluster.start_scheduler("default")
        yield cluster
    finally:
        control_plane.stop_scheduler()
        cluster.stop()


@pytest.fixture
def api(control_plane: ControlPlane) -> Any:
    return control_plane.admin_api()


@pytest.fixture
def ns(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test; deleted (pods gone, GPU memory back) afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().removeprefix("test_"))[:40].strip("-")
    name = f"e2e-{next(_COUNTER)}-{base}"[:63].rstrip("-")
    control_plane.create_namespace(name)
    yield name
    delete_namespace_and_wait(control_plane.admin_api(), name)


@pytest.fixture
def wait_for() -> Any:
    """wait_for(what, fn, timeout_s=60): poll until fn() is truthy; fails the test with `what` otherwise."""

    def wait(what: str, fn: Any, timeout_s: float = 60.0, interval_s: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = fn()
            except kube.KubeError as e:
                last = e
            else:
                if last:
                    return last
            time.sleep(interval_s)
        pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})")

    return wait
