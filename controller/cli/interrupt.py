"""Ctrl-C in the CLI: KeyboardInterrupt as usual, and a record that it came.

A KeyboardInterrupt raised while a gRPC call waits in the main thread unwinds out of grpc's
own bookkeeping, and a later ``Channel.close()`` then waits forever for that call to be
cleaned up (grpc/grpc#19973: it hung `viridian ls -w` after Ctrl-C about one time in ten),
and so does dropping the last reference to the channel (its call state's ``__del__`` closes
it). The process is ending when that happens, so once an interrupt has come the client
hands its channel to ``abandon()`` instead of closing it, and ``main()`` ends the process
with ``exit_now()``: output flushed, no interpreter teardown to collect the channel; the
kernel closes the sockets.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

__all__ = ["install", "interrupted", "abandon", "exit_now"]

_CAME = threading.Event()
_ABANDONED: list[object] = []


def _on_sigint(_signum: int, _frame: FrameType | None) -> None:
    _CAME.set()
    raise KeyboardInterrupt


def install() -> None:
    """Record Ctrl-C before raising KeyboardInterrupt; an ignored SIGINT stays ignored (a
    command started in the background of a non-interactive shell is not meant to see it)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def interrupted() -> bool:
    return _CAME.is_set()


def abandon(channel: object) -> None:
    """Keep ``channel`` referenced, unclosed, until the process ends."""
    _ABANDONED.append(channel)


def exit_now(code: object) -> None:
    """End the process with ``code`` (a SystemExit's) after flushing stdout and stderr."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or broken pipe: nothing more to say
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
