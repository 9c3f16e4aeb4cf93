"""Limits and caller policy of the gRPC SchedulerExtender service (the HTTP side: extender.listener/http).

* Sizes, counts, times (`server_options`): a message over `Limits.max_body_bytes` is refused by gRPC itself
  (RESOURCE_EXHAUSTED), metadata (headers) over 16 KiB likewise; at most `Limits.max_concurrent_rpcs` RPCs at
  once (RESOURCE_EXHAUSTED beyond), a connection cap below the fd limit, a TLS/HTTP2 handshake timeout, and
  idle connections closed.
* `Guard` (a server interceptor) per call: more than `Limits.max_nodes` node names -> RESOURCE_EXHAUSTED;
  `pod_json` nested deeper than the JSON decoder allows -> the `error` field, like any malformed pod (it used
  to escape as UNKNOWN); with mutual TLS configured, Filter and Prioritize (they reserve GPU memory) need a
  verified client certificate: on the plaintext read-only port they answer UNAUTHENTICATED, Explain and
  health stay open there. Rejections are counted in `flexinfer_extender_bad_requests_total{verb,status}`
  with the gRPC status name.
* A follower replica forwards Filter and Prioritize to the Lease holder (extender.replicas), the request bytes
  as they came and the holder's answer bytes back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from flexinfer import logs
from flexinfer.api.v1 import scheduler_extender_pb2 as pb

from .listener import Limits

log = logs.get("flexinfer.extender.grpc")

SERVICE_NAME = "flexinfer.api.v1.SchedulerExtender"
SCHEDULING = ("Filter", "Prioritize")
RESPONSES: dict[str, type] = {"Filter": pb.FilterResponse, "Prioritize": pb.PrioritizeResponse,
                              "Explain": pb.ExplainResponse}
FORWARDED_KEY = "x-flexinfer-forwarded"


def server_options(limits: Limits, max_connections: int) -> list[tuple[str, Any]]:
    ms = 1000
    return [
        ("grpc.max_receive_message_length", limits.max_body_bytes),
        ("grpc.max_metadata_size", limits.max_head_bytes),
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.server_handshake_timeout_ms", int(limits.head_timeout_s * ms)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * ms)),
        ("grpc.max_concurrent_streams", 16),
        ("grpc.so_reuseport", 0),
    ]


def too_deep(what: str = "pod.pod_json") -> str:
    import sys

    return (f"{what}: JSON nested too deeply (the decoder stops at about {sys.getrecursionlimit()} levels; "
            "a v1.Pod needs about 20)")


class Guard(grpc.ServerInterceptor):
    """Per-call limits and the caller policy for the SchedulerExtender methods (see the module doc)."""

    def __init__(self, limits: Limits, metrics: Any, *, mutual: bool, replicas: Any = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.mutual = mutual
        self.replicas = replicas

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        prefix = f"/{SERVICE_NAME}/"
        if handler is None or not details.method.startswith(prefix) or handler.unary_unary is None:
            return handler
        method = details.method[len(prefix):]
        inner = handler.unary_unary

        as_bytes = handler.response_serializer is None  # Filter/Prioritize answer wire bytes (grpc_server)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            return self._call(method, inner, request, context, details, as_bytes)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)

    def _reject(self, method: str, context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.metrics.bad_requests.labels(method.lower(), code.name).inc()
        log.warning("extender_bad_request", verb=method.lower(), status=code.name, error=message[:300])
        context.abort(code, message)

    def _call(self, method: str, inner: Callable, request: Any, context: grpc.ServicerContext,
              details: grpc.HandlerCallDetails, as_bytes: bool) -> Any:
        scheduling = method in SCHEDULING
        if scheduling and self.mutual and not context.peer_identities():
            self._reject(method, context, grpc.StatusCode.UNAUTHENTICATED,
                         f"{method} reserves GPU memory: it needs a client certificate (mutual TLS on --grpc-port); "
                         "this port serves Explain and health only")
        names = getattr(request, "node_names", ())
        if len(names) > self.limits.max_nodes:
            self._reject(method, context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"node_names has {len(names)} entries; the limit is {self.limits.max_nodes} per request "
                         "(--max-nodes-per-request)")
        if scheduling and self.replicas is not None:
            forwarded = any(k == FORWARDED_KEY for k, _ in (details.invocation_metadata or ()))
            answer = self.replicas.forward_grpc(method, request.raw, forwarded)
            if answer is not None:
                code, response = answer
                if code is not None:
                    context.abort(code, response)
                return response
        try:
            return inner(request, context)
        except RecursionError:
            self.metrics.bad_requests.labels(method.lower(), "grpc").inc()
            message = too_deep()
            log.warning("extender_bad_request", verb=method.lower(), status="grpc", error=message)
            response = RESPONSES[method](error=message)
            return response.SerializeToString() if as_bytes else response
