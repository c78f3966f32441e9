"""The node agent: registers its node, keeps one session with a controller (session.py),
moving on to the next controller address after any failure, fences itself when contact
lapses (fencing.py), runs what it is assigned (supervisor.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller import logs
from controller.security.tls import Dialer, TlsConfig
from node_agent.clock import BootClock, Clock
from node_agent.fencing import Fence
from node_agent.health import AgentHealth
from node_agent.hostcheck import HostUnsupported, check_host, host_memory_bytes, host_vcpus
from node_agent.image_pull import BlobPuller
from node_agent.images import DEFAULT_LIMIT_BYTES, ImageCache
from node_agent.metrics import AgentMetrics, Worker
from node_agent.runtime.watchdog_file import WATCHDOG_FILE
from node_agent.saved_states import StateSender
from node_agent.session import ControllerSession, Outbox, RegisterRefused
from node_agent.state_fetch import StateFetcher
from node_agent.state_server import StateServer, StateSourceService
from node_agent.supervisor import Supervisor
from node_agent.timing import Timing

if TYPE_CHECKING:
    from controller.metrics_http import MetricsServer

log = logging.getLogger(__name__)
BULK = frozenset({"state", "console", "usage"})  # AgentMessage kinds that may wait behind the rest
VERSION = "0.1.0"
ARCH_ENUM = {"x86_64": pb.ARCH_X86_64, "i386": pb.ARCH_I386}
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 2.0


def round_pause(rounds: int, asked: float) -> float:
    """The pause after `rounds` whole rounds of controllers failed: doubling from
    BACKOFF_MIN_S to BACKOFF_MAX_S with jitter, or as long as a busy controller asked (it
    spread its answer already)."""
    backoff = min(BACKOFF_MIN_S * 2.0 ** (rounds - 1), BACKOFF_MAX_S)
    return max(backoff * random.uniform(0.5, 1.0), asked)


@dataclass
class AgentConfig:
    controllers: list[str]
    name: str
    vcpus: int | None = None
    memory_bytes: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    run_dir: Path = Path("/var/lib/viridian/agent")
    address: str = ""              # announced for saved-state transfers ("": the listen one)
    state_listen: str = "127.0.0.1:0"   # where StateSource listens (other nodes fetch here)
    tls: TlsConfig | None = None   # the node's certificate; None: plaintext (--insecure)
    image_cache_bytes: int = DEFAULT_LIMIT_BYTES  # --image-cache-size
    metrics_listen: str = ""       # HOST:PORT serving Prometheus /metrics ("": none)


class Agent:
    def __init__(self, config: AgentConfig, arches: list[str],
                 clock: Clock | None = None) -> None:
        if not config.controllers:
            raise ValueError("at least one controller address is required")
        self.config = config
        self.arches = arches
        self.clock: Clock = clock or BootClock()
        run_dir = config.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.images = ImageCache(run_dir / "images", config.image_cache_bytes)
        self.puller = BlobPuller(lambda: self._gateway)
        self._dialer = Dialer(config.tls)
        self.fetcher = StateFetcher(self._dialer, lambda: self._gateway, self._event)
        self.supervisor = Supervisor(run_dir, self.images, self._pull, self.fetcher.fetch,
                                     config.name)
        self.state_sender = StateSender(self.supervisor.states, self._session_send)
        self._ticket_key = b""   # from the controller at Register: checks state tickets
        self.state_source = StateSourceService(self.supervisor.states, config.name,
                                               lambda: self._ticket_key,
                                               check_caller=config.tls is not None)
        self.health = AgentHealth(self.serving)
        self.state_server = StateServer(self.state_source, config.state_listen, config.tls,
                                        self.health.servicer)
        self.metrics = AgentMetrics(config.name)
        self.metrics.watch(self._workers)
        self.supervisor.metrics = self.metrics
        self.metrics_server: MetricsServer | None = None
        if config.metrics_listen:
            from controller.metrics_http import MetricsServer

            self.metrics_server = MetricsServer(self.metrics.registry, config.metrics_listen)
        self._session_up = False   # registered with a controller in the current session
        self.announced = self.state_server.announced(config.address)
        self._gateway: agent_pb2_grpc.AgentGatewayStub | None = None
        self._outbox: Outbox | None = None
        self._consoles: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        # Before any worker can start: a never-contacted agent's deadline is in the past.
        self.fence = Fence(self.supervisor, run_dir / "workers" / WATCHDOG_FILE, self.clock)
        self.timing = Timing.for_ttl(self.fence.ttl)
        self.address = ""  # the controller of the current session ("" between sessions)

    def spec(self) -> pb.NodeSpec:
        c = self.config
        return pb.NodeSpec(
            address=self.announced,
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
        await self.state_server.start()
        if self.metrics_server is not None:
            await self.metrics_server.start()
            log.info("metrics at %s", self.metrics_server.url)
        if not self.announced:
            log.warning("saved-state transfers from this node go through the controller: "
                        "--state-listen %s is a wildcard and no --address was given",
                        self.config.state_listen)
        fencing = asyncio.create_task(self.fence.run(), name="fence")
        await self.health.update()
        healthing = asyncio.create_task(self.health.run(), name="health")
        try:
            await self._connect_loop()
        finally:
            fencing.cancel()
            healthing.cancel()
            await self.health.shutdown()
            await self.state_server.stop()
            if self.metrics_server is not None:
                await self.metrics_server.stop()
            await self.supervisor.close()

    async def _connect_loop(self) -> None:
        """Sessions with the controllers in turn. After any failure, the next address (a
        replica that hangs must not hold us past the fence deadline); a pause only once a
        whole round of addresses failed without one ack."""
        addresses = self.config.controllers
        index = 0
        failed = 0   # sessions in a row that never got an ack
        rounds = 0   # whole rounds of addresses that failed
        asked = 0.0  # the longest wait a busy controller asked for in this round
        while not self._stop.is_set():
            address = addresses[index % len(addresses)]
            index += 1
            self.address = address
            session = ControllerSession(
                self.config.name, address, self, self.fence, self.clock,
                self.timing.register_timeout(rounds), self._stop, self._dialer)
            try:
                outcome = await session.run()
            except RegisterRefused as err:
                self._stop.set()
                raise SystemExit(f"the controller refused this node: {err}") from err
            finally:
                self.address = ""
            if outcome.timing is not None:
                self.timing = outcome.timing
            if self._stop.is_set():
                break
            if outcome.acked:
                failed = rounds = 0
                asked = 0.0
                continue
            log.warning("no session with %s (%s); trying the next controller", address,
                        outcome.why)
            failed += 1
            asked = max(asked, outcome.retry_after)
            if failed % len(addresses):
                continue
            rounds += 1
            delay = round_pause(rounds, asked)
            asked = 0.0
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    def serving(self) -> bool:
        """Healthy: registered in a live session and not fenced."""
        return self._session_up and not self.fence.fenced and self.fence.remaining() > 0

    def _workers(self) -> list[Worker]:
        return [Worker(lp.name, lp.handle.pid, lp.handle.dir)
                for lp in list(self.supervisor.local.values())
                if lp.handle is not None and lp.running]

    def _session_send(self) -> Callable[[apb.AgentMessage], None] | None:
        return self._send if self._outbox is not None else None

    def _event(self, partition: str, reason: str, message: str, warning: bool) -> None:
        log.info("%s: %s", partition, message, extra={"partition": partition})
        self._send(apb.AgentMessage(event=apb.AgentEvent(
            partition=partition, type="Warning" if warning else "Normal", reason=reason,
            message=message)))

    def _send(self, msg: apb.AgentMessage) -> None:
        """Reports and events share the heartbeats' lane, in order: the controller checks a
        heartbeat's inventory against the reports sent before it, so a heartbeat must never
        overtake a report. Bulk data (state files, consoles) waits behind them."""
        if self._outbox is not None:
            self._outbox.put(msg, urgent=msg.WhichOneof("msg") not in BULK)

    # -- SessionHost ----------------------------------------------------------------------

    def register_request(self) -> apb.RegisterRequest:
        return apb.RegisterRequest(node=self.config.name, spec=self.spec(),
                                   running=self.supervisor.reports())

    def heartbeat(self) -> apb.Heartbeat:
        return apb.Heartbeat(
            running=self.supervisor.running_count(),
            inventory=[apb.InventoryEntry(name=n, epoch=e)
                       for n, e in self.supervisor.inventory()])

    def attach(self, gateway: agent_pb2_grpc.AgentGatewayStub | None,
               outbox: Outbox | None) -> None:
        self._gateway, self._outbox = gateway, outbox
        if outbox is None:
            self._session_up = False
            for task in self._consoles.values():
                task.cancel()
            self._consoles.clear()
            self.state_sender.cancel_all()

    def registered(self, reply: apb.RegisterResponse) -> None:
        self._session_up = True
        if reply.state_ticket_key:
            self._ticket_key = reply.state_ticket_key

    def handle(self, msg: apb.ControllerMessage) -> None:
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
            self.state_sender.start(msg.state)
        elif kind == "state_credit":
            self.state_sender.credit(msg.state_credit)
        elif kind == "state_cancel":
            self.state_sender.cancel(msg.state_cancel.request_id)

    def _console_done(self, rid: str) -> Callable[[asyncio.Task[None]], None]:
        def done(_task: asyncio.Task[None]) -> None:
            self._consoles.pop(rid, None)

        return done

    async def _pull(self, image: pb.Image, dest: Path) -> None:
        """Stream image content through the controller into ``dest``, verified. A lost
        controller (killed, restarted, failed over) is not the image's fault: the pull
        resumes on the next session, and fails only after 30 s without progress."""
        before = dest.stat().st_size if dest.exists() else 0   # a resumed pull's prefix
        started = time.monotonic()
        await self.puller.pull(image.digest, image.size_bytes, dest, image.name)
        self.metrics.pull_seconds.observe(time.monotonic() - started)
        self.metrics.pull_bytes.inc(max(image.size_bytes - before, 0))


def run_agent(config: AgentConfig, log_format: str = "text",
              log_level: str | None = None) -> int:
    logs.configure(f"agent/{config.name}", log_format, log_level, node=config.name)
    if config.tls is None:
        log.warning("running WITHOUT TLS (--insecure): plaintext to the controllers, and "
                    "saved states served to anyone who reaches the state port")
    try:
        arches = check_host()
    except HostUnsupported as err:
        log.error("refusing to start: %s", err)
        return 1

    async def main() -> None:
        try:
            agent = Agent(config, arches)
        except OSError as err:   # e.g. the --state-listen port is taken
            raise SystemExit(str(err)) from err
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
