"""The session's timing: lease TTL, heartbeat interval, fence margin, ack and Register
deadlines. The controller announces them in RegisterResponse; 0 means the default."""

from __future__ import annotations

from dataclasses import dataclass, replace

from viridian.v1 import agent_pb2 as apb

__all__ = ["Timing", "DEFAULT_TTL_S"]

DEFAULT_TTL_S = 3.0
REGISTER_MIN_S = 0.3
REGISTER_MAX_S = 4.0


@dataclass(frozen=True)
class Timing:
    ttl: float          # the node lease's TTL
    heartbeat: float    # between two heartbeats
    margin: float       # fence this long before the lease could have lapsed
    ack_timeout: float  # a heartbeat not acked within this long: try the next controller
    explicit_margin: bool = False

    @classmethod
    def for_ttl(cls, ttl: float = DEFAULT_TTL_S) -> Timing:
        ttl = ttl if ttl > 0 else DEFAULT_TTL_S
        return cls(ttl=ttl, heartbeat=ttl / 6.0, margin=ttl / 6.0, ack_timeout=ttl / 3.0)

    @classmethod
    def from_reply(cls, reply: apb.RegisterResponse) -> Timing:
        t = cls.for_ttl(float(reply.lease_ttl_seconds))
        heartbeat = reply.heartbeat_interval_ms / 1000.0 or t.heartbeat
        margin = reply.fence_margin_ms / 1000.0 or t.margin
        ack_timeout = reply.ack_timeout_ms / 1000.0 or 2.0 * heartbeat
        return cls(ttl=t.ttl, heartbeat=max(heartbeat, 0.05), margin=min(margin, t.ttl / 2.0),
                   ack_timeout=max(ack_timeout, 0.1), explicit_margin=bool(reply.fence_margin_ms))

    def with_ttl(self, ttl: float) -> Timing:
        """The TTL in force changed (an ack says so); a default margin follows it."""
        if ttl <= 0 or ttl == self.ttl:
            return self
        margin = self.margin if self.explicit_margin else ttl / 6.0
        return replace(self, ttl=ttl, margin=min(margin, ttl / 2.0))

    def with_pace(self, heartbeat_ms: int, ack_timeout_ms: int) -> Timing:
        """The controller changed the pace (an ack says so; 0 = unchanged). The fence does
        not depend on it: only the TTL and margin set the contact deadline."""
        heartbeat = max(heartbeat_ms / 1000.0, 0.05) if heartbeat_ms else self.heartbeat
        ack_timeout = max(ack_timeout_ms / 1000.0, 0.1) if ack_timeout_ms else self.ack_timeout
        if (heartbeat, ack_timeout) == (self.heartbeat, self.ack_timeout):
            return self
        return replace(self, heartbeat=heartbeat, ack_timeout=ack_timeout)

    def register_timeout(self, failed_rounds: int) -> float:
        """Short, so a hung controller costs little of the TTL; longer after whole rounds
        of addresses failed, in case every controller is merely slow."""
        base = max(REGISTER_MIN_S, self.ttl / 4.0)
        return min(base * 2.0 ** min(failed_rounds, 8), max(REGISTER_MAX_S, base))
