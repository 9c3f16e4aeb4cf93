"""FlexInfer Model controller (``flexinfer-controller``).

Modules (pure ones have no I/O and are table-tested):

- ``groups`` (pure): shared GPU groups + serverless scale-to-zero decision. Groups are namespace-scoped,
  keyed ``(namespace, spec.gpu.shared)``; rules (incl. "never preempt for a member that cannot be placed")
  and the three demand tiers are in its docstring.
- ``phases`` (pure): phase Idle/Pending/Loading/Ready/Preempted/Failed, a human message, and the
  ``Ready``/``Scheduled`` conditions as metav1.Condition (lastTransitionTime kept while the status is
  unchanged; reasons CamelCase).
- ``placement`` (pure): would a Model's pod be placed now (optionally after a group holder releases its
  GPU)? kube-scheduler's node filters + the extender's ``policy.evaluate`` over the controller's node cache;
  the vendor for ``spec.gpu.vendor: auto``.
- ``cache`` (pure): the cache PVC's access mode, the prefetch and cache-check Jobs, ``status.cache``.
- ``loading`` (pure): ``status.loadingSubstage`` / ``loadingProgressAt`` from the pod and the node's GPU
  memory.
- ``ownership`` (pure): whose object is it (never adopt or modify what the Model does not own).
- ``backends``: the container of a Model from the backend registry (``flexinfer.backends``), with the
  operator's image overrides; ``spec.image`` overrides the image.
- ``render`` (pure): Model -> Deployment (Recreate for GPU models, <= 1 replica, pod contract
  annotations, GPU resource, tolerations, cache volume, /dev/shm, no service-account token, RuntimeClass
  and scheduler name from the operator, startup probe sized to coldStartTimeout), Service (serviceLabels
  as labels, litellm.flexinfer.ai/* annotations), cache PVC; owner references.
- ``reconcile``: ``Controller(api).reconcile_once()`` (synchronous full pass) and
  ``reconcile(snapshot, keys)`` (used by the loop); writes only what differs, status only when changed
  (never touches ``status.lastActiveTime``, which the proxy owns).
- ``activation``: ``activate(api, namespace, name)`` sets ``flexinfer.ai/activate`` to the current time.
- ``leader``: Lease (coordination.k8s.io/v1) leader election as client-go does it; deploy 1 replica with
  strategy Recreate, the Lease makes a second replica (or a laptop run) safe.
- ``main``: informers + work queue + periodic resync; the click CLI.
- ``metrics``: flexinfer_model_phase, flexinfer_model_transitions_total,
  flexinfer_model_swap_duration_seconds, flexinfer_group_preemptions_total (own registry; the Model's
  namespace is the label ``model_namespace``).
"""
