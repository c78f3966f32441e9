"""The node agent: registers its node, keeps one session with a controller (reconnecting
with back-off, failing over between controller addresses), runs what it is assigned."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from node_agent.fencing import Fence
from node_agent.hostcheck import HostUnsupported, check_host, host_memory_bytes, host_vcpus
from node_agent.images import ImageCache, ImagePullError
from node_agent.supervisor import Supervisor

log = logging.getLogger(__name__)
VERSION = "0.1.0"
ARCH_ENUM = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0
PULL_RETRY_S = 30.0
# Codes a pull sees when its controller goes away mid-stream, not when the image is bad.
PULL_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL})


@dataclass
class AgentConfig:
    controllers: list[str]
    name: str
    vcpus: int | None = None
    memory_bytes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    run_dir: Path = Path("/var/lib/viridian/agent")
    address: str = ""


class Agent:
    def __init__(self, config: AgentConfig, arches: list[str]) -> None:
        if not config.controllers:
            raise ValueError("at least one controller address is required")
        self.config = config
        self.arches = arches
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.images = ImageCache(run_dir / "images")
        self.supervisor = Supervisor(run_dir, self.images, self._pull, self._pull_state,
                                     config.name)
        self._gateway: agent_pb2_grpc.AgentGatewayStub | None = None
        self._outgoing: asyncio.Queue[apb.AgentMessage | None] = asyncio.Queue()
        self._consoles: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self.fence = Fence(self.supervisor, run_dir / "workers" / "watchdog")

    def spec(self) -> pb.NodeSpec:
        c = self.config
        return pb.NodeSpec(
            address=c.address,
            vcpus=c.vcpus or host_vcpus(),
            memory_bytes=c.memory_bytes or host_memory_bytes(),
            arches=[ARCH_ENUM[a] for a in self.arches],
            labels=c.labels,
            agent_version=VERSION,
            host_arch=os.uname().machine,
        )

    async def run(self) -> None:
        await self.supervisor.start()
        self.supervisor.send = self._send
        fencing = asyncio.create_task(self.fence.run(), name="fence")
        backoff = BACKOFF_MIN_S
        index = 0
        try:
            while not self._stop.is_set():
                address = self.config.controllers[index % len(self.config.controllers)]
                connected = await self._session(address)
                if self._stop.is_set():
                    break
                if connected:
                    backoff = BACKOFF_MIN_S
                else:
                    index += 1
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                delay = backoff * random.uniform(0.5, 1.0)
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            fencing.cancel()
            await self.supervisor.close()

    def stop(self) -> None:
        self._stop.set()
        self._outgoing.put_nowait(None)

    def _send(self, msg: apb.AgentMessage) -> None:
        self._outgoing.put_nowait(msg)

    async def _messages(self, hello: apb.AgentMessage) -> AsyncIterator[apb.AgentMessage]:
        yield hello
        while True:
            msg = await self._outgoing.get()
            if msg is None:
                return
            yield msg

    async def _session(self, address: str) -> bool:
        """One session: register, stream until it breaks. True if it was established."""
        established = False
        async with grpc.aio.insecure_channel(address) as channel:
            gw = agent_pb2_grpc.AgentGatewayStub(channel)
            self._gateway = gw
            # Reports queued while disconnected are in the registration; start afresh.
            self._outgoing = asyncio.Queue()
            try:
                reply = await gw.Register(
                    apb.RegisterRequest(
                        node=self.config.name, spec=self.spec(),
                        running=self.supervisor.reports(),
                    ),
                    timeout=5.0,
                )
            except grpc.aio.AioRpcError as err:
                log.warning("cannot register with %s: %s %s", address, err.code().name,
                            err.details())
                if err.code() in (grpc.StatusCode.INVALID_ARGUMENT,):
                    self._stop.set()
                    raise SystemExit(f"the controller refused this node: {err.details()}") from err
                return False
            self.fence.contact(reply.lease_ttl_seconds)
            hello = apb.AgentMessage(
                hello=apb.SessionHello(node=self.config.name, session_id=reply.session_id)
            )
            call = gw.Session(self._messages(hello))
            beat = asyncio.create_task(self._heartbeat(reply.heartbeat_interval_ms / 1000.0))
            log.info("session established with %s (lease TTL %ds)", address,
                     reply.lease_ttl_seconds)
            established = True
            try:
                async for msg in call:
                    if msg.HasField("ack"):
                        # Only an answer to our own heartbeat proves the controller hears
                        # us now; it keeps our lease on the same evidence, so fencing here
                        # and eviction there stay ordered.
                        self.fence.contact()
                    self._handle(msg)
            except grpc.aio.AioRpcError as err:
                if not self._stop.is_set():
                    log.warning("session with %s ended: %s %s", address, err.code().name,
                                err.details())
            finally:
                beat.cancel()
                for task in self._consoles.values():
                    task.cancel()
                self._consoles.clear()
                self._gateway = None
        return established

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._send(apb.AgentMessage(
                heartbeat=apb.Heartbeat(running=self.supervisor.running_count())))

    def _handle(self, msg: apb.ControllerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            self.supervisor.assign(msg.assign)
        elif kind == "command":
            self.supervisor.command(msg.command)
        elif kind == "console":
            rid = msg.console.request_id
            task = asyncio.create_task(self.supervisor.console(msg.console))
            self._consoles[rid] = task
            task.add_done_callback(self._console_done(rid))
        elif kind == "console_cancel":
            cancelled = self._consoles.pop(msg.console_cancel.request_id, None)
            if cancelled is not None:
                cancelled.cancel()
        elif kind == "stdin":
            self.supervisor.stdin(msg.stdin)
        elif kind == "state":
            asyncio.create_task(self.supervisor.send_state(msg.state))

    async def _pull_state(self, name: str, ref: pb.StateRef) -> AsyncIterator[bytes]:
        gw = self._gateway
        if gw is None:
            raise ImagePullError("not connected to a controller")
        stream: Any = gw.PullState(apb.PullStateRequest(name=name, state=ref))
        try:
            async for chunk in stream:
                yield chunk.data
        except grpc.aio.AioRpcError as err:
            raise ImagePullError(f"pull of the saved state failed: {err.details()}") from err

    def _console_done(self, rid: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._consoles.pop(rid, None)

        return done

    async def _pull(self, image: pb.Image) -> bytes:
        """Pull image content through the controller. A lost controller (killed, restarted,
        failed over) is not the image's fault: retry on the next session for a while instead
        of failing the partition."""
        deadline = asyncio.get_running_loop().time() + PULL_RETRY_S
        delay = BACKOFF_MIN_S
        while True:
            gw = self._gateway
            err_text = "not connected to a controller"
            if gw is not None:
                parts = []
                try:
                    stream: Any = gw.PullImage(apb.PullImageRequest(digest=image.digest))
                    async for chunk in stream:
                        parts.append(chunk.data)
                    return b"".join(parts)
                except grpc.aio.AioRpcError as err:
                    err_text = err.details() or err.code().name
                    if err.code() not in PULL_TRANSIENT:
                        raise ImagePullError(f"pull of {image.name} failed: {err_text}") from err
            if asyncio.get_running_loop().time() + delay > deadline:
                raise ImagePullError(f"pull of {image.name} failed: {err_text}")
            log.info("pull of %s: %s; retrying in %.1fs", image.name, err_text, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)


def run_agent(config: AgentConfig) -> int:
    logging.basicConfig(
        level=os.environ.get("VIRIDIAN_LOG", "INFO"),
        format=f"%(asctime)s agent/{config.name} %(levelname)s %(name)s: %(message)s",
    )
    try:
        arches = check_host()
    except HostUnsupported as err:
        log.error("refusing to start: %s", err)
        return 1

    async def main() -> None:
        agent = Agent(config, arches)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop)
        await agent.run()

    try:
        asyncio.run(main())
    except SystemExit as err:
        log.error("%s", err)
        return 1
    return 0
