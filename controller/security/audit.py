"""The audit trail: every mutating call, who made it, from where, and how it ended.

Each record is an event of kind "Audit" (so `viridian events` shows it while events live,
one hour) and a line on the `viridian.audit` logger (ship the controller's log for a lasting
trail). Recording never delays or fails the call: it runs as a task. Calls refused for
want of valid credentials are logged only, never written to etcd.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from controller.security.principal import Principal
from controller.store import EventStore

__all__ = ["Auditor"]

log = logging.getLogger("viridian.audit")


def _target(request: Any) -> str:
    for field in ("name", "node", "id"):
        value = getattr(request, field, "")
        if isinstance(value, str) and value:
            return value[:253]
    return ""


def _outcome(error: BaseException | None, context: Any) -> str:
    if error is None:
        return "ok"
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    # An abort raises an exception without the status; the context keeps it.
    code = getattr(error, "code", None)
    if not callable(code):
        code = getattr(context, "code", None)
    if callable(code):
        try:
            value = code()
            if isinstance(value, grpc.StatusCode):
                return value.name
        except Exception:  # noqa: BLE001 - an abort's exception may not carry a code
            pass
    return "error"


class Auditor:
    def __init__(self, events: EventStore) -> None:
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, method: str, principal: Principal, peer: str, context: Any,
               request: Any, error: BaseException | None) -> None:
        """peer is the caller's address, read while the call was live. The context is read
        only for the status an abort left (a Python-side field, safe after the call ends)."""
        call = method.rsplit("/", 1)[-1]
        target = _target(request)
        outcome = _outcome(error, context)
        message = f"{principal} from {peer}: {call}{' ' + target if target else ''} -> {outcome}"
        log.info("%s", message)
        if principal.kind == "anonymous":
            # Refusals of callers with no valid credentials go to the log only: anyone who
            # reaches the port could otherwise turn a flood of calls into etcd writes.
            return
        task = asyncio.create_task(self._events.record(
            "Audit", target or call, call, message, warning=outcome != "ok",
            source=str(principal)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
