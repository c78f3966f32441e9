"""The web console's HTTP server (aiohttp, on the controller's event loop): the static pages
under / and the JSON API under /api/v1.

Every response forbids framing, sniffing and any script or style not served from here (the
pages escape what they show, and the policy stands behind that). A POST from a page of
another origin is refused: on an --insecure cluster no token stands in the way, and a
browser would otherwise let any web site drive the cluster through a local console.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web

from controller.security.audit import Auditor
from controller.security.authz import Authenticator
from controller.web.api import JsonApi, error_response
from controller.web.gate import CallAborted, Gate

__all__ = ["WebServer", "static_dir"]

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
SHUTDOWN_S = 1.0


def static_dir() -> Path:
    return Path(str(resources.files("controller.web") / "static"))


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None or origin == "null" and request.method == "GET":
        return True
    return urlsplit(origin).netloc == request.host


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """JSON errors (with the gRPC code name) for everything under /api/."""
    api = request.path.startswith("/api/")
    try:
        if api and request.method != "GET" and not _same_origin(request):
            raise CallAborted(grpc.StatusCode.PERMISSION_DENIED,
                              "cross-origin requests are refused")
        response = await handler(request)
    except CallAborted as err:
        response = error_response(err.status, err.message)
    except web.HTTPException as err:
        if not api:
            raise
        code = (grpc.StatusCode.NOT_FOUND if err.status == 404
                else grpc.StatusCode.UNIMPLEMENTED if err.status == 405
                else grpc.StatusCode.INVALID_ARGUMENT)
        response = error_response(code, err.reason)
    except Exception:
        if not api:
            raise
        log.exception("web API %s %s failed", request.method, request.path)
        response = error_response(grpc.StatusCode.INTERNAL, "internal error (see the "
                                  "controller's log)")
    return response


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(static_dir() / "index.html")


def make_app(service: Any, gate: Gate) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=1 << 20)
    app.add_routes(JsonApi(service, gate).routes())
    app.router.add_get("/", _index)
    app.router.add_static("/static/", static_dir(), follow_symlinks=False)
    return app


async def _prepare_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The security headers on every response (streams included, which are prepared inside
    their handlers)."""
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    if request.path.startswith("/api/"):
        response.headers.setdefault("Cache-Control", "no-store")


class WebServer:
    """Serves the console on `listen` (HOST:PORT; port 0 picks one) until stop()."""

    def __init__(self, listen: str, service: Any, authenticator: Authenticator,
                 auditor: Auditor | None) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--web-listen {listen!r}: expected HOST:PORT")
        self._host = host.strip("[]")
        self._port = int(port)
        app = make_app(service, Gate(authenticator, auditor))
        app.on_response_prepare.append(_prepare_headers)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                                     shutdown_timeout=SHUTDOWN_S)
        self.port = 0

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the bound socket tells the port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("web console on http://%s/", self.address)

    async def stop(self) -> None:
        await self._runner.cleanup()
