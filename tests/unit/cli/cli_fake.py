"""An in-process fake Controller: real gRPC on 127.0.0.1:0, state in dicts.

It implements just the RPCs the CLI calls, with the behaviour the CLI assumes of the real
controller (see the CLI's report): start -> Running at once, logs end with eof and turn the
partition Off with `exit_code`, watches push every change.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from viridian.v1 import controller_pb2 as c
from viridian.v1 import controller_pb2_grpc, types_pb2

from controller.cli.credentials import save_cluster
from controller.security.pki import CONTROLLER_NAME, issue, make_ca

Phase = types_pb2.PartitionPhase


def now_ts(ago: float = 0.0) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(int(time.time() - ago))
    return ts


def make_node(name: str = "node-1", vcpus: int = 4, memory: int = 8 << 30,
              **labels: str) -> types_pb2.Node:
    return types_pb2.Node(
        name=name,
        spec=types_pb2.NodeSpec(address="10.0.0.1:7000", vcpus=vcpus, memory_bytes=memory,
                                arches=[types_pb2.ARCH_X86_64], labels=labels,
                                host_arch="x86_64"),
        status=types_pb2.NodeStatus(state=types_pb2.NODE_STATE_READY, allocated_vcpus=1,
                                    allocated_memory_bytes=64 << 20, partitions=1,
                                    allocatable_vcpus=vcpus * 4,
                                    allocatable_memory_bytes=memory,
                                    registered_at=now_ts(3600)),
        revision=5,
    )


def make_partition(name: str = "web", phase: int = Phase.PARTITION_PHASE_RUNNING,
                   **kw: Any) -> types_pb2.Partition:
    status = types_pb2.PartitionStatus(phase=phase, node="node-1", epoch=42,
                                       created_at=now_ts(90), arch=types_pb2.ARCH_X86_64)
    for key in ("reason", "exit_code", "has_exit_code", "restarts"):
        if key in kw:
            setattr(status, key, kw.pop(key))
    spec = types_pb2.PartitionSpec(image="hello", vcpus=1, memory_bytes=64 << 20, **kw)
    return types_pb2.Partition(name=name, spec=spec, status=status, revision=7)


def _copy(image: types_pb2.Image) -> types_pb2.Image:
    out = types_pb2.Image()
    out.CopyFrom(image)
    return out


def make_explanation() -> types_pb2.PlacementExplanation:
    ok = types_pb2.FilterResult
    return types_pb2.PlacementExplanation(
        partition="web",
        chosen_node="node-2",
        summary="1/2 nodes available: 1 insufficient memory",
        verdicts=[
            types_pb2.NodeVerdict(node="node-1", passed=False, filters=[
                ok(name="cpu", passed=True, detail="need 1, free 15 of 16"),
                ok(name="memory", passed=False, reason_code="InsufficientMemory",
                   detail="need 8Gi, free 6Gi of 16Gi"),
            ]),
            types_pb2.NodeVerdict(node="node-2", passed=True, chosen=True, total=0.8, filters=[
                ok(name="cpu", passed=True), ok(name="memory", passed=True),
            ], scores=[types_pb2.ScoreResult(name="binpack", raw=0.8, weight=1.0,
                                             weighted=0.8)]),
        ],
    )


class FakeController(controller_pb2_grpc.ControllerServicer):
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.partitions: dict[str, types_pb2.Partition] = {}
        # keyed "name:tag", as the controller keeps one record per tag
        self.images: dict[str, types_pb2.Image] = {"hello:latest": types_pb2.Image(
            name="hello", tag="latest", digest="sha256:" + "ab" * 32, size_bytes=12345,
            arch=types_pb2.ARCH_X86_64, format="elf", created_at=now_ts(60))}
        self.image_pages: list[c.ListImagesRequest] = []
        self.image_page_size = 0            # > 0: pages of at most this many, whatever asked
        self.image_page_stuck = False       # a broken server: the same token, page after page
        self.delete_image_requests: list[c.DeleteImageRequest] = []
        self.nodes = {n.name: n for n in (make_node("node-1", zone="a"), make_node("node-2"))}
        self.events = [types_pb2.Event(id="1", time=now_ts(5), kind="Partition", object="web",
                                       type="Normal", reason="Scheduled",
                                       message="bound to node-1", source="controller")]
        self.pushed: list[c.PushImageRequest] = []
        self.stdin = bytearray()
        self.logs: list[bytes] = [b"hello\n", b"world\n"]
        self.log_times: list[float] = []      # when each of self.logs was written (marks)
        self.log_requests: list[c.PartitionLogsRequest] = []
        self.stats = c.StatsSnapshot()        # what WatchStats sends
        self.stats_requests: list[c.WatchStatsRequest] = []
        self.exit_code = 0
        self.start_phase: int = Phase.PARTITION_PHASE_RUNNING
        self.start_reason = ""
        self.drain_fails = False
        self.explain_requests: list[c.ExplainPlacementRequest] = []
        self.deleted: list[str] = []
        self.stop_requests: list[c.StopPartitionRequest] = []
        self.page_size = 500          # the server default of a list page
        self.page_tokens: list[str] = []  # the page_token of every list call, in order
        self.watches_end = False      # see end_watches()
        self.watches_opened = 0
        self.update_requests: list[c.UpdatePartitionRequest] = []
        self.controller_version: str | None = "0.1.0"  # None: an older one, no GetVersion

    def _page(self, items: list[Any], request: Any, context: Any) -> tuple[list[Any], str]:
        """One page of items as the real server pages: page_size (0 = the default), an
        opaque token ("@" + the next index here), "" after the last page."""
        self.page_tokens.append(request.page_token)
        start = 0
        if request.page_token:
            if not request.page_token.startswith("@"):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "invalid page_token")
            start = int(request.page_token[1:])
        end = start + (request.page_size or self.page_size)
        return items[start:end], f"@{end}" if end < len(items) else ""

    # -- helpers ------------------------------------------------------------------------------

    def _put(self, part: types_pb2.Partition) -> types_pb2.Partition:
        with self.lock:
            part.revision += 1
            self.partitions[part.name] = part
            self.lock.notify_all()
        return part

    def _find(self, name: str, context: grpc.ServicerContext) -> types_pb2.Partition:
        if name not in self.partitions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"partition '{name}' not found")
        return self.partitions[name]

    # -- partitions ---------------------------------------------------------------------------

    def CreatePartition(self, request: c.CreatePartitionRequest, context: Any) -> Any:
        if request.name in self.partitions:
            context.abort(grpc.StatusCode.ALREADY_EXISTS,
                          f"partition '{request.name}' already exists")
        if not self._images_for(request.spec.image):
            context.abort(grpc.StatusCode.NOT_FOUND, f"image '{request.spec.image}' not found")
        running = request.spec.desired_state == types_pb2.DESIRED_STATE_RUNNING
        phase = self.start_phase if running else Phase.PARTITION_PHASE_OFF
        part = types_pb2.Partition(name=request.name, spec=request.spec, status=(
            types_pb2.PartitionStatus(phase=phase, created_at=now_ts(),
                                      reason=self.start_reason if running else "",
                                      node="node-1" if phase != Phase.PARTITION_PHASE_PENDING
                                      else "")))
        return self._put(part)

    def GetPartition(self, request: c.GetPartitionRequest, context: Any) -> Any:
        return self._find(request.name, context)

    def ListPartitions(self, request: c.ListPartitionsRequest, context: Any) -> Any:
        parts = [p for _, p in sorted(self.partitions.items())
                 if all(p.spec.labels.get(k) == v for k, v in request.label_selector.items())
                 and (not request.node or p.status.node == request.node)
                 and (not request.phase or p.status.phase == request.phase)
                 and p.name.startswith(request.name_prefix)]
        page, token = self._page(parts, request, context)
        return c.ListPartitionsResponse(partitions=page, next_page_token=token)

    def end_watches(self) -> None:
        """Watch streams end once they have sent every change made before this call."""
        with self.lock:
            self.watches_end = True
            self.lock.notify_all()

    def _watch(self, context: Any, current: Any, deleted: Any, put: Any) -> Iterator[Any]:
        """A watch as the controller's: every object first, then each change (by revision),
        until the client goes or end_watches() was called and nothing is left to send."""
        seen: dict[str, int] = {}
        with self.lock:  # what is there when the watch opens, before any later change
            first = list(current().values())
            seen.update((o.name, o.revision) for o in first)
            self.watches_opened += 1
            self.lock.notify_all()
        for o in first:
            yield put(o)
        while context.is_active():
            with self.lock:
                items = current()
                changed = [o for o in items.values() if seen.get(o.name) != o.revision]
                gone = [n for n in seen if n not in items]
                if not changed and not gone:
                    if self.watches_end:
                        return
                    self.lock.wait(0.05)
                    continue
            for name in gone:
                del seen[name]
                yield deleted(name)
            for o in changed:
                seen[o.name] = o.revision
                yield put(o)

    def WatchPartitions(self, request: c.WatchPartitionsRequest, context: Any) -> Iterator[Any]:
        E = c.PartitionWatchEvent
        yield from self._watch(
            context,
            lambda: {n: p for n, p in self.partitions.items()
                     if not request.name or n == request.name},
            lambda n: E(type=E.TYPE_DELETED, partition=types_pb2.Partition(name=n)),
            lambda p: E(type=E.TYPE_PUT, partition=p))

    def WatchNodes(self, request: c.WatchNodesRequest, context: Any) -> Iterator[Any]:
        E = c.NodeWatchEvent
        yield from self._watch(
            context,
            lambda: {n: node for n, node in self.nodes.items()
                     if not request.name or n == request.name},
            lambda n: E(type=E.TYPE_DELETED, node=types_pb2.Node(name=n)),
            lambda node: E(type=E.TYPE_PUT, node=node))

    def change_node(self, name: str, change: Any) -> None:
        """Change a node as the controller would (a new revision, watchers told)."""
        with self.lock:
            change(self.nodes[name])
            self.nodes[name].revision += 1
            self.lock.notify_all()

    def UpdatePartition(self, request: c.UpdatePartitionRequest, context: Any) -> Any:
        """As the controller: labels and restart any time, vCPUs/memory while Off only."""
        self.update_requests.append(request)
        with self.lock:
            old = self._find(request.name, context)
            if request.expected_revision and request.expected_revision != old.revision:
                context.abort(grpc.StatusCode.ABORTED, f"partition {request.name!r} changed")
            p = types_pb2.Partition()
            p.CopyFrom(old)
            for key in request.remove_labels:
                p.spec.labels.pop(key, None)
            p.spec.labels.update(request.set_labels)
            if request.restart_policy:
                p.spec.restart_policy = request.restart_policy
            if request.vcpus:
                p.spec.vcpus = request.vcpus
            if request.memory_bytes:
                p.spec.memory_bytes = request.memory_bytes
            if p.spec == old.spec:
                return old
            if ((p.spec.vcpus, p.spec.memory_bytes) != (old.spec.vcpus, old.spec.memory_bytes)
                    and old.status.phase != Phase.PARTITION_PHASE_OFF):
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"partition {request.name!r} is Running: vCPUs and memory "
                              "change only while it is Off or Saved")
            return self._put(p)

    def StartPartition(self, request: c.StartPartitionRequest, context: Any) -> Any:
        part = self._find(request.name, context)
        part.spec.desired_state = types_pb2.DESIRED_STATE_RUNNING
        part.status.phase = self.start_phase
        part.status.reason = self.start_reason
        return self._put(part)

    def StopPartition(self, request: c.StopPartitionRequest, context: Any) -> Any:
        self.stop_requests.append(request)
        part = self._find(request.name, context)
        part.spec.desired_state = types_pb2.DESIRED_STATE_OFF
        part.status.phase = Phase.PARTITION_PHASE_OFF
        return self._put(part)

    def DeletePartition(self, request: c.DeletePartitionRequest, context: Any) -> Any:
        self._find(request.name, context)
        with self.lock:
            del self.partitions[request.name]
            self.deleted.append(request.name)
            self.lock.notify_all()
        return c.DeletePartitionResponse()

    def PartitionLogs(self, request: c.PartitionLogsRequest, context: Any) -> Iterator[Any]:
        part = self._find(request.name, context)
        self.log_requests.append(request)
        offset = 0
        for i, data in enumerate(self.logs):
            chunk = c.LogChunk(data=data, offset=offset)
            if request.timestamps and i < len(self.log_times):
                chunk.marks.append(c.LogMark(time=self.log_times[i], offset=offset))
            yield chunk
            offset += len(data)
        if request.follow:
            part.status.phase = Phase.PARTITION_PHASE_OFF
            part.status.has_exit_code = True
            part.status.exit_code = self.exit_code
            self._put(part)
            yield c.LogChunk(offset=offset, eof=True)

    def SendStdin(self, request_iterator: Iterator[Any], context: Any) -> Any:
        for chunk in request_iterator:
            self.stdin.extend(chunk.data)
        return c.SendStdinResponse()

    # -- nodes --------------------------------------------------------------------------------

    def ListNodes(self, request: Any, context: Any) -> Any:
        page, token = self._page([n for _, n in sorted(self.nodes.items())], request, context)
        return c.ListNodesResponse(nodes=page, next_page_token=token)

    def GetNode(self, request: c.GetNodeRequest, context: Any) -> Any:
        if request.name not in self.nodes:
            context.abort(grpc.StatusCode.NOT_FOUND, f"node '{request.name}' not found")
        return self.nodes[request.name]

    def CordonNode(self, request: c.CordonNodeRequest, context: Any) -> Any:
        node = self.GetNode(c.GetNodeRequest(name=request.name), context)
        self.change_node(request.name, lambda n: setattr(n.spec, "cordoned", True))
        return node

    def UncordonNode(self, request: c.CordonNodeRequest, context: Any) -> Any:
        node = self.GetNode(c.GetNodeRequest(name=request.name), context)
        self.change_node(request.name, lambda n: setattr(n.spec, "cordoned", False))
        return node

    def DrainNode(self, request: c.DrainNodeRequest, context: Any) -> Iterator[Any]:
        yield c.DrainProgress(message="cordoned; moving 2 partitions", remaining=2)
        yield c.DrainProgress(message="web stopped", remaining=1)
        if self.drain_fails:
            op = types_pb2.NodeOperation(kind=types_pb2.NodeOperation.KIND_DRAIN,
                                         state=types_pb2.NodeOperation.STATE_FAILED,
                                         failed={"db": "0/2 nodes available"})
            yield c.DrainProgress(message="deadline passed: db still bound", remaining=1,
                                  failed=True, drain=op)
        else:
            yield c.DrainProgress(message="node is empty", remaining=0, done=True)

    def RemoveNode(self, request: c.RemoveNodeRequest, context: Any) -> Any:
        node = self.GetNode(c.GetNodeRequest(name=request.name), context)
        if node.status.state == types_pb2.NODE_STATE_READY:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"node {request.name!r} is alive (its agent holds a session)")
        bound = sorted(p.name for p in self.partitions.values()
                       if p.status.node == request.name)
        if bound and not request.force:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"node {request.name!r} still holds {len(bound)} partition(s)")
        with self.lock:
            del self.nodes[request.name]
            self.lock.notify_all()
        return c.RemoveNodeResponse(evicted=bound)

    # -- images -------------------------------------------------------------------------------

    def _images_for(self, ref: str) -> list[types_pb2.Image]:
        """The records a reference names: NAME[:TAG] one, NAME@DIGEST every tag of it."""
        if "@" in ref:
            name, _, digest = ref.partition("@")
            return [i for i in self.images.values() if i.name == name and i.digest == digest]
        name, _, tag = ref.partition(":")
        found = self.images.get(f"{name}:{tag or 'latest'}")
        return [found] if found is not None else []

    def PushImage(self, request_iterator: Iterator[Any], context: Any) -> Any:
        requests = list(request_iterator)
        self.pushed = requests
        header = requests[0].header
        size = sum(len(r.chunk) for r in requests[1:])
        image = types_pb2.Image(name=header.name, tag=header.tag or "latest",
                                digest=header.digest, size_bytes=size,
                                arch=types_pb2.ARCH_X86_64, entrypoint=header.entrypoint,
                                format=header.format, created_at=now_ts(),
                                entry_args=header.entry_args, cmd=header.cmd, env=header.env,
                                workdir=header.workdir, source=header.source)
        self.images[f"{image.name}:{image.tag}"] = image
        return image

    def ListImages(self, request: c.ListImagesRequest, context: Any) -> Any:
        self.image_pages.append(request)
        if self.image_page_stuck:
            return c.ListImagesResponse(next_page_token="same")
        images = []
        for _, image in sorted(self.images.items()):
            image = _copy(image)             # with its users filled in
            image.used_by.extend(sorted(
                p.name for p in self.partitions.values()
                if image in self._images_for(p.spec.image)))
            images.append(image)
        size = self.image_page_size or request.page_size or 500
        start = int(request.page_token or 0)
        page = images[start:start + size]
        more = start + size < len(images)
        return c.ListImagesResponse(images=page,
                                    next_page_token=str(start + size) if more else "")

    def DeleteImage(self, request: c.DeleteImageRequest, context: Any) -> Any:
        self.delete_image_requests.append(request)
        found = self._images_for(request.name)
        if not found:
            context.abort(grpc.StatusCode.NOT_FOUND, f"image '{request.name}' not found")
        users = [p.name for p in self.partitions.values()
                 if any(i in found for i in self._images_for(p.spec.image))]
        if users and not request.force:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"image '{request.name}' is used by partitions: {', '.join(users)}")
        for image in found:
            self.images.pop(f"{image.name}:{image.tag}", None)
        return c.DeleteImageResponse()

    def TagImage(self, request: c.TagImageRequest, context: Any) -> Any:
        found = self._images_for(request.source)
        if not found:
            context.abort(grpc.StatusCode.NOT_FOUND, f"image '{request.source}' not found")
        name, _, tag = request.target.partition(":")
        image = _copy(found[0])
        image.created_at.CopyFrom(now_ts())
        image.name, image.tag = name, tag or "latest"
        self.images[f"{image.name}:{image.tag}"] = image
        return image

    # -- events and placement -----------------------------------------------------------------

    def ListEvents(self, request: c.ListEventsRequest, context: Any) -> Any:
        page, token = self._page([e for e in self.events
                                  if not request.object or e.object == request.object],
                                 request, context)
        return c.ListEventsResponse(events=page, next_page_token=token)

    def WatchEvents(self, request: c.ListEventsRequest, context: Any) -> Iterator[Any]:
        yield from self.events  # a replay the CLI must skip
        yield types_pb2.Event(id="2", time=now_ts(), kind="Node", object="node-2",
                              type="Warning", reason="NodeLost", message="lease expired")
        with self.lock:  # open until the client goes, or end_watches()
            while context.is_active() and not self.watches_end:
                self.lock.wait(0.05)

    def GetVersion(self, request: c.GetVersionRequest, context: Any) -> Any:
        if self.controller_version is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        return c.GetVersionResponse(version=self.controller_version, api_version="viridian.v1")

    def ExplainPlacement(self, request: c.ExplainPlacementRequest, context: Any) -> Any:
        self.explain_requests.append(request)
        if request.name and request.name not in self.partitions:
            context.abort(grpc.StatusCode.NOT_FOUND, f"partition '{request.name}' not found")
        return make_explanation()


_CA = make_ca("cli-test")
_SERVER = issue(_CA, "controller:fake", [CONTROLLER_NAME])
CA_PEM = _CA.cert_pem


def _watch_stats(self: FakeController, request: c.WatchStatsRequest,
                 context: Any) -> Iterator[Any]:
    """One snapshot with once, else two (a refresh), then the stream ends."""
    self.stats_requests.append(request)
    for _ in range(1 if request.once else 2):
        yield self.stats


FakeController.WatchStats = _watch_stats  # type: ignore[method-assign]


def serve(fake: FakeController) -> tuple[grpc.Server, str]:
    """The fake over TLS from a test CA, its CA and a token saved where the CLI looks (as
    `viridian up` does), so the tests use the CLI's real secure path."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    controller_pb2_grpc.add_ControllerServicer_to_server(fake, server)
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(_SERVER.key_pem, _SERVER.cert_pem)]))
    server.start()
    address = f"127.0.0.1:{port}"
    save_cluster(address, _CA.cert_pem, "abcdef.0123456789abcdef0123456789abcdef")
    return server, address
