"""Start a child process that Ctrl-C (SIGINT) can end, as at a terminal, from a test.

A test run started in the background of a non-interactive shell (CI scripts, `make test &`)
has SIGINT ignored, and a child inherits an ignored signal through exec, so a SIGINT the
test sends would do nothing. Resetting it in the child with ``preexec_fn`` is not safe
here: the child then runs Python after fork in a copy of a process whose gRPC threads may
hold locks, and it died at random (abseil's "Mutex::Fer with pending CondVar queueing").
Instead the parent gives SIGINT a handler for the moment of the fork: exec resets a
handled signal to its default in the child, and the parent's own disposition comes back.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

__all__ = ["popen_interruptible"]


def popen_interruptible(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """``subprocess.Popen(args, **kwargs)`` with SIGINT at its default in the child.
    From the main thread only (where Python lets signal handlers be set)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, before)
