"""glibc malloc tuning for a long-running controller.

A push or a pull moves 1 MiB messages through gRPC, Python and worker threads (hashing and
file writes run in asyncio.to_thread). glibc gives each thread that allocates an arena of
its own, up to 8 per core, and rarely returns an arena's freed memory: a bound on the arena
count caps what a burst of worker threads can keep. Measured (bench/image_push.py, 2 shared
cores, 1 GiB pushed then pulled): peak RSS growth 21 MiB with 4 arenas, 50 MiB with glibc's
defaults, 17 MiB with a 256 KiB mmap threshold as well, which however cost about half of the
push and pull throughput (page faults on every 1 MiB buffer): the threshold is left alone.
No effect (and no error) on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 256 << 10
TRIM_THRESHOLD = 1 << 20
ARENA_MAX = 4


DEFAULT = ((M_ARENA_MAX, ARENA_MAX),)
#: What bench/image_push.py --mmap-threshold compares with.
SMALL_MMAP = ((M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
              (M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def tune(settings: tuple[tuple[int, int], ...] = DEFAULT) -> bool:
    """Apply mallopt settings; False where mallopt is unavailable (not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        log.warning("mallopt refused a setting; controller memory may grow with pushes")
    return ok
