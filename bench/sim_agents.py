"""Simulated node agents: many real gRPC sessions from one process, without guests.

    python bench/sim_agents.py --controllers A[,B] --agents N [--prefix sim-] [--first 0]
                               [--stats-every 5]

Each simulated node runs the real agent's session code (node_agent.session:
ControllerSession: Register, the session stream, numbered heartbeats, acks matched to them,
moving on to the next controller when one is not acked in time) with a SessionHost that
keeps its partitions in a dict: an assignment is reported Running at once, a STOP reported
Off, a FORGET dropped. Contact is recorded instead of fencing: the ack latency of every
heartbeat is kept, and a node whose contact deadline passed (where a real agent would have
fenced) is counted.

Every --stats-every seconds it prints one JSON line on stdout (bench/scale.py reads them):
sessions up, nodes ever acked, ack latency p50/p99 (ms) since the last line, heartbeats
acked, sessions ended, nodes past their fence deadline, partitions running, reports sent,
and how late this process's own event loop ran (loop_lag_max_ms): a simulator that lags
sends heartbeats late and reads acks late, which must not be blamed on the controller.
Several processes (with --first apart) share the work when one loop is not enough.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "proto")]

from viridian.v1 import agent_pb2 as apb  # noqa: E402
from viridian.v1 import agent_pb2_grpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.gc_policy import GcPauses, tune_for_server  # noqa: E402
from controller.security.tls import Dialer  # noqa: E402
from node_agent.agent import round_pause  # noqa: E402
from node_agent.clock import BootClock  # noqa: E402
from node_agent.session import ControllerSession, Outbox, RegisterRefused  # noqa: E402
from node_agent.timing import Timing  # noqa: E402

KIND = apb.PartitionCommand


class SharedChannel:
    """A channel used by several simulated nodes: `async with` does not close it. One TCP
    connection (and one keepalive ping a second) per group instead of per node; the
    controller sees the same sessions either way."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def __aenter__(self) -> Any:
        return self.channel

    async def __aexit__(self, *_: object) -> None:
        pass


#: A real agent dials a new channel for every session, so it connects at once to a replica
#: that has just started. A shared channel instead keeps gRPC's reconnect backoff (up to
#: 120 s) from its failures so far: after a replica had been down, the nodes on it failed
#: "to connect to all addresses" for seconds after it was up (11 s of a mass reconnect
#: with no Register reaching the new replica). Short backoff keeps them close to real agents.
RECONNECT = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
             ("grpc.max_reconnect_backoff_ms", 250)]


class GroupDialer(Dialer):
    """Hands out one shared channel per (address, group)."""

    def __init__(self, group: int) -> None:
        super().__init__(None)
        self.group = group
        self.channels: dict[str, Any] = {}

    def aio_channel(self, address: str, options: Any = ()) -> Any:
        if address not in self.channels:
            self.channels[address] = super().aio_channel(address, [*options, *RECONNECT])
        return SharedChannel(self.channels[address])


class Stats:
    """What every simulated node adds to; read and reset by the printer."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.acked = 0
        self.sessions_up = 0
        self.ever_acked: set[str] = set()
        self.sessions_ended = 0
        self.ended_why: dict[str, int] = {}
        self.past_deadline: set[str] = set()
        self.reports = 0
        self.assigns = 0
        self.gc_worst = 0.0   # the longest collection since the last line
        self.pace = 0.0   # the heartbeat interval of the newest ack (the replica's pace)


class SimNode:
    """One node: a SessionHost for ControllerSession and a contact sink for its acks."""

    def __init__(self, name: str, stats: Stats, clock: BootClock, vcpus: int,
                 memory: int) -> None:
        self.name = name
        self.stats = stats
        self.clock = clock
        self.spec = pb.NodeSpec(vcpus=vcpus, memory_bytes=memory, arches=[pb.ARCH_X86_64])
        self.running: dict[str, int] = {}
        self.outbox: Outbox | None = None
        self.deadline = 0.0

    # -- SessionHost -----------------------------------------------------------------
    def register_request(self) -> apb.RegisterRequest:
        return apb.RegisterRequest(node=self.name, spec=self.spec, running=[
            apb.PartitionReport(name=n, epoch=e, phase=pb.PARTITION_PHASE_RUNNING)
            for n, e in sorted(self.running.items())])

    def heartbeat(self) -> apb.Heartbeat:
        return apb.Heartbeat(running=len(self.running), inventory=[
            apb.InventoryEntry(name=n, epoch=e) for n, e in sorted(self.running.items())])

    def registered(self, reply: apb.RegisterResponse) -> None:
        pass

    def attach(self, gateway: agent_pb2_grpc.AgentGatewayStub | None,
               outbox: Outbox | None) -> None:
        self.outbox = outbox

    def handle(self, msg: apb.ControllerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "assign":
            a = msg.assign
            self.stats.assigns += 1
            self.running[a.name] = a.epoch
            self._report(a.name, a.epoch, pb.PARTITION_PHASE_RUNNING)
        elif kind == "command":
            c = msg.command
            if c.kind == KIND.KIND_STOP and self.running.get(c.name) == c.epoch:
                del self.running[c.name]
                self._report(c.name, c.epoch, pb.PARTITION_PHASE_OFF, "stopped by request")
            elif c.kind == KIND.KIND_FORGET and (c.epoch == 0 or
                                                  self.running.get(c.name) == c.epoch):
                self.running.pop(c.name, None)

    def _report(self, name: str, epoch: int, phase: int, reason: str = "") -> None:
        if self.outbox is not None:
            report = apb.PartitionReport(name=name, epoch=epoch, phase=phase,  # type: ignore[arg-type]
                                         reason=reason)
            report.time.GetCurrentTime()
            self.outbox.put(apb.AgentMessage(report=report), urgent=True)
            self.stats.reports += 1

    # -- ContactSink -----------------------------------------------------------------
    def contact(self, sent_at: float, timing: Timing) -> bool:
        now = self.clock.now()
        if self.deadline and now > self.deadline:
            self.stats.past_deadline.add(self.name)   # a real agent would have fenced
        self.deadline = max(self.deadline, sent_at + timing.ttl - timing.margin)
        self.stats.latencies.append(now - sent_at)
        self.stats.pace = timing.heartbeat
        self.stats.acked += 1
        self.stats.ever_acked.add(self.name)
        return True

    async def run(self, controllers: list[str], stop: asyncio.Event, dialer: Dialer) -> None:
        """The real agent's connect loop (node_agent/agent.py): the next address after any
        failure; a pause with jitter, doubling, only once a whole round failed."""
        index = failed = rounds = 0   # every node starts on the first controller
        asked = 0.0
        timing = Timing.for_ttl()
        while not stop.is_set():
            address = controllers[index % len(controllers)]
            index += 1
            session = ControllerSession(self.name, address, self, self, self.clock,
                                        timing.register_timeout(rounds), stop, dialer)
            self.stats.sessions_up += 1
            try:
                outcome = await session.run()
            except RegisterRefused as err:
                print(f"{self.name}: refused: {err}", file=sys.stderr)
                return
            finally:
                self.stats.sessions_up -= 1
            if stop.is_set():
                return
            if outcome.timing is not None:
                timing = outcome.timing
            self.stats.sessions_ended += 1
            # the first words say which step failed and how (register UNAVAILABLE, ...)
            why = re.sub(r"\d+", "N", " ".join(outcome.why.replace(":", " ").split()[:3]))
            self.stats.ended_why[why] = self.stats.ended_why.get(why, 0) + 1
            if outcome.acked:
                failed = rounds = 0
                asked = 0.0
                continue
            failed += 1
            asked = max(asked, outcome.retry_after)
            if failed % len(controllers):
                continue
            rounds += 1
            await asyncio.sleep(round_pause(rounds, asked))
            asked = 0.0


class LoopLag:
    """The worst lateness of a 100 ms timer on this process's loop since last read."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.1
            await asyncio.sleep(0.1)
            self.worst = max(self.worst, loop.time() - due)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main_async(args: argparse.Namespace) -> None:
    stats = Stats()
    clock = BootClock()
    stop = asyncio.Event()
    controllers = args.controllers.split(",")
    nodes = [SimNode(f"{args.prefix}{i:05d}", stats, clock, args.vcpus, args.memory)
             for i in range(args.first, args.first + args.agents)]
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.run())
    dialers = [GroupDialer(g) for g in range((args.agents + args.per_channel - 1)
                                             // args.per_channel)]
    tasks = []
    for i, node in enumerate(nodes):   # ramp up: a burst of registrations is its own test
        dialer = dialers[i // args.per_channel]
        tasks.append(asyncio.create_task(node.run(controllers, stop, dialer)))
        if i % args.ramp_batch == args.ramp_batch - 1:
            await asyncio.sleep(args.ramp_pause)
    # The replica's own collection policy: with the defaults, a process holding 2,500
    # nodes and their partitions stopped for a full collection long enough (over the 3 s
    # TTL) that the replica rightly ended every session in it as silent, and their
    # partitions were evicted (bench/scale.py, 100,000 partitions).
    tune_for_server()
    pauses = GcPauses(lambda _gen, took: setattr(stats, "gc_worst", max(stats.gc_worst, took)))
    pauses.install()
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(args.stats_every)
            lat, stats.latencies = stats.latencies, []
            lag_max, lag.worst = lag.worst, 0.0
            gc_max, stats.gc_worst = stats.gc_worst, 0.0
            line: dict[str, Any] = {
                "t": round(time.monotonic() - started, 2),
                "sessions_up": stats.sessions_up, "ever_acked": len(stats.ever_acked),
                "acked": stats.acked, "ack_p50_ms": round(percentile(lat, 0.5) * 1000, 1),
                "ack_p99_ms": round(percentile(lat, 0.99) * 1000, 1),
                "ack_max_ms": round(max(lat, default=0.0) * 1000, 1),
                "loop_lag_max_ms": round(lag_max * 1000, 1),
                "gc_pause_max_ms": round(gc_max * 1000, 1),
                "heartbeat_s": stats.pace,
                "sessions_ended": stats.sessions_ended, "ended_why": stats.ended_why,
                "past_deadline": len(stats.past_deadline),
                "running": sum(len(n.running) for n in nodes), "reports": stats.reports,
                "assigns": stats.assigns,
                "recent_ack_nodes": len({n.name for n in nodes
                                         if n.deadline > clock.now()}),
            }
            print(json.dumps(line), flush=True)
    finally:
        stop.set()
        lag_task.cancel()
        await asyncio.gather(*tasks, lag_task, return_exceptions=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controllers", required=True, help="agent addresses, comma-separated")
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--prefix", default="sim-")
    parser.add_argument("--first", type=int, default=0, help="number of the first node "
                        "(processes sharing a cluster take ranges apart)")
    parser.add_argument("--vcpus", type=int, default=256)
    parser.add_argument("--memory", type=int, default=256 << 30)
    parser.add_argument("--stats-every", type=float, default=5.0)
    parser.add_argument("--per-channel", type=int, default=1,
                        help="simulated nodes sharing one gRPC channel (1: one each, as "
                        "real agents)")
    parser.add_argument("--ramp-batch", type=int, default=100)
    parser.add_argument("--ramp-pause", type=float, default=0.2)
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
