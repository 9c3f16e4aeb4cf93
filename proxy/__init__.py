"""FlexInfer proxy (``flexinfer-proxy``): the OpenAI-compatible front door of a namespace's Models.

Modules (pure ones have no I/O and are table-tested):

- ``routing`` (pure): which Model serves a request for a name or service label; serving > on its way >
  activate the idle one that can win its GPU group and be placed; 503 with reasons otherwise.
- ``body`` (pure): the routing facts of a request body, the ``max_tokens`` clamp, the context window a
  Model's server runs with.
- ``openai`` (pure): OpenAI error bodies and the ``/v1/models`` listing.
- ``catalog``: Models and the ready endpoints of their Services, fed by informers.
- ``fit``: the extender's policy asked in process: can an idle Model be placed.
- ``activity``: ``status.lastActiveTime`` from traffic (batched) and activation writes (rate-limited).
- ``server``: the aiohttp handlers: limits, queueing, forwarding and streaming, metrics, health.
- ``runner``: listeners, flush loop, graceful shutdown (in the caller's loop or on a thread).
- ``main``: ``build`` (wiring to a cluster) and the click CLI.
- ``metrics``: ``flexinfer_proxy_*`` on an own registry.
"""
