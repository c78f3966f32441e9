"""The checker: while faults run, scans what etcd says and what actually runs every ~150 ms
and counts violations of Viridian's promises (rules.py has the rules, (a) to (g)).

Graces, and why:

- (a) two live workers, (c) over-commit and (d) a missing partition are violations at
  once: none of them is ever allowed, not even briefly. A double is confirmed by a second
  pass over its workers after the scan (each still alive with the same start time): both
  processes then lived throughout the interval between the two passes, together.
- (b) a worker with no binding at its epoch, and (e) a Running partition without its live
  worker, are allowed for TTL + GRACE_S = 3 + 2 s. TTL because that is the fence the design
  gives itself (an agent cut off stops its workers after the lease TTL; a stale worker may
  run that long). GRACE_S = 2 s covers what follows the TTL on this machine: the worker's
  own shutdown and exit (well under 1 s), the leader noticing the lapsed lease and writing
  the eviction (the product's own HA grace is 1 s), and the checker's scan interval and
  etcd read. It is short enough that a fault held for 6-8 s shows a defect plainly.
- (f) HA partitions must be Running 10 s after the faults stop (the suite's requirement).
- (g) the settle period is 20 s: transitions here take well under 2 s; 20 s is ten times
  that, for a loaded 2-core machine.

Timing is conservative: a condition's start is the end of the scan that first saw it, and
"now" is the start of the scan that sees it again, so a measured duration is never longer
than the real one. A scan whose etcd read fails is counted (scans_failed) and is no
evidence either way, except that (b) needs no etcd once established (an epoch's binding,
once gone, cannot come back) and that a live worker seen on disk ends an (e).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import rules
from etcd_view import EtcdUnavailable, Snapshot
from worker_view import Worker, alive

__all__ = ["GRACE_S", "LIMIT_S", "SETTLE_S", "TTL_S", "Checker", "Incident", "Scan"]

TTL_S = 3.0  # the compose file's --lease-ttl
GRACE_S = 2.0
LIMIT_S = TTL_S + GRACE_S
HA_RUNNING_S = 10.0
SETTLE_S = 20.0
SCAN_INTERVAL_S = 0.15
KINDS = rules.KINDS


@dataclass
class Incident:
    """One condition, from when a scan first saw it until one saw it gone."""

    kind: str
    subject: str  # the partition or node it concerns
    key: tuple[Any, ...]
    first_seen: float
    last_seen: float
    detail: str
    scenario: str
    violation: bool = False  # counted: it broke a rule (past its grace, if it has one)
    confirmed_at: float | None = None
    closed: bool = False

    def as_dict(self, t0: float) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail,
                "scenario": self.scenario, "at_s": round(self.first_seen - t0, 2),
                "lasted_s": round(self.last_seen - self.first_seen, 2),
                "open": not self.closed}


@dataclass
class Scan:
    """One scan: when it started and ended, and what it saw."""

    start: float
    end: float
    snap: Snapshot | None
    workers: list[Worker]
    not_steady: list[str] = field(default_factory=list)

    @property
    def steady(self) -> bool:
        return self.snap is not None and not self.not_steady


class Checker:
    """Scans on a thread of its own between start() and stop(). `read_etcd` returns a
    Snapshot (or raises EtcdUnavailable), `read_workers` the live workers; `nodes` are the
    node names that must be Ready in the steady state."""

    def __init__(self, read_etcd: Callable[[], Snapshot], read_workers: Callable[[],
                 list[Worker]], nodes: Sequence[str], *, limit: float = LIMIT_S,
                 interval: float = SCAN_INTERVAL_S, is_alive: Callable[[Worker], bool] = alive,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.read_etcd = read_etcd
        self.read_workers = read_workers
        self.nodes = list(nodes)
        self.limit = limit
        self.interval = interval
        self.is_alive = is_alive
        self.clock = clock
        self.scenario = "setup"
        self.t0 = clock()
        self.scans_ok = 0
        self.scans_failed = 0
        self.last_error = ""
        self.incidents: list[Incident] = []
        self.expected: dict[str, bool] = {}  # acknowledged partition -> HA
        self.last: Scan | None = None
        self._open: dict[tuple[Any, ...], Incident] = {}
        self._reported: set[tuple[str, str]] = set()  # (f)/(g) recorded, not resolved since
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the test tells it --

    def expect(self, name: str, ha: bool) -> None:
        """`name` was created and acknowledged: it must never be missing from etcd."""
        with self._cond:
            self.expected[name] = ha

    def forget(self, name: str) -> None:
        """A delete of `name` is about to be sent: from now on it may be gone."""
        with self._cond:
            self.expected.pop(name, None)

    @property
    def ha(self) -> list[str]:
        return [n for n, ha in self.expected.items() if ha]

    # -- the scanning thread --

    def start(self) -> Checker:
        self._thread = threading.Thread(target=self._run, daemon=True, name="fault-checker")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self.clock()
            self.scan_once()
            self._stop.wait(max(0.0, self.interval - (self.clock() - began)))

    def scan_once(self) -> Scan:
        start = self.clock()
        snap: Snapshot | None = None
        try:
            snap = self.read_etcd()
        except EtcdUnavailable as err:
            self.last_error = str(err)
        workers = self.read_workers()
        end = self.clock()
        scan = Scan(start, end, snap, workers)
        with self._cond:
            if snap is None:
                self.scans_failed += 1
            else:
                self.scans_ok += 1
            self._judge(scan)
            self.last = scan
            self._cond.notify_all()
        return scan

    # -- the rules over time --

    def _judge(self, scan: Scan) -> None:
        seen: set[tuple[Any, ...]] = set()
        live = {(w.node, w.pid, w.start) for w in scan.workers}

        for name, ws in rules.doubles(scan.workers).items():
            if all(self.is_alive(w) for w in ws):  # the second pass: together, for sure
                key = ("double", name, frozenset((w.node, w.pid, w.start) for w in ws))
                self._see(key, scan, name, "; ".join(str(w) for w in ws), grace=False)
                seen.add(key)

        if scan.snap is not None:
            for (node, pid, start), w in rules.unbound_workers(scan.workers, scan.snap).items():
                b = scan.snap.bindings.get(w.name)
                where = f"bound to {b.node} at epoch {b.revision}" if b else "not bound"
                key = ("unbound_worker", w.name, node, pid, start)
                self._see(key, scan, w.name, f"{w}; etcd: {where}", grace=True)
            for node, what in rules.overcommitted(scan.snap).items():
                key = ("overcommit", node)
                self._see(key, scan, node, what, grace=False)
                seen.add(key)
            for name in rules.missing(self.expected, scan.snap):
                key = ("missing", name)
                self._see(key, scan, name, "acknowledged, never deleted, not in etcd",
                          grace=False)
                seen.add(key)
            for (name, node, epoch), what in rules.running_without_worker(
                    scan.snap, scan.workers).items():
                key = ("running_without_worker", name, node, epoch)
                self._see(key, scan, name, what, grace=True)
                seen.add(key)

        for key, inc in list(self._open.items()):
            kind = key[0]
            if kind == "unbound_worker":
                gone = key[2:] not in live  # once established it lasts until the worker ends
            elif kind == "running_without_worker":
                _, name, node, epoch = key
                gone = any(w.name == name and w.node == node and
                           (epoch is None or w.epoch == epoch) for w in scan.workers)
                gone = gone or (scan.snap is not None and key not in seen)
            elif kind == "double":
                gone = key not in seen
            else:  # overcommit, missing: etcd says, when it answers
                gone = scan.snap is not None and key not in seen
            if gone:
                inc.closed = True
                del self._open[key]
            else:
                inc.last_seen = max(inc.last_seen, scan.start)
                if not inc.violation and scan.start - inc.first_seen > self.limit and (
                        kind == "unbound_worker" or scan.snap is not None):
                    self._confirm(inc, scan.start)

        if scan.snap is not None:
            stuck = rules.transitional(scan.snap)
            for kind, name in list(self._reported):
                p = scan.snap.partitions.get(name)
                if p is None or (kind == "ha_not_running" and rules.phase(p) == "RUNNING") \
                        or (kind == "stuck" and name not in stuck):
                    self._reported.discard((kind, name))
            scan.not_steady = rules.not_steady(scan.snap, scan.workers, self.nodes, self.ha)
            scan.not_steady += [f"open {i.kind}: {i.subject}" for i in self._open.values()]

    def _see(self, key: tuple[Any, ...], scan: Scan, subject: str, detail: str,
             grace: bool) -> None:
        inc = self._open.get(key)
        if inc is None:
            inc = Incident(key[0], subject, key, scan.end, scan.end, detail, self.scenario)
            self._open[key] = inc
            self.incidents.append(inc)
            if not grace:
                self._confirm(inc, scan.end)
        inc.detail = detail

    def _confirm(self, inc: Incident, at: float) -> None:
        inc.violation = True
        inc.confirmed_at = at

    def record(self, kind: str, subject: str, detail: str) -> Incident | None:
        """A violation found by a check outside the scans ((f), (g)). A partition already
        recorded for this kind, and not seen out of it since, is not counted again."""
        now = self.clock()
        with self._cond:
            if (kind, subject) in self._reported:
                return None
            self._reported.add((kind, subject))
            inc = Incident(kind, subject, (kind, subject, now), now, now, detail,
                           self.scenario, violation=True, confirmed_at=now, closed=True)
            self.incidents.append(inc)
        return inc

    # -- results --

    def violations(self, since: float | None = None) -> list[Incident]:
        """Violations whose condition began at or after `since` (all if None)."""
        with self._cond:
            return [i for i in self.incidents if i.violation
                    and (since is None or i.first_seen >= since)]

    def counts(self, since: float | None = None) -> dict[str, int]:
        out = dict.fromkeys(KINDS, 0)
        for inc in self.violations(since):
            out[inc.kind] += 1
        return out

    def summary(self, since: float | None = None) -> dict[str, Any]:
        return {"scans_ok": self.scans_ok, "scans_failed": self.scans_failed,
                "violations": self.counts(since),
                "incidents": [i.as_dict(self.t0) for i in self.violations(since)]}

    # -- waits (conditions with deadlines) --

    def wait_scan(self, pred: Callable[[Scan], bool], since: float,
                  timeout: float) -> Scan | None:
        """The first scan that started at or after `since` and satisfies pred, or None."""
        deadline = self.clock() + timeout
        checked: Scan | None = None
        with self._cond:
            while True:
                scan = self.last
                if scan is not None and scan is not checked and scan.start >= since:
                    checked = scan
                    if pred(scan):
                        return scan
                left = deadline - self.clock()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))

    def wait_steady(self, since: float, timeout: float) -> float | None:
        """Seconds from `since` to the end of the first steady scan after it (None: none
        within timeout)."""
        scan = self.wait_scan(lambda s: s.steady, since, timeout)
        return None if scan is None else scan.end - since

    def check_ha_running(self, healed_at: float, within: float = HA_RUNNING_S) -> bool:
        """(f): every HA partition Running in etcd within `within` s of healed_at."""
        def all_running(s: Scan) -> bool:
            return s.snap is not None and all(
                n in s.snap.partitions and rules.phase(s.snap.partitions[n]) == "RUNNING"
                for n in self.ha)

        left = max(0.0, healed_at + within - self.clock())
        if self.wait_scan(all_running, healed_at, left) is not None:
            return True
        last = self.last
        if last is None or last.snap is None:
            self.record("ha_not_running", ",".join(self.ha),
                        f"etcd unreadable {within:g}s after the faults stopped")
            return False
        for n in self.ha:
            p = last.snap.partitions.get(n)
            if p is None or rules.phase(p) != "RUNNING":
                self.record("ha_not_running", n,
                            f"{rules.phase(p) if p else 'absent'} {within:g}s after the "
                            f"faults stopped ({p.status.reason if p else ''})")
        return False

    def check_settled(self, healed_at: float, settle: float = SETTLE_S) -> bool:
        """(g): nothing in a transitional phase by `settle` s after healed_at."""
        left = max(0.0, healed_at + settle - self.clock())
        scan = self.wait_scan(lambda s: s.snap is not None and not rules.transitional(s.snap),
                              healed_at, left)
        if scan is not None:
            return True
        last = self.last
        stuck = rules.transitional(last.snap) if last is not None and last.snap else {}
        for name, ph in stuck.items():
            assert last is not None and last.snap is not None
            reason = last.snap.partitions[name].status.reason
            self.record("stuck", name, f"{ph} {settle:g}s after the faults stopped ({reason})")
        if not stuck:
            self.record("stuck", "-", f"etcd unreadable {settle:g}s after the faults stopped")
        return False

    def open_incidents(self) -> list[Incident]:
        with self._cond:
            return list(self._open.values())

    def describe(self, incidents: Iterable[Incident]) -> str:
        return "\n".join(f"  {i.kind:<23} {i.subject:<14} +{i.first_seen - self.t0:7.2f}s "
                         f"{i.last_seen - i.first_seen:5.1f}s  [{i.scenario}] {i.detail}"
                         for i in incidents)
