"""The agent's gRPC health (grpc.health.v1, on its StateSource port): SERVING only while the
agent holds a registered session with a controller and is not fenced; NOT_SERVING before
the first session, between sessions, and while fenced (its partitions stopped).

The status is re-evaluated every CHECK_S (the fence's own pace), so a check made after a
change sees it within that time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grpc_health.v1 import health, health_pb2

CHECK_S = 0.1
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: The service names answered besides "" (the whole agent).
SERVICES = ("", "viridian.v1.StateSource")


class AgentHealth:
    def __init__(self, serving: Callable[[], bool]) -> None:
        self.servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._serving = serving
        self.current: bool | None = None

    async def update(self) -> None:
        now = self._serving()
        if now == self.current:
            return
        self.current = now
        for name in SERVICES:
            await self.servicer.set(name, SERVING if now else NOT_SERVING)

    async def run(self) -> None:
        while True:
            await self.update()
            await asyncio.sleep(CHECK_S)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
