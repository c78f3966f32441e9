"""Logging for the servers (controller, agent, `up`): text or JSON lines, a level from
--log-level or VIRIDIAN_LOG, and structured fields (node, partition, epoch, request_id)
taken from context variables set where the work is known (see `log_context`).

A JSON line is one object: time (RFC 3339, UTC), level, logger, component, message, the
structured fields that are set, and `exception` when there is a traceback."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_LEVEL = "VIRIDIAN_LOG"
FIELDS = ("node", "partition", "epoch", "request_id")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "viridian_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Attach fields (node=, partition=, epoch=, request_id=) to every record logged inside
    the block, in this task and the tasks it starts."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v not in
                                           (None, "")}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind_context(**fields: Any) -> None:
    """Set fields for the rest of the current task (e.g. a session's node)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items()
                                               if v not in (None, "")}})


class ContextFilter(logging.Filter):
    """Copies the context's fields onto each record (an `extra=` given to the call wins),
    plus the process-wide defaults (e.g. an agent's node name)."""

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.defaults = {k: v for k, v in (defaults or {}).items() if v not in (None, "")}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**self.defaults, **(_context.get() or {})}.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value not in (None, ""):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The classic line, with the structured fields that are set appended as key=value."""

    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s {component} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={getattr(record, k)}" for k in FIELDS
                 if getattr(record, k, None) not in (None, "")]
        if not extra:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        return f"{head} [{' '.join(extra)}]{sep}{tail}"


def resolve_level(level: str | None) -> str:
    """--log-level if given, else $VIRIDIAN_LOG, else INFO; ValueError if unknown."""
    text = (level or os.environ.get(ENV_LEVEL) or "INFO").strip().upper()
    if text == "WARN":
        text = "WARNING"
    if text not in LEVELS:
        raise ValueError(f"unknown log level {text[:40]!r}: expected one of "
                         f"{', '.join(LEVELS)} (from --log-level or {ENV_LEVEL})")
    return text


def configure(component: str, fmt: str = "text", level: str | None = None,
              stream: TextIO | None = None, **defaults: Any) -> None:
    """Set up the root logger once for a server process (replacing earlier handlers)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: expected text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component) if fmt == "json"
                         else TextFormatter(component))
    # Text lines name the component (agent/NODE) already: the defaults go to JSON only.
    handler.addFilter(ContextFilter(defaults if fmt == "json" else None))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(resolve_level(level))
