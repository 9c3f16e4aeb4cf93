"""gRPC `flexinfer.api.v1.SchedulerExtender` (Filter, Prioritize, Explain) over the same Extender core.

A malformed request (no pod, pod_json that is not a Pod, junk requirements) is answered with
the `error` field set (status OK), mirroring the HTTP `Error` field; a junk *annotation* in a
well-formed pod behaves exactly as over HTTP (every node unresolvable, reason names it).
Empty `node_names` means every node in the extender's cache.
The standard gRPC health service reports SERVING once the node cache is ready.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flexinfer import logs
from flexinfer.api.v1 import scheduler_extender_pb2 as pb
from flexinfer.api.v1 import scheduler_extender_pb2_grpc as pb_grpc
from flexinfer.errors import ParseError

from .grpc_edge import SERVICE_NAME, Guard, server_options
from .grpc_wire import RequestDecoder, ResponseEncoder, ScheduleRequest
from .listener import Limits, connection_cap
from .pod import VENDOR_AUTO, PodFields, PodRequirements, requirements_from_json, validate
from .policy import NodeVerdict
from .service import Extender
from .tls import TlsFiles, grpc_server_credentials

log = logs.get("flexinfer.extender.grpc")


def requirements_from_proto(m: pb.PodRequirements) -> PodRequirements:
    """Validate the typed proto fields with the same rules as the pod annotations (`pod.validate`)."""
    return validate(PodFields(m.namespace, m.name, m.uid, True, model=m.model, vram_estimate=m.vram_estimate_mib,
                              backend=m.backend, vendor=m.vendor or VENDOR_AUTO, jit_policy=m.jit_policy,
                              preferred_archs=tuple(m.preferred_archs), gpu_count=m.gpu_count))


def requirements_to_proto(r: PodRequirements) -> pb.PodRequirements:
    return pb.PodRequirements(
        namespace=r.namespace, name=r.name, uid=r.uid, model=r.model, backend=r.backend, vendor=r.vendor,
        vram_estimate_mib=r.vram_estimate_mib, gpu_count=r.gpu_count, jit_policy=r.jit_policy,
        preferred_archs=list(r.preferred_archs),
    )


def requirements_from_source(src: pb.PodSource) -> PodRequirements:
    """Raises ParseError when the source is missing or malformed."""
    which = src.WhichOneof("source")
    if which == "pod_json":
        return requirements_from_json(src.pod_json)
    if which == "requirements":
        return requirements_from_proto(src.requirements)
    raise ParseError("pod", None, "pod.pod_json (a v1.Pod as JSON) or pod.requirements")


def verdict_to_proto(v: NodeVerdict) -> pb.NodeVerdict:
    return pb.NodeVerdict(node=v.node, feasible=v.feasible, unresolvable=v.unresolvable, reason=v.reason,
                          detail=v.detail, score=v.score, gpu=v.gpu_text)


class SchedulerExtenderServicer(pb_grpc.SchedulerExtenderServicer):
    """Filter and Prioritize take `grpc_wire.ScheduleRequest` and answer wire bytes (see `method_handlers`):
    repeated node lists are not parsed again and shared answers are not encoded again."""

    def __init__(self, extender: Extender, max_nodes: int | None = None) -> None:
        self.extender = extender
        self.encoder = ResponseEncoder()
        self.requests = RequestDecoder(intern=extender.name_intern, max_request_names=max_nodes)

    def _names(self, request: ScheduleRequest) -> Sequence[str]:
        return request.node_names if request.node_names else sorted(self.extender.cache.names())

    def _requirements(self, verb: str, request: ScheduleRequest) -> PodRequirements | str:
        """The pod's requirements, or the error text for the response's `error` field (counted)."""
        if request.error:
            error = request.error
        else:
            try:
                return requirements_from_source(request.pod)
            except ParseError as e:
                error = str(e)
        self.extender.metrics.bad_requests.labels(verb, "grpc").inc()
        return error

    def Filter(self, request: ScheduleRequest, context: grpc.ServicerContext) -> bytes:
        req = self._requirements("filter", request)
        if isinstance(req, str):
            return pb.FilterResponse(error=req).SerializeToString()
        out = self.extender.filter(req, self._names(request))
        return self.encoder.filter_bytes(out.passed, out.failed, out.unresolvable)

    def Prioritize(self, request: ScheduleRequest, context: grpc.ServicerContext) -> bytes:
        req = self._requirements("prioritize", request)
        if isinstance(req, str):
            return pb.PrioritizeResponse(error=req).SerializeToString()
        out = self.extender.prioritize_scores(req, self._names(request))
        return self.encoder.prioritize_bytes(out.names, out.scores)

    def Explain(self, request: pb.ExplainRequest, context: grpc.ServicerContext) -> pb.ExplainResponse:
        try:
            req = requirements_from_source(request.pod)
        except ParseError as e:
            self.extender.metrics.bad_requests.labels("explain", "grpc").inc()
            return pb.ExplainResponse(error=str(e))
        verdicts = self.extender.explain(req, list(request.node_names) or None)
        return pb.ExplainResponse(requirements=requirements_to_proto(req),
                                  verdicts=[verdict_to_proto(v) for v in verdicts])


def method_handlers(servicer: SchedulerExtenderServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers: Filter and Prioritize with `RequestDecoder.decode` as the deserializer and no
    serializer (the servicer answers bytes); Explain with the generated message types."""
    def scheduling(behavior: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=servicer.requests.decode)

    return {"Filter": scheduling(servicer.Filter), "Prioritize": scheduling(servicer.Prioritize),
            "Explain": grpc.unary_unary_rpc_method_handler(
                servicer.Explain, request_deserializer=pb.ExplainRequest.FromString,
                response_serializer=pb.ExplainResponse.SerializeToString)}


class GrpcServer:
    def __init__(self, server: grpc.Server, port: int, health_servicer: health.HealthServicer,
                 stop_event: threading.Event, read_only_port: int = 0) -> None:
        self.server = server
        self.port = port
        self.read_only_port = read_only_port
        self.health = health_servicer
        self._stop_event = stop_event

    def stop(self, grace: float | None = 1.0) -> None:
        self._stop_event.set()
        self.server.stop(grace).wait()


def serve_grpc(extender: Extender, host: str = "127.0.0.1", port: int = 0, *, tls_cert: str | None = None,
               tls_key: str | None = None, client_ca: str | None = None, read_only_port: int | None = None,
               limits: Limits | None = None, replicas: Any = None, listeners: int = 1, max_workers: int = 8,
               health_interval_s: float = 1.0) -> GrpcServer:
    """Start the gRPC server (port 0 = pick a free one; see .port).

    TLS like the HTTP port (extender.tls): with `client_ca`, a verified client certificate is required on
    `port`. `read_only_port` (None = none; 0 = pick one) adds a plaintext port on which Explain and health
    answer and Filter/Prioritize need mutual TLS (UNAUTHENTICATED). Limits and caller policy:
    extender.grpc_edge."""
    limits = limits or Limits()
    files = TlsFiles(tls_cert, tls_key, client_ca).check()
    guard = Guard(limits, extender.metrics, mutual=files.mutual, replicas=replicas)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="extender-grpc"),
                         interceptors=[guard], maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
                         options=server_options(limits, connection_cap(limits.max_connections, listeners)))
    handlers = method_handlers(SchedulerExtenderServicer(extender, limits.max_nodes))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    addr = f"{host}:{port}"
    bound = server.add_secure_port(addr, grpc_server_credentials(files)) if files.enabled \
        else server.add_insecure_port(addr)
    if not bound:
        raise OSError(f"cannot bind gRPC port {addr}")
    ro_bound = 0
    if read_only_port is not None:
        ro_bound = server.add_insecure_port(f"{host}:{read_only_port}")
        if not ro_bound:
            raise OSError(f"cannot bind gRPC read-only port {host}:{read_only_port}")
    stop_event = threading.Event()

    def set_health() -> None:
        ready, _ = extender.cache.readiness()
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        health_servicer.set("", status)
        health_servicer.set(SERVICE_NAME, status)

    def update_health() -> None:
        while not stop_event.wait(health_interval_s):
            set_health()

    set_health()
    server.start()
    threading.Thread(target=update_health, name="extender-grpc-health", daemon=True).start()
    log.info("extender_grpc_started", address=f"{host}:{bound}", tls=files.enabled, mutual_tls=files.mutual,
             read_only_port=ro_bound or None)
    return GrpcServer(server, bound, health_servicer, stop_event, ro_bound)
