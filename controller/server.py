"""Building and running a controller replica: the public API, the agent gateway, health and
reflection, the cache, the dispatch loop, and (when leading) scheduling and node lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from viridian.v1 import agent_pb2, agent_pb2_grpc, controller_pb2, controller_pb2_grpc

from controller.api import ApiContext, ControllerService
from controller.gateway.dispatch import DispatchLoop
from controller.gateway.service import AgentGateway
from controller.gateway.sessions import SessionRegistry
from controller.leader import LeaderElector
from controller.loops.scheduling import SchedulingLoop
from controller.partitions.actions import PartitionActions
from controller.partitions.drain import DrainLoop
from controller.partitions.eviction import NodeLifecycleLoop
from controller.scheduler import SchedulerConfig
from controller.store import EtcdStore, Store

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
    identity: str = ""
    advertise: str = ""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


class ControllerReplica:
    """One replica. build() binds the port; start() begins serving; stop() shuts down."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        self.etcd = EtcdStore(config.etcd_endpoints)
        self.identity = config.identity or f"{socket.gethostname()}-{os.getpid()}"
        self.store = Store(self.etcd, config.prefix, f"controller/{self.identity}")
        self.cache = self.store.cache
        self.sessions = SessionRegistry()
        self.actions = PartitionActions(self.store)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        self.port = self.server.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {config.listen}")
        host = config.listen.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        self.advertise = config.advertise or self.address
        self.ctx = ApiContext(self.store, self.actions, self.sessions, config.scheduler,
                              self.advertise)
        controller_pb2_grpc.add_ControllerServicer_to_server(
            ControllerService(self.ctx), self.server
        )
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(
            AgentGateway(self.store, self.actions, self.sessions, config.lease_ttl,
                         self.advertise),
            self.server,
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        services = (
            controller_pb2.DESCRIPTOR.services_by_name["Controller"].full_name,
            agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name,
            reflection.SERVICE_NAME,
            health.SERVICE_NAME,
        )
        reflection.enable_server_reflection(services, self.server)
        self.dispatch = DispatchLoop(self.store, self.sessions)
        self.scheduling = SchedulingLoop(self.store, config.scheduler)
        self.node_lifecycle = NodeLifecycleLoop(self.store, self.actions)
        self.drains = DrainLoop(self.store, self.actions)
        self.elector = LeaderElector(
            self.store.leader, self.identity, config.lease_ttl,
            self._on_elected, self._on_lost,
        )
        self._stopped = False

    async def _on_elected(self) -> None:
        self.scheduling.start()
        self.node_lifecycle.start()
        self.drains.start()
        await self.store.events.record("Controller", self.identity, "LeaderElected",
                                       "now leading")

    async def _on_lost(self) -> None:
        await self.scheduling.stop()
        await self.node_lifecycle.stop()
        await self.drains.stop()

    async def start(self) -> None:
        await self.cache.start()
        self.dispatch.start()
        self.elector.start()
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("controller %s serving on %s", self.identity, self.address)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        self.sessions.close_all()
        await self.server.stop(GRACE_S)
        await self.elector.stop()
        await self.dispatch.stop()
        await self.cache.stop()
        self.store.close()


async def serve(config: ControllerConfig) -> None:
    replica = ControllerReplica(config)
    await replica.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await replica.stop()


def run_controller(
    listen: str,
    etcd_endpoints: list[str],
    lease_ttl: int = 3,
    prefix: str = "/viridian",
    advertise: str = "",
) -> int:
    logging.basicConfig(
        level=os.environ.get("VIRIDIAN_LOG", "INFO"),
        format="%(asctime)s controller %(levelname)s %(name)s: %(message)s",
    )
    try:
        asyncio.run(serve(ControllerConfig(
            listen, etcd_endpoints, prefix, lease_ttl, advertise=advertise
        )))
    except OSError as err:
        log.error("%s", err)
        return 1
    return 0
