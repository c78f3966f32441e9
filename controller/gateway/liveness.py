"""Node liveness on this replica: one etcd lease for every node whose session it holds.

Each node's lease key (``node-leases/NODE``, naming the replica) is attached to this
replica's node lease. Heartbeats are acknowledged in batches: a renewal of the lease begins,
and when it succeeds every heartbeat that had arrived before it began is acknowledged
(echoing its seq). So, as with a lease per node, an ack proves that the node's lease key
outlives the heartbeat's send time by the TTL, and an agent that fences itself at that send
time + TTL - margin has stopped its partitions before the key can go. At most one renewal is
in flight; heartbeats that arrive meanwhile wait for the next, which begins as soon as it
ends. The cost is one keepalive per renewal, however many nodes: a lease per node cost one
keepalive per heartbeat per node (10,000 a second at 5,000 nodes with a 3 s TTL).
Each ack also carries the heartbeat pace for the sessions this replica now holds and is
about to hold (timings.py; admission.py counts the nodes setting up and those booked to come
back): thousands of agents are asked to beat less often, never past what the TTL allows. In
a mass reconnect the first agents back are paced for the thousands behind them, not at the
fastest pace while those are still arriving.

A node whose agent went silent for the TTL (frozen, cut off, or its session stream ended
and it did not register again) loses its session and its lease key (deleted only if it is
still the one its registration wrote: its claim). The TTL counts from the agent's last
message, which it sent after the last heartbeat acknowledged, so the agent has fenced by
then, as it had when a lease of its own expired. A node
that registers with another replica replaces the key; this replica sees its claim superseded
and ends the stale session. If the lease itself expires (this replica could not renew it for
the TTL, so it acknowledged nothing for that long and every agent has fenced), every node it
held is lost: its sessions end and the next registration gets a new lease. A replica that
stops leaves its lease to expire rather than revoking it: its agents register elsewhere
within the fence margin, and their keys move with them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from viridian.v1 import agent_pb2 as apb

from controller.errors import StoreError
from controller.gateway.sessions import NodeSession, SessionRegistry
from controller.gateway.timings import Timings
from controller.metrics import ControllerMetrics
from controller.store import Store

log = logging.getLogger(__name__)
#: renewals begin at least this far apart: under thousands of heartbeats a second, each
#: renewal answers more of them (an ack waits at most this much longer)
MIN_RENEWAL_GAP_S = 0.02


class NodeLiveness:
    def __init__(self, store: Store, sessions: SessionRegistry, timings: Timings,
                 metrics: ControllerMetrics, incoming: Callable[[], int] = lambda: 0
                 ) -> None:
        self.store = store
        self.sessions = sessions
        self.timings = timings
        self.incoming = incoming   # sessions about to be held (admission.py)
        self.ttl = timings.lease_ttl
        # how often silent agents are looked for (and the lease renewed when nothing beats)
        self.check_s = max(timings.heartbeat_s, 0.05)
        self.metrics = metrics
        self._lease = 0
        self._granting = asyncio.Lock()
        # session id -> (a session with a new beat, when its newest beat arrived)
        self._beats: dict[str, tuple[NodeSession, float]] = {}
        # sessions whose stream ended: their node's key goes when it has been silent a TTL
        self._ended: dict[str, NodeSession] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._releasing: set[asyncio.Task[None]] = set()
        self.renewals = 0   # successful renewals (for tests and benches)
        store.cache.subscribe(self._on_change)

    async def lease(self) -> int:
        """This replica's node lease (granted when there is none)."""
        async with self._granting:
            if not self._lease:
                self._lease = await self.store.etcd.grant_lease(self.ttl)
            return self._lease

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-liveness")

    async def stop(self) -> None:
        for task in [self._task, *self._releasing]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._task, *self._releasing] if t is not None),
                             return_exceptions=True)

    def beat(self, session: NodeSession) -> None:
        """A heartbeat arrived on `session` (its beat_seq is set): ack it after a renewal."""
        self._beats[session.session_id] = (session, asyncio.get_running_loop().time())
        self._wake.set()

    def ended(self, session: NodeSession) -> None:
        """`session`'s stream ended: unless the node registers again, its key goes once it
        has been silent for the TTL."""
        self._beats.pop(session.session_id, None)
        if not session.released:
            self._ended[session.session_id] = session

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_check = 0.0
        last_renewal = 0.0
        while True:
            try:
                async with asyncio.timeout(self.check_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            now = loop.time()
            if now >= next_check:
                self._end_silent(now)
                next_check = now + self.check_s
            gap = last_renewal + MIN_RENEWAL_GAP_S - loop.time()
            if gap > 0:
                await asyncio.sleep(gap)
            last_renewal = loop.time()
            try:
                await self._renew_and_ack()
            except asyncio.CancelledError:
                raise
            except Exception:   # a bug must not end liveness: log it, go on
                log.exception("node liveness: renewal failed unexpectedly")

    async def _renew_and_ack(self) -> None:
        lease = self._lease
        if not lease:
            return
        # The seq of each session's newest heartbeat, read before the renewal begins.
        pending = [(s, s.beat_seq, at) for s, at in self._beats.values()]
        self._beats = {}
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            ttl = await self.store.etcd.keepalive(lease)
        except StoreError as err:
            log.warning("renewing this replica's node lease failed: %s; %d heartbeats not "
                        "acked", err, len(pending))
            self.metrics.lease_renewals.labels("failed").inc()
            for s, _, at in pending:   # the next renewal answers them
                if not s.closed:
                    self._beats.setdefault(s.session_id, (s, at))
            return
        now = loop.time()
        self.metrics.lease_renewal_seconds.observe(now - began)
        if ttl <= 0:
            self.metrics.lease_renewals.labels("expired").inc()
            await self._lost(lease)
            return
        self.metrics.lease_renewals.labels("ok").inc()
        self.renewals += 1
        observe = self.metrics.heartbeat_ack_seconds.observe
        interval, ack_timeout = self.timings.pace(len(self.sessions) + self.incoming())
        interval_ms, ack_timeout_ms = round(interval * 1000), round(ack_timeout * 1000)
        for s, seq, at in pending:
            if not s.closed:
                s.send(apb.ControllerMessage(ack=apb.HeartbeatAck(
                    lease_ttl_seconds=self.ttl, seq=seq, heartbeat_interval_ms=interval_ms,
                    ack_timeout_ms=ack_timeout_ms)))
                observe(now - at)

    async def _lost(self, lease: int) -> None:
        """The lease expired: every node key on it is gone. End those sessions."""
        async with self._granting:
            if self._lease == lease:
                self._lease = 0
        held = [s for s in self.sessions.all() if s.lease == lease]
        log.warning("this replica's node lease expired; ending %d sessions", len(held))
        for s in held:
            s.close()

    def _end_silent(self, now: float) -> None:
        for s in self.sessions.all():
            silent = now - s.last_seen
            if silent > self.ttl:
                log.warning("agent of %s silent for %.1fs; ending its session", s.node, silent)
                s.close()
                self.release_soon(s)
        for key, s in list(self._ended.items()):
            if s.released:
                del self._ended[key]
            elif now - s.last_seen > self.ttl:
                del self._ended[key]
                self.release_soon(s)

    def release_soon(self, session: NodeSession) -> None:
        """Delete the node's lease key if it is still this session's (not awaited: closing
        the session ends its stream, which must not cancel the release)."""
        session.released = True

        async def release() -> None:
            try:
                await self.store.nodes.release(session.node, session.claim)
            except StoreError as err:
                log.warning("releasing the lease key of %s failed: %s (it goes with this "
                            "replica's lease if nothing renews it)", session.node, err)

        task = asyncio.create_task(release(), name=f"release-{session.node}")
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _on_change(self, kind: str, name: str) -> None:
        """A lease key written after this session's claim: the node registered again (with
        another replica, or anew here): the session is stale."""
        if kind != "node-leases":
            return
        session = self.sessions.get(name)
        kv = self.store.cache.node_leases.get(name)
        if session is not None and kv is not None and kv.mod_revision > session.claim:
            log.info("node %s registered again elsewhere; ending its session here", name)
            session.close()
