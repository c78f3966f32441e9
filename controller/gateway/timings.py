"""What a replica tells its agents about timing: lease TTL, heartbeat pace, fence margin,
ack timeout (in RegisterResponse, and the pace again in every HeartbeatAck)."""

from __future__ import annotations

from dataclasses import dataclass

from viridian.v1 import agent_pb2 as apb

#: heartbeats a second a replica aims to stay under (Nomad's max_heartbeats_per_second): past
#: it, the heartbeat interval grows with the sessions held, up to MAX_PACE_FRACTION of the TTL
DEFAULT_MAX_HEARTBEATS_PER_S = 2000.0
MAX_PACE_FRACTION = 0.5


@dataclass(frozen=True)
class Timings:
    """What a replica tells its agents, derived from the node lease TTL and the number of
    sessions it holds.

    The heartbeat interval is TTL/6 while the replica's heartbeats stay under
    `max_beats_per_s`; beyond, it grows so they do, up to TTL/2 (at a 3 s TTL: 0.5 s up to
    1,000 sessions, 1.5 s from 3,000). Safety does not depend on it: an agent fences at the
    send time of its newest acked heartbeat + TTL - margin whatever the pace. What the pace
    costs is headroom: an ack must come within TTL - margin - interval, so the ack timeout
    (after which the agent tries another replica) is at most that, and never more than two
    intervals.
    """

    lease_ttl: int
    max_beats_per_s: float = DEFAULT_MAX_HEARTBEATS_PER_S

    @property
    def heartbeat_s(self) -> float:
        """The fastest pace (few sessions)."""
        return max(0.1, self.lease_ttl / 6.0)

    @property
    def fence_margin_s(self) -> float:
        return max(0.1, self.lease_ttl / 6.0)

    def pace(self, sessions: int) -> tuple[float, float]:
        """(heartbeat interval, ack timeout) for a replica holding `sessions` sessions."""
        slowest = max(self.heartbeat_s, self.lease_ttl * MAX_PACE_FRACTION)
        interval = min(max(self.heartbeat_s, sessions / self.max_beats_per_s), slowest)
        headroom = self.lease_ttl - self.fence_margin_s - interval
        return interval, max(0.1, min(2 * interval, headroom))

    def response(self, session_id: str, sessions: int = 0) -> apb.RegisterResponse:
        interval, ack_timeout = self.pace(sessions)
        return apb.RegisterResponse(
            session_id=session_id, lease_ttl_seconds=self.lease_ttl,
            heartbeat_interval_ms=round(interval * 1000),
            fence_margin_ms=round(self.fence_margin_s * 1000),
            ack_timeout_ms=round(ack_timeout * 1000))
