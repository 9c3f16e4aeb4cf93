"""FlexInfer Model controller (``flexinfer-controller``).

Modules (pure ones have no I/O and are table-tested):

- ``groups`` (pure): shared GPU groups + serverless scale-to-zero decision. Groups are namespace-scoped,
  keyed ``(namespace, spec.gpu.shared)``; rules and the three demand tiers are in its docstring.
- ``phases`` (pure): phase Idle/Pending/Loading/Ready/Preempted/Failed, a human message, and the
  ``Ready``/``Scheduled`` conditions (lastTransitionTime kept while the status is unchanged).
- ``backends``: image (per vendor), command/args/env, port and health path per backend; ``spec.image``
  overrides the image.
- ``render`` (pure): Model -> Deployment (Recreate for GPU models, <= 1 replica, pod contract
  annotations, GPU resource, tolerations, cache volume, startup probe sized to coldStartTimeout),
  Service (serviceLabels as labels, litellm.flexinfer.ai/* annotations), cache PVC; owner references.
  GPU vendor ``auto`` resolves to one vendor's resource (nodeSelector vendor, else the most common GPU
  vendor among nodes) — see its docstring.
- ``reconcile``: ``Controller(api).reconcile_once()`` (synchronous full pass) and
  ``reconcile(snapshot, keys)`` (used by the loop); writes only what differs, status only when changed
  (never touches ``status.lastActiveTime``, which the proxy owns).
- ``activation``: ``activate(api, namespace, name)`` sets ``flexinfer.ai/activate`` to the current time.
- ``leader``: Lease (coordination.k8s.io/v1) leader election; deploy 1 replica with strategy Recreate,
  the Lease makes a second replica (or a laptop run) safe.
- ``main``: informers + work queue + periodic resync; the click CLI.
- ``metrics``: flexinfer_model_phase, flexinfer_model_transitions_total,
  flexinfer_model_swap_duration_seconds, flexinfer_group_preemptions_total (own registry).
"""
