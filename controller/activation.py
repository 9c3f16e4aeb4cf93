"""Request activation of a Model (used by ``flexinfer activate MODEL`` and the demo).

Sets the ``flexinfer.ai/activate`` annotation (keys.MODEL_ACTIVATE) to the current RFC 3339 UTC time with
microseconds: a retry requested within the same second a Model failed (condition times are whole seconds, the
failure's rounded down) is still later than the failure, so it is not mistaken for the activation that failed.
The controller counts it as traffic at that time: the model scales up (preempting per its shared-group
rules) and stays up for its idle timeout unless newer traffic (status.lastActiveTime) extends it.
Re-activating just moves the time forward; the annotation is never removed by the controller.
"""

from __future__ import annotations

import time

import kubernetes.client

from flexinfer import keys, kube, state

rfc3339 = state.rfc3339  # one formatter for every timestamp FlexInfer writes


def activate(api: kubernetes.client.ApiClient, namespace: str, name: str, now: float | None = None) -> dict:
    """Patch the annotation; returns the Model. Raises kube.KubeError (``.not_found`` if no such Model)."""
    at = state.rfc3339_micro(time.time() if now is None else now)  # sub-second: see the module doc
    try:
        return kube.patch_model_annotations(api, namespace, name, {keys.MODEL_ACTIVATE: at})
    except kube.KubeError as e:
        if e.not_found:
            raise kube.KubeError(f"Model {namespace}/{name} not found", e.status, e.reason) from None
        raise
