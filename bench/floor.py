"""The do-nothing floor: the extender's server stack (starlette on uvicorn) and its request decoding
(`flexinfer.extender.wire.args_decoder`, msgspec) with no policy — every node passes.

`policy latency / floor latency` is the policy's own cost over what any Python extender on this stack
pays just to receive, decode and answer a request of that size.
"""

from __future__ import annotations

import msgspec
from flexinfer.extender import wire
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _decode(body: bytes) -> wire.ExtenderArgs | None:
    try:
        return wire.args_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def _filter(request: Request) -> Response:
    args = _decode(await request.body())
    if args is None:
        return Response(wire.encoder.encode(wire.ErrorBody(Error="bad request")), 400,
                        media_type="application/json")
    nodes = args.the_nodes
    if nodes is not None:
        out = wire.ExtenderFilterResult(Nodes=wire.NodeListOut(metadata={}, items=nodes.items or []), NodeNames=None,
                                        FailedNodes={}, FailedAndUnresolvableNodes={}, Error="")
    else:
        raw = args.the_names
        names = wire.names_of(raw) if raw is not None else []
        out = wire.ExtenderFilterResult(Nodes=None, NodeNames=names, FailedNodes={},
                                        FailedAndUnresolvableNodes={}, Error="")
    return Response(wire.encoder.encode(out), media_type="application/json")


async def _prioritize(request: Request) -> Response:
    args = _decode(await request.body())
    if args is None:
        return Response(b"[]", 400, media_type="application/json")
    nodes = args.the_nodes
    if nodes is not None:
        names = [(wire.node_item_decoder.decode(raw).metadata or wire._NodeMeta()).name for raw in nodes.items or []]
    else:
        raw = args.the_names
        names = wire.names_of(raw) if raw is not None else []
    return Response(wire.encoder.encode([wire.HostPriority(Host=n, Score=0) for n in names]),
                    media_type="application/json")


async def _healthz(request: Request) -> Response:
    return Response(b"ok")


def create_app() -> Starlette:
    return Starlette(routes=[Route("/filter", _filter, methods=["POST"]),
                             Route("/prioritize", _prioritize, methods=["POST"]),
                             Route("/healthz", _healthz), Route("/readyz", _healthz)])


def serve_grpc_floor(port: int) -> object:
    """The gRPC do-nothing floor, served like the extender's Filter and Prioritize (bytes in, the request parsed
    by protobuf, the answer joined from cached wire pieces and handed to grpcio as bytes): every named node
    passing (Filter) with score 0 (Prioritize). Returns the started grpc.Server."""
    from concurrent import futures

    import grpc
    from flexinfer.extender.grpc_wire import ResponseEncoder

    from flexinfer.api.v1 import scheduler_extender_pb2 as pb

    encoder = ResponseEncoder()

    def filter_(raw: bytes, context: object) -> bytes:
        return encoder.filter_response(list(pb.FilterRequest.FromString(raw).node_names), {}, {})

    def prioritize(raw: bytes, context: object) -> bytes:
        names = list(pb.PrioritizeRequest.FromString(raw).node_names)
        return encoder.prioritize_response(names, [0] * len(names))

    handlers = {"Filter": grpc.unary_unary_rpc_method_handler(filter_),
                "Prioritize": grpc.unary_unary_rpc_method_handler(prioritize)}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flexinfer.api.v1.SchedulerExtender",
                                                                          handlers),))
    if not server.add_insecure_port(f"127.0.0.1:{port}"):
        raise OSError(f"cannot bind gRPC port {port}")
    server.start()
    return server
