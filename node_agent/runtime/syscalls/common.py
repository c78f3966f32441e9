"""Shared syscall plumbing: errno values, result sentinels and small helpers."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

__all__ = ["Handler", "BLOCK", "EXIT", "E", "s32", "s64", "errno_of"]

#: A syscall handler: (vcpu, six raw argument registers) -> result or sentinel.
Handler = Callable[..., int]

#: Returned by a handler that parked the calling thread (the vCPU must switch away).
BLOCK = 1 << 70
#: Returned by a handler after the calling thread (or the whole partition) ended.
EXIT = 1 << 71


class E:
    """Negative errno results."""

    PERM = -errno.EPERM
    NOENT = -errno.ENOENT
    SRCH = -errno.ESRCH
    INTR = -errno.EINTR
    IO = -errno.EIO
    BADF = -errno.EBADF
    CHILD = -errno.ECHILD
    AGAIN = -errno.EAGAIN
    NOMEM = -errno.ENOMEM
    ACCES = -errno.EACCES
    FAULT = -errno.EFAULT
    EXIST = -errno.EEXIST
    XDEV = -errno.EXDEV
    NOTDIR = -errno.ENOTDIR
    ISDIR = -errno.EISDIR
    INVAL = -errno.EINVAL
    MFILE = -errno.EMFILE
    NOTTY = -errno.ENOTTY
    NOSPC = -errno.ENOSPC
    SPIPE = -errno.ESPIPE
    ROFS = -errno.EROFS
    PIPE = -errno.EPIPE
    RANGE = -errno.ERANGE
    NAMETOOLONG = -errno.ENAMETOOLONG
    NOSYS = -errno.ENOSYS
    NOTEMPTY = -errno.ENOTEMPTY
    LOOP = -errno.ELOOP
    NOTSUP = -errno.EOPNOTSUPP
    TIMEDOUT = -errno.ETIMEDOUT
    NODEV = -errno.ENODEV
    OVERFLOW = -errno.EOVERFLOW
    NOEXEC = -errno.ENOEXEC
    TOOBIG = -errno.E2BIG


def s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def s64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value & (1 << 63) else value


def errno_of(exc: OSError) -> int:
    return -(exc.errno or errno.EIO)
