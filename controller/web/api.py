"""The JSON API under /api/v1: the Controller gRPC API over HTTP, for the web console and
for curl.

Every route calls the servicer method its gRPC twin calls (through the Gate: same tokens,
same role policy, same audit). Bodies are protobuf JSON (json_format: proto field names,
enum names); an error is {"code": "<gRPC code name>", "message": ...} with an HTTP status.
Streams: watches are Server-Sent Events (one protobuf JSON object per `data:` line); a
partition's logs are its console bytes, chunked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from viridian.v1 import controller_pb2 as cpb

from controller.web.gate import CallAborted, Gate, WebCall
from controller.web.pump import END, IDLE, Pump

__all__ = ["HTTP_STATUS", "JsonApi", "error_response"]

log = logging.getLogger(__name__)

#: gRPC code -> HTTP status (as grpc-gateway maps them).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}
MAX_BODY = 64 << 10
KEEPALIVE_S = 15.0   # an SSE comment this often keeps proxies from closing an idle stream
FIRST_ITEM_S = 0.5   # how long a stream handler waits for a first item before sending headers

#: POST /api/v1/partitions/NAME/ACTION -> (method, request type)
PARTITION_ACTIONS: dict[str, tuple[str, type[Message]]] = {
    "start": ("StartPartition", cpb.StartPartitionRequest),
    "stop": ("StopPartition", cpb.StopPartitionRequest),
    "pause": ("PausePartition", cpb.PartitionRef),
    "resume": ("ResumePartition", cpb.PartitionRef),
    "save": ("SavePartition", cpb.PartitionRef),
    "checkpoint": ("CreateCheckpoint", cpb.CheckpointRequest),
}
NODE_ACTIONS: dict[str, tuple[str, type[Message]]] = {
    "cordon": ("CordonNode", cpb.CordonNodeRequest),
    "uncordon": ("UncordonNode", cpb.CordonNodeRequest),
}


def to_data(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def to_json(message: Message) -> str:
    return json.dumps(to_data(message), separators=(",", ":"))


def error_response(code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response({"code": code.name, "message": message},
                             status=HTTP_STATUS.get(code, 500))


def _bad(message: str) -> CallAborted:
    return CallAborted(grpc.StatusCode.INVALID_ARGUMENT, message)


def _scalar(field: Any, text: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text.lower() in ("1", "true", "yes", ""):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise _bad(f"query parameter {field.name!r} must be true or false")
    return text  # json_format reads numbers and enum names from strings


def from_query(request: web.Request, message: Message, skip: tuple[str, ...] = ()) -> None:
    """Fill `message` from the query string (field=value; repeated fields repeat)."""
    fields = message.DESCRIPTOR.fields_by_name
    data: dict[str, Any] = {}
    for key in set(request.query.keys()):
        if key in skip:
            continue
        field = fields.get(key)
        if field is None or field.message_type is not None:
            raise _bad(f"unknown query parameter {key!r}")
        values = [_scalar(field, v) for v in request.query.getall(key)]
        repeated = getattr(field, "label", 0) == FieldDescriptor.LABEL_REPEATED
        data[key] = values if repeated else values[-1]
    try:
        json_format.ParseDict(data, message)
    except json_format.ParseError as err:
        raise _bad(f"bad query: {err}") from err


async def from_body(request: web.Request, message: Message) -> None:
    """Fill `message` from a JSON body (none or empty: defaults)."""
    if request.content_length and request.content_length > MAX_BODY:
        raise _bad(f"the body is larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise _bad(f"the body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return
    try:
        json_format.Parse(raw.decode("utf-8"), message)
    except (json_format.ParseError, UnicodeDecodeError) as err:
        raise _bad(f"bad JSON body: {err}") from err


def with_name(message: Message, name: str, field: str = "name") -> None:
    """The object named by the path; a body naming another is refused."""
    given = getattr(message, field)
    if given and given != name:
        raise _bad(f"the body names {given!r} but the path names {name!r}")
    setattr(message, field, name)


class JsonApi:
    """Routes of the JSON API, bound to a servicer and the gate in front of it."""

    def __init__(self, service: Any, gate: Gate) -> None:
        self.service = service
        self.gate = gate

    def routes(self) -> list[web.RouteDef]:
        r = "/api/v1"
        return [
            web.get(f"{r}/nodes", self.list_nodes),
            web.get(f"{r}/nodes/{{name}}", self.get_node),
            web.post(f"{r}/nodes/{{name}}/drain", self.drain_node),
            web.post(f"{r}/nodes/{{name}}/{{action}}", self.node_action),
            web.get(f"{r}/partitions", self.list_partitions),
            web.get(f"{r}/partitions/{{name}}", self.get_partition),
            web.get(f"{r}/partitions/{{name}}/events", self.partition_events),
            web.get(f"{r}/partitions/{{name}}/explain", self.explain),
            web.get(f"{r}/partitions/{{name}}/logs", self.logs),
            web.post(f"{r}/partitions/{{name}}/{{action}}", self.partition_action),
            web.get(f"{r}/events", self.list_events),
            web.get(f"{r}/watch/partitions", self.watch_partitions),
            web.get(f"{r}/watch/events", self.watch_events),
            web.get(f"{r}/watch/stats", self.watch_stats),
        ]

    # ---- calling the servicer -------------------------------------------------------------

    def _call(self, request: web.Request) -> WebCall:
        return WebCall(request.headers.get("Authorization", ""), request.remote or "?")

    async def unary(self, request: web.Request, rpc: str, message: Message) -> web.Response:
        call = self._call(request)
        principal = self.gate.admit(rpc, call, message)
        method: Callable[[Message, WebCall], Awaitable[Message]] = getattr(self.service, rpc)
        error: BaseException | None = None
        try:
            reply = await method(message, call)
        except BaseException as err:
            error = err
            raise
        finally:
            self.gate.audit(rpc, principal, call, message, error)
        return web.json_response(to_data(reply))

    async def stream(self, request: web.Request, rpc: str, message: Message,
                     sse: bool) -> web.StreamResponse:
        """Relay a server stream: SSE of protobuf JSON, or (sse=False, logs) the chunks'
        bytes. An error before the first item is a JSON error; after it, an SSE `error`
        event (or, for bytes, the end of the body)."""
        call = self._call(request)
        principal = self.gate.admit(rpc, call, message)
        method: Callable[[Message, WebCall], AsyncIterator[Message]] = getattr(
            self.service, rpc)
        pump: Pump[Message] = Pump(method(message, call))
        error: BaseException | None = None
        response: web.StreamResponse | None = None
        try:
            item = await pump.next(FIRST_ITEM_S)
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream" if sse else "application/octet-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no"})
            await response.prepare(request)
            while item is not END:
                if item is IDLE:
                    if sse:
                        await response.write(b": keepalive\n\n")
                elif sse:
                    await response.write(f"data: {to_json(item)}\n\n".encode())  # type: ignore[arg-type]
                else:
                    data = getattr(item, "data", b"")
                    if data:
                        await response.write(data)
                    if getattr(item, "eof", False):
                        break
                item = await pump.next(KEEPALIVE_S)
        except CallAborted as err:
            error = err
            if response is None:
                raise
            if sse:
                body = json.dumps({"code": err.status.name, "message": err.message})
                await response.write(f"event: error\ndata: {body}\n\n".encode())
        except BaseException as err:
            error = err
            raise
        finally:
            await pump.close()
            self.gate.audit(rpc, principal, call, message, error)
        assert response is not None  # an error before the headers was raised above
        await response.write_eof()
        return response

    # ---- nodes ------------------------------------------------------------------------

    async def list_nodes(self, request: web.Request) -> web.Response:
        message = cpb.ListNodesRequest()
        from_query(request, message)
        return await self.unary(request, "ListNodes", message)

    async def get_node(self, request: web.Request) -> web.Response:
        return await self.unary(request, "GetNode",
                                cpb.GetNodeRequest(name=request.match_info["name"]))

    async def node_action(self, request: web.Request) -> web.Response:
        action = NODE_ACTIONS.get(request.match_info["action"])
        if action is None:
            raise CallAborted(grpc.StatusCode.NOT_FOUND,
                              f"no node action {request.match_info['action']!r}")
        rpc, kind = action
        message = kind()
        await from_body(request, message)
        with_name(message, request.match_info["name"])
        return await self.unary(request, rpc, message)

    async def drain_node(self, request: web.Request) -> web.StreamResponse:
        """Start (or join) a drain: its first progress as JSON; with ?follow=true, every
        progress as SSE until the drain ends (leaving early ends nothing)."""
        follow = request.query.get("follow", "false").lower() in ("1", "true", "yes")
        message = cpb.DrainNodeRequest()
        await from_body(request, message)
        with_name(message, request.match_info["name"])
        if follow:
            return await self.stream(request, "DrainNode", message, sse=True)
        call = self._call(request)
        principal = self.gate.admit("DrainNode", call, message)
        pump: Pump[Message] = Pump(self.service.DrainNode(message, call))
        error: BaseException | None = None
        try:
            first = await pump.next(60.0)
        except BaseException as err:
            error = err
            raise
        finally:
            await pump.close()
            self.gate.audit("DrainNode", principal, call, message, error)
        if first is END or first is IDLE:
            return web.json_response({})
        return web.json_response(to_data(first))  # type: ignore[arg-type]

    # ---- partitions ---------------------------------------------------------------------

    async def list_partitions(self, request: web.Request) -> web.Response:
        message = cpb.ListPartitionsRequest()
        from_query(request, message)
        return await self.unary(request, "ListPartitions", message)

    async def get_partition(self, request: web.Request) -> web.Response:
        return await self.unary(request, "GetPartition",
                                cpb.GetPartitionRequest(name=request.match_info["name"]))

    async def partition_action(self, request: web.Request) -> web.Response:
        action = PARTITION_ACTIONS.get(request.match_info["action"])
        if action is None:
            raise CallAborted(grpc.StatusCode.NOT_FOUND,
                              f"no partition action {request.match_info['action']!r}")
        rpc, kind = action
        message = kind()
        await from_body(request, message)
        with_name(message, request.match_info["name"])
        return await self.unary(request, rpc, message)

    async def partition_events(self, request: web.Request) -> web.Response:
        message = cpb.ListEventsRequest()
        from_query(request, message, skip=("object",))
        message.object = request.match_info["name"]
        return await self.unary(request, "ListEvents", message)

    async def explain(self, request: web.Request) -> web.Response:
        return await self.unary(request, "ExplainPlacement",
                                cpb.ExplainPlacementRequest(name=request.match_info["name"]))

    async def logs(self, request: web.Request) -> web.StreamResponse:
        message = cpb.PartitionLogsRequest()
        from_query(request, message, skip=("name",))
        message.name = request.match_info["name"]
        return await self.stream(request, "PartitionLogs", message, sse=False)

    # ---- events and watches ---------------------------------------------------------------

    async def list_events(self, request: web.Request) -> web.Response:
        message = cpb.ListEventsRequest()
        from_query(request, message)
        return await self.unary(request, "ListEvents", message)

    async def watch_partitions(self, request: web.Request) -> web.StreamResponse:
        message = cpb.WatchPartitionsRequest()
        from_query(request, message)
        return await self.stream(request, "WatchPartitions", message, sse=True)

    async def watch_events(self, request: web.Request) -> web.StreamResponse:
        message = cpb.ListEventsRequest()
        from_query(request, message)
        return await self.stream(request, "WatchEvents", message, sse=True)

    async def watch_stats(self, request: web.Request) -> web.StreamResponse:
        message = cpb.WatchStatsRequest()
        from_query(request, message, skip=("local_only",))
        return await self.stream(request, "WatchStats", message, sse=True)
