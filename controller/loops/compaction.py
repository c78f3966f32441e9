"""etcd upkeep (leader only): compact history, and keep events within --max-events.

etcd keeps every past version of every key until its history is compacted; without
compaction, deleted images, old events and every status update stay in the database until
it reaches its quota and etcd refuses all writes (NOSPACE). The leader samples the store's
revision every `every` seconds and compacts to the revision it saw one period earlier: the
newest `every` seconds of history stay, so a watch that is briefly behind and a paged list
(whose pages are all read at its first page's revision) are not cut off. Compaction frees
pages inside etcd's file; giving them back to the file system needs a defragmentation,
which blocks the member while it runs and is left to operators (docs/operations.md).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from controller.errors import Compacted
from controller.loops.base import Loop
from controller.store import Store

log = logging.getLogger(__name__)
DEFAULT_COMPACT_EVERY_S = 300.0
TRIM_EVERY_S = 10.0


class CompactionLoop(Loop):
    """Compacts etcd's history to the revision seen `every` seconds ago."""

    name = "compaction"

    def __init__(self, store: Store, every: float = DEFAULT_COMPACT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError("the compaction period must be positive")
        self.store = store
        self.every = every
        self.resync_s = every
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()  # (time, revision), oldest first
        self.compacted = 0  # the last revision compacted to

    async def reconcile(self) -> bool:
        now = self._clock()
        self._samples.append((now, await self.store.etcd.revision()))
        target = 0
        while self._samples and self._samples[0][0] <= now - self.every:
            target = self._samples.popleft()[1]
        if target <= self.compacted:
            return False
        try:
            await self.store.etcd.compact(target)
        except Compacted:
            log.debug("etcd history already compacted past %d", target)
        self.compacted = target
        log.info("compacted etcd history before revision %d", target)
        return False


class EventTrimLoop(Loop):
    """Deletes the oldest events beyond the newest `keep` (after moving any that an older
    release wrote where the replicas watch: store/events.py, move_legacy)."""

    name = "event-trim"
    resync_s = TRIM_EVERY_S

    def __init__(self, store: Store, keep: int) -> None:
        super().__init__()
        if keep < 1:
            raise ValueError("at least one event must be kept")
        self.store = store
        self.keep = keep

    async def reconcile(self) -> bool:
        await self.store.events.move_legacy()
        await self.store.events.trim(self.keep)
        return False
