"""An in-process controller replica on a real etcd, over real gRPC, and a fake agent played
by the test through the AgentGateway service (register, a session stream with heartbeats and
inventory), so that the controller's side can be observed without running guests."""

from __future__ import annotations

import asyncio
import itertools
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc, controller_pb2_grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.server import ControllerConfig, ControllerReplica

GUEST = Path(__file__).parents[2] / "guests" / "hello.c"
T = TypeVar("T")


@dataclass
class Api:
    address: str
    stub: controller_pb2_grpc.ControllerStub
    gateway: agent_pb2_grpc.AgentGatewayStub
    replica: ControllerReplica
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the replica's event loop (to reach into it)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def replica(etcd_endpoint: str, prefix: str = "", lease_ttl: int = 2,
            **settings: Any) -> Iterator[Api]:
    """Start a replica on its own event loop thread; yield it; stop it. Without TLS
    settings (ControllerConfig fields) it is plaintext, as with --insecure."""
    loop = asyncio.new_event_loop()
    started: queue.Queue[ControllerReplica | BaseException] = queue.Queue()
    config = ControllerConfig(listen="127.0.0.1:0", etcd_endpoints=[etcd_endpoint],
                              prefix=prefix or f"/api-{time.time_ns()}", lease_ttl=lease_ttl,
                              **settings)

    async def main() -> None:
        try:
            r = ControllerReplica(config)
            await r.start()
        except BaseException as err:  # reported to the test thread
            started.put(err)
            return
        started.put(r)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop)
    r = started.get(timeout=30)
    assert isinstance(r, ControllerReplica), r
    channel = grpc.insecure_channel(r.address)
    agent_channel = grpc.insecure_channel(r.agent_address)
    yield Api(r.address, controller_pb2_grpc.ControllerStub(channel),
              agent_pb2_grpc.AgentGatewayStub(agent_channel), r, loop)
    channel.close()
    agent_channel.close()
    asyncio.run_coroutine_threadsafe(r.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    return err.code(), err.details()  # type: ignore[attr-defined]


def compile_hello(out_dir: Path) -> bytes:
    out = out_dir / "hello"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out), str(GUEST)], check=True)
    return out.read_bytes()


def push(stub: controller_pb2_grpc.ControllerStub, name: str, content: bytes,
         fmt: str = "elf") -> pb.Image:
    def messages() -> Iterator[cpb.PushImageRequest]:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(name=name, format=fmt,
                                                          size_bytes=len(content)))
        for i in range(0, len(content), 1 << 20):
            yield cpb.PushImageRequest(chunk=content[i : i + (1 << 20)])

    return stub.PushImage(messages())


def create(api: Api, name: str, **spec: object) -> pb.Partition:
    fields = {"image": "hello", **spec}
    return api.stub.CreatePartition(
        cpb.CreatePartitionRequest(name=name, spec=pb.PartitionSpec(**fields))  # type: ignore[arg-type]
    )


def get(api: Api, name: str) -> pb.Partition:
    return api.stub.GetPartition(cpb.GetPartitionRequest(name=name))


def wait_for(fn: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while not (got := fn()):
        assert time.monotonic() < deadline, f"{what} not met in time"
        time.sleep(0.02)
    return got


class FakeAgent:
    """Registers a node and holds its session open, sending heartbeats (with the inventory
    the test sets) like a real agent; records what the controller sends."""

    def __init__(self, api: Api, name: str, vcpus: int, memory: int,
                 beat_s: float = 0.2) -> None:
        self.name = name
        reply = api.gateway.Register(apb.RegisterRequest(
            node=name,
            spec=pb.NodeSpec(vcpus=vcpus, memory_bytes=memory, arches=[pb.ARCH_X86_64]),
        ))
        self.reply = reply
        self.outgoing: queue.Queue[apb.AgentMessage | None] = queue.Queue()
        self.outgoing.put(apb.AgentMessage(hello=apb.SessionHello(node=name,
                                                                  session_id=reply.session_id)))
        self.received: list[apb.ControllerMessage] = []
        self.inventory: dict[str, int] = {}  # what it claims to run: name -> epoch
        self.beating = True
        self._seq = itertools.count(1)
        self._closed = threading.Event()
        self.call = api.gateway.Session(iter(self.outgoing.get, None))
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._beat, args=(beat_s,), daemon=True).start()

    def _read(self) -> None:
        try:
            for msg in self.call:
                self.received.append(msg)
        except grpc.RpcError:
            pass

    def _beat(self, every: float) -> None:
        while not self._closed.wait(every):
            if self.beating:
                self.heartbeat()

    def heartbeat(self) -> int:
        seq = next(self._seq)
        self.outgoing.put(apb.AgentMessage(heartbeat=apb.Heartbeat(
            seq=seq, running=len(self.inventory),
            inventory=[apb.InventoryEntry(name=n, epoch=e)
                       for n, e in sorted(self.inventory.items())])))
        return seq

    def report(self, report: apb.PartitionReport) -> None:
        """Send a report; the inventory follows it as a real agent's would (a copy runs
        from Starting until it reports an end)."""
        if not report.checkpoint:
            if report.phase in (pb.PARTITION_PHASE_STARTING, pb.PARTITION_PHASE_RUNNING,
                                pb.PARTITION_PHASE_PAUSED):
                self.inventory[report.name] = report.epoch
            elif self.inventory.get(report.name) == report.epoch:
                del self.inventory[report.name]
        self.outgoing.put(apb.AgentMessage(report=report))

    def acks(self) -> list[int]:
        return [m.ack.seq for m in list(self.received) if m.HasField("ack")]

    def commands(self, name: str) -> list[apb.PartitionCommand]:
        return [m.command for m in list(self.received)
                if m.HasField("command") and m.command.name == name]

    def assignments(self, name: str) -> list[apb.Assignment]:
        return [m.assign for m in list(self.received)
                if m.HasField("assign") and m.assign.name == name]

    def close(self) -> None:
        self._closed.set()
        self.outgoing.put(None)
        self.call.cancel()
