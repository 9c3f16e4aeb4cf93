"""A bound pod's VRAM does not depend on when it became Ready, nor on when the agent sampled.

The API stores conditions' lastTransitionTime with whole seconds, so a pod stamped Ready at 12:00:00 may have
become Ready at 12:00:00.9. Reservations used to end on the first agent sample after Ready (+1 s for the stamp):
too early for a model loaded on the first request (overcommit), too late for one already in the agent's numbers
(counted twice). Now the pod's estimate is committed while it is bound, and the policy takes min(observed free,
total - committed): no time is guessed, so neither the stamp nor the sample times matter."""

from __future__ import annotations

from flexinfer.extender.cache import NodeCache
from flexinfer.extender.pod import requirements_from_dict
from flexinfer.extender.policy import PolicyConfig
from flexinfer.extender.service import Extender

from flexinfer.state import parse_rfc3339

from .ext_fixtures import gpu, model_pod, node_obj

STAMP = "2026-11-30T12:00:00Z"
T0 = parse_rfc3339(STAMP)
assert T0 is not None


def ready_bound(est: int, uid: str, node: str) -> dict:
    p = model_pod(est, "vllm", 1, uid=uid, name=uid, node_name=node)
    return {**p, "status": {"phase": "Running",
                            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": STAMP}]}}


def test_commitment_ignores_ready_stamps_and_sample_times() -> None:
    clock = [T0 - 1]
    cache = NodeCache(clock=lambda: clock[0])
    cache.replace_all([node_obj("n1", [gpu(0, total=24576, free=24000)], T0 - 2, resource_version="1")])
    ext = Extender(cache, PolicyConfig(max_state_age_seconds=1e9), clock=lambda: clock[0])
    ext.on_pod_event("MODIFIED", ready_bound(7000, "p", "n1"))
    second = requirements_from_dict(model_pod(20000, "vllm", 1, uid="q", name="q"))
    for k, (observed, free) in enumerate([(T0 + 0.5, 24000), (T0 + 1.5, 24000), (T0 + 600, 24000),
                                          (T0 + 0.5, 17000), (T0 + 1.5, 17000), (T0 + 600, 17000)]):
        clock[0] = observed + 0.1
        cache.upsert(node_obj("n1", [gpu(0, total=24576, free=free)], observed, resource_version=str(k + 2)))
        ext.refresh_gauges()
        v = ext.explain(second, ["n1"])[0]
        # loaded or not, inside the stamped second or long after: 24576 - 7000 = 17576 at most, never 24000
        assert not v.feasible and v.detail.startswith("needs 20000 MiB on one GPU; best GPU has 17"), (k, v.detail)
        assert cache.committed_mib("n1") == {0: 7000}
