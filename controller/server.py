"""Building and running a controller replica: the public API, the agent gateway (on its own
port), health and reflection, the cache, the dispatch loop, and (when leading) scheduling and
node lifecycle.

With TLS (the default) the public port authenticates users by bearer token and the agent
port requires a client certificate from the cluster CA (nodes and other replicas); every
call passes the authorization interceptor. `insecure` serves plaintext with no checks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from viridian.v1 import agent_pb2, agent_pb2_grpc, controller_pb2, controller_pb2_grpc
from viridian.v1 import types_pb2 as pb

from controller import gc_policy, logs, malloc
from controller.api import ApiContext, ControllerService
from controller.gateway.dispatch import DispatchLoop
from controller.gateway.service import AgentGateway
from controller.gateway.sessions import SessionRegistry
from controller.gateway.timings import DEFAULT_MAX_HEARTBEATS_PER_S
from controller.gc_policy import GcPauses
from controller.images.backend import ImageBackend
from controller.images.blobstore import BlobStore
from controller.images.checks import MAX_IMAGE_BYTES
from controller.images.gc import DEFAULT_GRACE_S, ImageGc
from controller.images.local import LocalBlobStore
from controller.images.peers import BlobPeers
from controller.leader import LeaderElector
from controller.loop_lag import LoopLagMonitor
from controller.loops.compaction import DEFAULT_COMPACT_EVERY_S, CompactionLoop, EventTrimLoop
from controller.loops.scheduling import SchedulingLoop
from controller.metrics import ControllerMetrics
from controller.partitions.actions import PartitionActions
from controller.partitions.drain import DrainLoop
from controller.partitions.eviction import NodeLifecycleLoop
from controller.ports import default_agent_listen
from controller.scheduler import SchedulerConfig
from controller.security.audit import Auditor
from controller.security.authz import Authenticator, AuthorizationInterceptor
from controller.security.pki import KeyPair
from controller.security.tls import Dialer, TlsConfig
from controller.security.tokens import parse_token, secret_digest
from controller.store import EtcdStore, Store, now_ts
from controller.store.events import DEFAULT_MAX_EVENTS
from controller.store.replicas import ReplicaPresence

if TYPE_CHECKING:
    from controller.metrics_http import MetricsServer
    from controller.web.server import WebServer

log = logging.getLogger(__name__)
GRACE_S = 2.0
# Agents ping their session channel every second (so a dead peer is noticed); allow it.
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 4 << 20),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_time_ms", 2000),
    ("grpc.keepalive_timeout_ms", 2000),
]


@dataclass
class ControllerConfig:
    listen: str = "127.0.0.1:50051"
    etcd_endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    prefix: str = "/viridian"
    lease_ttl: int = 3
    # heartbeats a second this replica aims to stay under: past it, agents beat less often
    # (up to TTL/2 apart); controller/gateway/timings.py
    max_heartbeats_per_s: float = DEFAULT_MAX_HEARTBEATS_PER_S
    identity: str = ""
    advertise: str = ""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    agent_listen: str = ""          # default: the --listen host, port + 1
    agent_advertise: str = ""       # how agents and replicas reach the agent port
    tls: TlsConfig | None = None    # None: plaintext, no authentication (--insecure)
    ca: KeyPair | None = None       # signs node certificates at join
    etcd_tls: TlsConfig | None = None
    bootstrap_tokens: list[tuple[str, pb.Role.ValueType]] = field(default_factory=list)
    data_dir: Path | None = None    # blobs (and push spools) live under it; None: a temp dir
    blob_registry: str = ""         # an OCI registry URL for blobs instead of data_dir/blobs
    blob_registry_ca: Path | None = None
    max_image_bytes: int = MAX_IMAGE_BYTES
    image_gc_grace_s: float = DEFAULT_GRACE_S
    compact_every: float = DEFAULT_COMPACT_EVERY_S  # seconds of etcd history kept (leader)
    max_events: int = DEFAULT_MAX_EVENTS            # events kept at most (and 1 h at most)
    web_listen: str = ""            # the web console's HOST:PORT; "" = no web console
    metrics_listen: str = ""        # HOST:PORT serving Prometheus /metrics ("": none)


class ControllerReplica:
    """One replica. build() binds the port; start() begins serving; stop() shuts down."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.etcd = EtcdStore(
            config.etcd_endpoints,
            credentials=config.etcd_tls.channel_credentials() if config.etcd_tls else None)
        self.identity = config.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(self.etcd, config.prefix, f"controller/{self.identity}")
        self.cache = self.store.cache
        self.sessions = SessionRegistry()
        self.metrics = ControllerMetrics()
        self.etcd.txn_observer = self.metrics.txn_done
        self.etcd.batch_observer = self.metrics.etcd_txn_batch_size.observe
        self.metrics.watch(self.cache, self.sessions)
        self.gc_pauses = GcPauses(
            lambda gen, s: self.metrics.gc_pause_seconds.labels(str(gen)).observe(s))
        self.loop_lag = LoopLagMonitor(
            self.metrics.loop_lag_seconds.observe,
            on_stall=lambda seconds, _: self.metrics.loop_stall_seconds.observe(seconds),
            context=self.gc_pauses.collecting)
        self.metrics_server: MetricsServer | None = None
        if config.metrics_listen:
            # Imported only here: aiohttp slows every start (see the blob registry below).
            from controller.metrics_http import MetricsServer

            self.metrics_server = MetricsServer(self.metrics.registry, config.metrics_listen)
        self.actions = PartitionActions(self.store)
        auth = Authenticator(lambda: self.cache.tokens, insecure=config.tls is None)
        auditor = Auditor(self.store.events)
        self.authenticator, self.auditor = auth, auditor
        self.server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[AuthorizationInterceptor(auth, auditor, agent_port=False)])
        self.agent_server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[AuthorizationInterceptor(auth, auditor, agent_port=True)])
        self.port = self._bind(self.server, config.listen, require_client_cert=False)
        host = config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        agent_listen = config.agent_listen or default_agent_listen(config.listen)
        if agent_listen == config.listen and not agent_listen.endswith(":0"):
            raise OSError("the agent port must differ from the API port")
        self.agent_port = self._bind(self.agent_server, agent_listen,
                                     require_client_cert=True)
        self.agent_address = f"{agent_listen.rsplit(':', 1)[0]}:{self.agent_port}"
        self.advertise = config.advertise or self.address
        self.agent_advertise = config.agent_advertise or _with_port(
            config.advertise, self.agent_port) or self.agent_address
        dialer = Dialer(config.tls)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if config.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="viridian-controller-")
        data_dir = config.data_dir or Path(self._tmp.name if self._tmp else ".")
        self.blobs: BlobStore
        peers: BlobPeers | None = None
        if config.blob_registry:
            # Imported only here: aiohttp adds a tenth of a second to every controller start,
            # and a restarted controller must answer its agents within the lease TTL.
            from controller.images.registry import RegistryBlobStore

            self.blobs = RegistryBlobStore(config.blob_registry, data_dir / "uploads",
                                           config.blob_registry_ca)
        else:
            self.blobs = LocalBlobStore(data_dir / "blobs")
            peers = BlobPeers(self.store, self.blobs, dialer, self.agent_advertise)
        self.images = ImageBackend(self.blobs, peers, config.max_image_bytes)
        self.image_gc = ImageGc(self.store, self.blobs, peers, config.image_gc_grace_s)
        self.presence = ReplicaPresence(self.etcd, self.store.keys, self.identity,
                                        self.agent_advertise, config.lease_ttl)
        self.ctx = ApiContext(self.store, self.actions, self.sessions, config.scheduler,
                              self.agent_advertise, self.images, dialer, config.ca,
                              metrics=self.metrics)
        service = ControllerService(self.ctx)
        self.service = service
        self.web: WebServer | None = None
        controller_pb2_grpc.add_ControllerServicer_to_server(service, self.server)
        controller_pb2_grpc.add_ControllerServicer_to_server(service, self.agent_server)
        self.gateway = AgentGateway(self.store, self.actions, self.sessions, config.lease_ttl,
                                    self.agent_advertise, self.images, dialer, self.metrics,
                                    config.max_heartbeats_per_s)
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(self.gateway, self.agent_server)
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        for server, names in ((self.server, ("Controller",)),
                              (self.agent_server, ("Controller", "AgentGateway"))):
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            services = (
                *(controller_pb2.DESCRIPTOR.services_by_name[n].full_name for n in names
                  if n == "Controller"),
                *(agent_pb2.DESCRIPTOR.services_by_name[n].full_name for n in names
                  if n == "AgentGateway"),
                reflection.SERVICE_NAME,
                health.SERVICE_NAME,
            )
            reflection.enable_server_reflection(services, server)
        self.dispatch = DispatchLoop(self.store, self.sessions)
        self.scheduling = SchedulingLoop(self.store, config.scheduler)
        self.scheduling.metrics = self.metrics
        self.node_lifecycle = NodeLifecycleLoop(self.store, self.actions)
        self.drains = DrainLoop(self.store, self.actions)
        self.compaction = CompactionLoop(self.store, config.compact_every)
        self.event_trim = EventTrimLoop(self.store, config.max_events)
        self.elector = LeaderElector(
            self.store.leader, self.identity, config.lease_ttl,
            self._on_elected, self._on_lost,
        )
        self._stopped = False

    def _bind(self, server: grpc.aio.Server, address: str, require_client_cert: bool) -> int:
        tls = self.config.tls
        try:
            if tls is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address,
                                              tls.server_credentials(require_client_cert))
        except RuntimeError:  # gRPC's "Failed to bind to address …" (in use, or not ours)
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address}: the address is in use or not "
                          "this host's")
        return port

    async def _bootstrap_tokens(self) -> None:
        """Tokens handed to this replica at start (`viridian up`, `viridian certs`) exist
        in etcd: created if missing, never changed (revoked ones stay revoked only if the
        file stops naming them)."""
        for text, role in self.config.bootstrap_tokens:
            parsed = parse_token(text)
            if parsed is None:
                raise ValueError("a bootstrap token is not of the form ID.SECRET")
            token = pb.Token(id=parsed[0], role=role, description="bootstrap",
                             created_at=now_ts(), created_by=f"controller:{self.identity}",
                             secret_sha256=secret_digest(parsed[1]))
            await self.store.tokens.ensure(token)

    async def _on_elected(self) -> None:
        self.scheduling.start()
        self.node_lifecycle.start()
        self.drains.start()
        self.compaction.start()
        self.event_trim.start()
        await self.store.events.record("Controller", self.identity, "LeaderElected",
                                       "now leading")

    async def _on_lost(self) -> None:
        await self.scheduling.stop()
        await self.node_lifecycle.stop()
        await self.drains.stop()
        await self.compaction.stop()
        await self.event_trim.stop()

    async def start(self) -> None:
        await self.blobs.start()
        await self.cache.start()
        self.loop_lag.start()
        self.gc_pauses.install()
        await self._bootstrap_tokens()
        await self.presence.announce()
        self.presence.start()
        self.image_gc.start()
        self.dispatch.start()
        self.gateway.liveness.start()
        self.elector.start()
        await self.server.start()
        await self.agent_server.start()
        if self.config.web_listen:
            # Imported only here, as the registry blob store is: aiohttp slows every start.
            from controller.web.server import WebServer

            self.web = WebServer(self.config.web_listen, self.service, self.authenticator,
                                 self.auditor)
            await self.web.start()  # before SERVING: whoever waits for that finds it too
        if self.metrics_server is not None:
            await self.metrics_server.start()
            log.info("metrics at %s", self.metrics_server.url)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("controller %s serving the API on %s and agents on %s (%s)", self.identity,
                 self.address, self.agent_address,
                 "TLS" if self.config.tls else "INSECURE: plaintext, no authentication")

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        if self.web is not None:
            await self.web.stop()
        self.sessions.close_all()
        await self.gateway.liveness.stop()
        await self.gateway.registrar.stop()
        await asyncio.gather(self.server.stop(GRACE_S), self.agent_server.stop(GRACE_S))
        await self.elector.stop()
        await self.dispatch.stop()
        await self.image_gc.stop()
        await self.presence.stop()
        await self.cache.stop()
        await self.loop_lag.stop()
        self.gc_pauses.remove()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.blobs.close()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _with_port(address: str, port: int) -> str:
    """The host of an advertised address with another port ("" for "")."""
    return f"{address.rsplit(':', 1)[0]}:{port}" if address else ""


async def serve(config: ControllerConfig, gc_tune: bool = True) -> None:
    replica = ControllerReplica(config)
    await replica.start()
    if gc_tune:
        gc_policy.tune_for_server()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await replica.stop()


def run_controller(config: ControllerConfig, log_format: str = "text",
                   log_level: str | None = None) -> int:
    logs.configure("controller", log_format, log_level)
    tuning = os.environ.get("VIRIDIAN_MALLOC_TUNE", "1")  # 0: off; mmap: bench comparison
    if tuning != "0":
        malloc.tune(malloc.SMALL_MMAP if tuning == "mmap" else malloc.DEFAULT)
    if config.tls is None:
        log.warning("serving WITHOUT TLS or authentication (--insecure): anyone who reaches "
                    "%s can control the cluster", config.listen)
    try:   # VIRIDIAN_GC_TUNE=0: the interpreter's defaults (bench comparison)
        asyncio.run(serve(config, os.environ.get("VIRIDIAN_GC_TUNE", "1") != "0"))
    except (OSError, ValueError) as err:
        log.error("%s", err)
        return 1
    return 0
