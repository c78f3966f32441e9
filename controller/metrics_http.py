"""Serving a Prometheus registry at http://HOST:PORT/metrics, in-process on the server's
event loop (aiohttp), so that scrape-time collectors read the server's state without locks.

Each server has its own CollectorRegistry (never the global default): several replicas or
agents in one process (tests) keep apart."""

from __future__ import annotations

import socket

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def split_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) -> (host, port); ValueError if malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT for --metrics-listen, got {listen[:80]!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MetricsServer:
    """Binds at construction (errors surface at once); start() begins answering."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        host, port = split_listen(listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock = socket.create_server((host, port), family=family, reuse_port=False)
        except OSError as err:
            raise OSError(f"cannot listen on {listen} for metrics: {err.strerror or err}"
                          ) from err
        self.port = int(self._sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{self.port}"
        self.url = f"http://{self.address}/metrics"
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._sock.close()
