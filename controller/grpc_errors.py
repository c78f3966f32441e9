"""Domain errors to gRPC status codes: the only place this mapping happens."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from controller import errors as e

log = logging.getLogger(__name__)
R = TypeVar("R")
Context = grpc.aio.ServicerContext[Any, Any]

CODES: tuple[tuple[type[e.ViridianError], grpc.StatusCode], ...] = (
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (e.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (e.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (e.Conflict, grpc.StatusCode.ABORTED),
    (e.StoreFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.Compacted, grpc.StatusCode.ABORTED),
    (e.StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_of(err: e.ViridianError) -> grpc.StatusCode:
    for cls, code in CODES:
        if isinstance(err, cls):
            return code
    return grpc.StatusCode.INTERNAL


def map_errors(
    fn: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Wrap a unary handler: a ViridianError becomes a status with its message."""

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: Context) -> R:
        try:
            return await fn(self, request, context)
        except e.ViridianError as err:
            await context.abort(status_of(err), str(err))
            raise AssertionError("unreachable") from err

    return handler


def map_stream_errors(
    fn: Callable[..., AsyncIterator[R]],
) -> Callable[..., AsyncIterator[R]]:
    """Wrap a server-streaming handler the same way."""

    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: Context) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except e.ViridianError as err:
            await context.abort(status_of(err), str(err))

    return handler
