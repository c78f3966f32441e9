"""Stepping a servicer's response stream with a time limit per step.

A stream handler must know whether the call failed before it sends HTTP headers (a refused
or unknown partition is a JSON error with its status), yet a watch may legitimately yield
nothing for minutes; and an idle stream still has to notice that the server is stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

__all__ = ["END", "IDLE", "Pump"]

T = TypeVar("T")


class _Mark:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


IDLE = _Mark("IDLE")  # nothing within the time limit (the step goes on in the background)
END = _Mark("END")    # the stream ended


class Pump(Generic[T]):
    def __init__(self, stream: AsyncIterator[T]) -> None:
        self._stream = stream
        self._step: asyncio.Future[T] | None = None

    async def _next(self) -> T:
        return await self._stream.__anext__()

    async def next(self, timeout: float) -> T | _Mark:
        """The next item, IDLE after `timeout` seconds without one, or END; a stream's
        error is raised here."""
        if self._step is None:
            self._step = asyncio.ensure_future(self._next())
        done, _ = await asyncio.wait({self._step}, timeout=timeout)
        if not done:
            return IDLE
        step, self._step = self._step, None
        try:
            return step.result()
        except StopAsyncIteration:
            return END

    async def close(self) -> None:
        """Stop the stream (its `finally` blocks run)."""
        if self._step is not None:
            self._step.cancel()
            with contextlib.suppress(BaseException):
                await self._step
            self._step = None
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
