"""The control plane at scale: thousands of agents, many partitions, a mass reconnect.

    python bench/scale.py [--agents 5000] [--partitions 1000000] [--minutes 10]
                          [--lease-ttl 3] [--sim-processes 1] [--json FILE]

Everything runs on this machine as real processes over real sockets: one etcd, two
controller replicas (plaintext), and --sim-processes processes of simulated agents
(bench/sim_agents.py: the real agent's session code, no guests; their stats lines merged:
counts summed, latencies the worst of them). In order:

1. **Agents held.** The agents register with replica A (the first address they have) and
   heartbeat at the rate the lease TTL sets; the bench waits until ListNodes shows them all
   Ready, then holds for --minutes, polling ListNodes. `false_not_ready` counts nodes seen
   NotReady during the hold plus simulated nodes whose contact deadline passed (where a real
   agent would have fenced); ack latency is measured by the agents (send to ack).
   Controller A's CPU (cores used over the hold) and RSS are read from /proc, and from its
   metrics over the hold: heartbeat ack wait, lease renewal time and event-loop lag
   (quantiles as the histogram bucket bounds they fall in: "at most").
2. **Partitions.** --partitions are created (desired Running, 1 vCPU, 16Mi) through the API
   with 256 calls in flight; `committed_per_s` is partitions over the time from the first
   create until the agents run them all (placed, bound, assigned and reported Running).
3. **`viridian ls` first page**: a real CLI process, time until its first screen (40 lines).
4. **Mass reconnect.** Replica B starts only now (until then an agent that gave up on a
   busy A found B refusing and came back: A holds every session). A is killed (SIGKILL, by
   its pid); `reconnect_s` is the time until B holds every session (its
   viridian_sessions_open) and ListNodes on B shows them all Ready; assignments sent after
   the kill (a partition restarted) are counted.
5. etcd's database size (its metrics) and controller B's RSS.

It prints a table and, with --json, writes agents_held, false_not_ready, ack_p99_ms,
reconnect_s, partitions, committed_per_s, controller_rss_mib, etcd_db_mib and
ls_first_page_s (with more detail beside them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "proto")]

import grpc  # noqa: E402
from viridian.v1 import controller_pb2 as cpb  # noqa: E402
from viridian.v1 import controller_pb2_grpc as cgrpc  # noqa: E402
from viridian.v1 import types_pb2 as pb  # noqa: E402

from controller.embedded import wait_serving  # noqa: E402
from controller.etcd_server import EtcdProcess, free_port  # noqa: E402
from node_agent.metrics import cpu_seconds as process_cpu_seconds  # noqa: E402
from node_agent.metrics import resident_bytes  # noqa: E402

MIB = 1 << 20
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "PYTHONUNBUFFERED": "1"}


def cpu_seconds(pid: int) -> float:
    return process_cpu_seconds(pid) or 0.0


def rss_mib(pid: int) -> float:
    return (resident_bytes(pid) or 0) / MIB


#: the replicas' log level (their logs stay in the work directory)
LOG_LEVEL = os.environ.get("SCALE_REPLICA_LOG_LEVEL", "warning")


class Replica:
    def __init__(self, work: Path, etcd: str, ttl: int, name: str,
                 max_beats: float = 2000.0) -> None:
        self.api = f"127.0.0.1:{free_port()}"
        self.agents = f"127.0.0.1:{free_port()}"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.log = work / f"{name}.log"
        self.args = (work, etcd, ttl, name, max_beats)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the replica (its addresses are known before: agents may be given them)."""
        work, etcd, ttl, name, max_beats = self.args
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "controller", "--listen", self.api,
                 "--agent-listen", self.agents, "--etcd", etcd, "--insecure",
                 "--lease-ttl", str(ttl), "--data-dir", str(work / name),
                 "--metrics-listen", self.metrics, "--log-level", LOG_LEVEL,
                 "--max-heartbeats-per-second", str(max_beats)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=ENV,
                start_new_session=True)
        self.channel = grpc.insecure_channel(self.api, options=[
            ("grpc.max_receive_message_length", 64 * MIB)])
        self.stub = cgrpc.ControllerStub(self.channel)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_serving(self, timeout: float = 60) -> None:
        assert self.proc is not None
        wait_serving(self.api, self.proc, self.log, timeout=timeout)

    def sessions(self) -> int:
        """Agent sessions it holds (its viridian_sessions_open gauge)."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=30) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("viridian_sessions_open "):
                    return int(float(line.split()[1]))
        return 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)   # its own session: only its processes
            self.proc.wait()

    def _families(self) -> list[Any]:
        """Its metrics, scraped once and parsed."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=30) as resp:
            return list(text_string_to_metric_families(resp.read().decode()))

    def histograms(self) -> dict[str, dict[float, float]]:
        """Every histogram of its metrics: name -> {upper bound: cumulative count}."""
        out: dict[str, dict[float, float]] = {}
        for fam in self._families():
            if fam.type == "histogram":
                buckets = out.setdefault(fam.name, {})
                for sample in fam.samples:   # summed over other labels (gc generations)
                    if sample.name.endswith("_bucket"):
                        le = float(sample.labels["le"])
                        buckets[le] = buckets.get(le, 0.0) + sample.value
        return out

    def total_labelled(self, sample: str, value: str) -> float:
        """One sample of its metrics, only where some label has `value`."""
        return sum(x.value for fam in self._families() for x in fam.samples
                   if x.name == sample and value in x.labels.values())

    def total(self, sample: str) -> float:
        """One sample of its metrics, summed over labels (e.g. a histogram's _count)."""
        return sum(x.value for fam in self._families() for x in fam.samples
                   if x.name == sample)

    def nodes(self) -> tuple[int, set[str]]:
        """(nodes Ready, names not Ready), read page by page."""
        ready, not_ready, token = 0, set(), ""
        while True:
            page = self.stub.ListNodes(cpb.ListNodesRequest(page_size=1000, page_token=token),
                                       timeout=60)
            for n in page.nodes:
                if n.status.state == pb.NODE_STATE_READY:
                    ready += 1
                else:
                    not_ready.add(n.name)
            token = page.next_page_token
            if not token:
                return ready, not_ready


def quantile_at_most(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The smallest bucket bound holding the q-quantile of what was observed between two
    scrapes of a histogram (inf when it is past every bound, 0 when nothing was)."""
    bounds = sorted(after)
    total = after.get(math.inf, 0.0) - before.get(math.inf, 0.0)
    if total <= 0:
        return 0.0
    for le in bounds:
        if after[le] - before.get(le, 0.0) >= q * total:
            return le
    return math.inf


SUMMED = ("sessions_up", "ever_acked", "acked", "sessions_ended", "past_deadline", "running",
          "reports", "assigns", "recent_ack_nodes")
WORST = ("t", "ack_p50_ms", "ack_p99_ms", "ack_max_ms", "loop_lag_max_ms", "gc_pause_max_ms",
         "heartbeat_s")


def merge_lines(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """One stats line for several simulator processes: counts summed, latencies the worst
    (a p99 of the whole fleet is at most the worst process's)."""
    merged: dict[str, Any] = {k: sum(line[k] for line in lines) for k in SUMMED}
    merged.update({k: max(line[k] for line in lines) for k in WORST})
    why: dict[str, int] = {}
    for line in lines:
        for k, v in line["ended_why"].items():
            why[k] = why.get(k, 0) + v
    merged["ended_why"] = why
    return merged


class SimProcess:
    """One simulated agents' process and the stats lines it prints."""

    def __init__(self, work: Path, controllers: list[str], first: int, count: int,
                 per_channel: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "sim_agents.py"), "--controllers",
             ",".join(controllers), "--agents", str(count), "--first", str(first),
             "--stats-every", "1", "--per-channel", str(per_channel)],
            stdout=subprocess.PIPE, stderr=open(work / f"sim-{first}.log", "ab"), text=True,
            env=ENV, start_new_session=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))


class SimAgents:
    """The simulated agents, split over `processes` processes, as one stream of lines."""

    def __init__(self, work: Path, controllers: list[str], count: int,
                 per_channel: int, processes: int = 1) -> None:
        share = -(-count // processes)
        self.procs = [SimProcess(work, controllers, first, min(share, count - first),
                                 per_channel) for first in range(0, count, share)]
        self.last: dict[str, Any] = {}
        self.worst: dict[str, float] = {}   # the simulators' worst stalls since reset_worst()

    def reset_worst(self) -> None:
        self.worst = {}

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs]

    def next(self, timeout: float = 30) -> dict[str, Any]:
        self.last = merge_lines([p.lines.get(timeout=timeout) for p in self.procs])
        for key in ("loop_lag_max_ms", "gc_pause_max_ms"):
            self.worst[key] = max(self.worst.get(key, 0.0), self.last[key])
        return self.last

    def latest(self) -> dict[str, Any]:
        """A line printed after this call began (the ones queued before are skipped)."""
        for p in self.procs:
            while not p.lines.empty():
                p.lines.get_nowait()
        return self.next()

    def until(self, check: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next()
            if check(line):
                return line
        raise RuntimeError(f"{what}: not true within {timeout:.0f}s; last {self.last}")

    def stop(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                os.killpg(p.proc.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.proc.pid, signal.SIGKILL)
                p.proc.wait()


def push_guest(stub: cgrpc.ControllerStub, work: Path) -> None:
    src, out = work / "true.c", work / "true"
    src.write_text("int main(void) { return 0; }\n")
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True)
    data = out.read_bytes()

    def reqs() -> Any:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(name="bench-true", format="elf",
                                                          size_bytes=len(data)))
        for i in range(0, len(data), MIB):
            yield cpb.PushImageRequest(chunk=data[i:i + MIB])

    stub.PushImage(reqs(), timeout=60)


async def create_partitions(address: str, count: int, in_flight: int = 256) -> float:
    """Create `count` partitions; the seconds it took."""
    started = time.monotonic()
    async with grpc.aio.insecure_channel(address) as channel:
        stub: Any = cgrpc.ControllerStub(channel)
        next_index = iter(range(count))

        async def worker() -> None:
            for i in next_index:
                await stub.CreatePartition(cpb.CreatePartitionRequest(
                    name=f"p-{i:07d}", spec=pb.PartitionSpec(
                        image="bench-true", vcpus=1, memory_bytes=16 * MIB)), timeout=120)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.monotonic() - started


def ls_first_page(api: str, lines: int = 40) -> float:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "--insecure",
                             "--controller", api, "ls"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV)
    assert proc.stdout is not None
    got = 0
    for _ in proc.stdout:
        got += 1
        if got >= lines:
            break
    took = time.monotonic() - started
    proc.kill()
    proc.wait()
    return took


def etcd_db_bytes(etcd: EtcdProcess) -> int:
    import urllib.request

    url = f"http://127.0.0.1:{etcd.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("etcd_mvcc_db_total_size_in_bytes "):
                return int(float(line.split()[1]))
    return 0


def quantiles(prefix: str, before: dict[str, dict[float, float]],
              after: dict[str, dict[float, float]],
              names: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """p50 and p99 (ms, "at most": bucket bounds) of each histogram between two scrapes,
    keyed PREFIX + KEY + _p50_ms_at_most."""
    out: dict[str, float] = {}
    for key, name in names:
        for q in (0.5, 0.99):
            bound = quantile_at_most(before.get(name, {}), after.get(name, {}), q)
            out[f"{prefix}{key}_p{round(q * 100)}_ms_at_most"] = round(bound * 1000, 1)
    return out


def run(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Fill `result` as each step ends (a step that fails leaves what came before)."""
    work = Path(tempfile.mkdtemp(prefix="vscale-", dir="/tmp"))
    etcd = EtcdProcess(work / "etcd", quota_bytes=8 << 30)
    result.update({"agents": args.agents, "lease_ttl_s": args.lease_ttl,
                   "max_heartbeats_per_s": args.max_beats,
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores"})
    a = b = sim = None
    try:
        etcd.start()
        a = Replica(work, etcd.endpoint, args.lease_ttl, "replica-a", args.max_beats)
        a.start()
        a.wait_serving()
        # B starts only for the reconnect: until then an agent that gives up on A (a busy
        # Register) finds B refusing and comes back, so A really holds every session.
        b = Replica(work, etcd.endpoint, args.lease_ttl, "replica-b", args.max_beats)
        push_guest(a.stub, work)

        # 1. agents held
        t0 = time.monotonic()
        sim = SimAgents(work, [a.agents, b.agents], args.agents, args.per_channel,
                        args.sim_processes)
        result["agents_per_channel"] = args.per_channel
        result["sim_processes"] = len(sim.procs)
        sim.until(lambda s: s["ever_acked"] >= args.agents, 60 + args.agents / 20,
                  "every agent acked")
        # Its sessions gauge first (a ListNodes of every node every 0.5 s cost the replica
        # a tenth of its CPU while the agents were registering), then ListNodes to confirm.
        while a.sessions() < args.agents or a.nodes()[0] < args.agents:
            time.sleep(0.5)
        result["agents_ready_s"] = round(time.monotonic() - t0, 2)
        print(f"{args.agents} agents Ready in {result['agents_ready_s']} s", flush=True)
        assert etcd.proc is not None
        cpu0, hold0 = cpu_seconds(a.pid), time.monotonic()
        sim0, etcd0 = sum(map(cpu_seconds, sim.pids)), cpu_seconds(etcd.proc.pid)
        hist0 = a.histograms()
        sim_lags: list[float] = []
        ended0, past0 = sim.last["sessions_ended"], sim.last["past_deadline"]
        not_ready: set[str] = set()
        p99s: list[float] = []
        p50s: list[float] = []
        past_each: list[int] = []
        next_poll = 0.0
        while time.monotonic() - hold0 < args.minutes * 60:
            before = sim.last["past_deadline"]
            line = sim.next()
            past_each.append(line["past_deadline"] - before)
            p99s.append(line["ack_p99_ms"])
            p50s.append(line["ack_p50_ms"])
            sim_lags.append(line["loop_lag_max_ms"])
            if time.monotonic() >= next_poll:
                not_ready |= a.nodes()[1]
                next_poll = time.monotonic() + 10
        held = time.monotonic() - hold0
        hist1 = a.histograms()
        result["sessions_on_a"] = a.sessions()
        line = sim.last
        result.update({
            "agents_held": line["recent_ack_nodes"],
            "heartbeat_interval_s": line["heartbeat_s"],
            "false_not_ready": len(not_ready) + line["past_deadline"] - past0,
            "nodes_seen_not_ready": len(not_ready),
            "sim_past_deadline": line["past_deadline"] - past0,
            "sessions_ended_during_hold": line["sessions_ended"] - ended0,
            "ended_why_since_start": line["ended_why"],
            "ack_p50_ms": sorted(p50s)[len(p50s) // 2] if p50s else 0.0,
            "ack_p99_ms": max(p99s, default=0.0),
            "ack_p99_ms_each_second": p99s,
            "past_deadline_each_second": past_each,
            "hold_s": round(held, 1),
            "controller_cpu_cores": round((cpu_seconds(a.pid) - cpu0) / held, 2),
            "simulator_cpu_cores": round((sum(map(cpu_seconds, sim.pids)) - sim0) / held, 2),
            "simulator_loop_lag_max_ms": max(sim_lags, default=0.0),
            "etcd_cpu_cores": round((cpu_seconds(etcd.proc.pid) - etcd0) / held, 2),
            "controller_rss_mib_agents": round(rss_mib(a.pid), 1),
        })
        result.update(quantiles("controller_", hist0, hist1, (
            ("ack", "viridian_heartbeat_ack_seconds"),
            ("renewal", "viridian_lease_renewal_seconds"),
            ("loop_lag", "viridian_event_loop_lag_seconds"),
            ("gc_pause", "viridian_gc_pause_seconds"))))
        print(json.dumps(result), flush=True)

        # 2. partitions
        result["partitions"] = args.partitions
        if args.partitions:
            t1 = time.monotonic()
            cpu1, etcd1 = cpu_seconds(a.pid), cpu_seconds(etcd.proc.pid)
            requests1 = a.total("viridian_etcd_txn_batch_size_count")
            txns1 = a.total("viridian_etcd_txn_batch_size_sum")
            sim.reset_worst()
            result["create_s"] = round(asyncio.run(create_partitions(a.api, args.partitions)), 2)
            lost = [0, time.monotonic()]   # Lost partitions (A's gauge, read every 10 s)

            def settled(s: dict[str, Any]) -> bool:
                if s["running"] >= args.partitions:
                    return True
                if time.monotonic() - lost[1] >= 10:
                    lost[:] = [int(a.total_labelled("viridian_partitions", "lost")),
                               time.monotonic()]
                return s["running"] + lost[0] >= args.partitions

            sim.until(settled, 600 + args.partitions / 100, "every partition running or lost")
            result["partitions_lost"] = int(a.total_labelled("viridian_partitions", "lost"))
            # a simulator that stalls past the TTL has its nodes rightly declared lost
            result["partitions_sim_loop_lag_max_ms"] = sim.worst.get("loop_lag_max_ms", 0.0)
            result["partitions_sim_gc_pause_max_ms"] = sim.worst.get("gc_pause_max_ms", 0.0)
            total = time.monotonic() - t1
            result["partitions_total_s"] = round(total, 2)
            result["committed_per_s"] = round(sim.last["running"] / total, 1)
            result["created_per_s"] = round(args.partitions / result["create_s"], 1)
            requests = a.total("viridian_etcd_txn_batch_size_count") - requests1
            txns = a.total("viridian_etcd_txn_batch_size_sum") - txns1
            # etcd transactions (the replica's writes) and the requests that carried them
            result["etcd_txns_per_partition"] = round(txns / args.partitions, 2)
            result["etcd_requests_per_partition"] = round(requests / args.partitions, 3)
            result["controller_cpu_cores_partitions"] = round(
                (cpu_seconds(a.pid) - cpu1) / total, 2)
            result["etcd_cpu_cores_partitions"] = round(
                (cpu_seconds(etcd.proc.pid) - etcd1) / total, 2)
            result["controller_rss_mib"] = round(rss_mib(a.pid), 1)
            print(json.dumps(result), flush=True)
            # 3. ls
            result["ls_first_page_s"] = round(ls_first_page(a.api), 3)
            result["etcd_db_mib"] = round(etcd_db_bytes(etcd) / MIB, 1)
            print(json.dumps(result), flush=True)

        # 4. mass reconnect
        if not args.skip_reconnect:
            b.start()
            b.wait_serving()
            assigns_before = sim.last["assigns"]
            running_before = sim.last["running"]
            cpu_b, cpu_sims = cpu_seconds(b.pid), sum(map(cpu_seconds, sim.pids))
            hist_b0 = b.histograms()
            t2 = time.monotonic()
            a.kill()
            # Every session on B (A's acks no longer count: their deadlines outlive the kill
            # by up to TTL - margin), then every node Ready there.
            deadline = time.monotonic() + 300
            past1, ended1 = sim.last["past_deadline"], sim.last["sessions_ended"]
            why1 = dict(sim.last["ended_why"])
            lags: list[float] = []

            def drain() -> None:   # the simulators' lines so far (their loop lag)
                for p in sim.procs:
                    while not p.lines.empty():
                        lags.append(p.lines.get_nowait()["loop_lag_max_ms"])

            timeline: list[int] = []   # B's sessions, about once a second
            while (held_b := b.sessions()) < args.agents:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {held_b} sessions on B after 300 s")
                if time.monotonic() - t2 >= len(timeline):
                    timeline.append(held_b)
                drain()
                time.sleep(0.2)
            result["reconnect_sessions_each_second"] = timeline
            while b.nodes()[0] < args.agents:
                time.sleep(0.2)
            took = time.monotonic() - t2
            result["reconnect_s"] = round(took, 2)
            # where the reconnect's time went: B's and the simulators' CPU, and how many
            # Registers B answered and refused to get every agent back
            result["reconnect_controller_b_cpu_cores"] = round(
                (cpu_seconds(b.pid) - cpu_b) / took, 2)
            result["reconnect_simulator_cpu_cores"] = round(
                (sum(map(cpu_seconds, sim.pids)) - cpu_sims) / took, 2)
            result["reconnect_registers"] = int(b.total("viridian_register_seconds_count"))
            result.update(quantiles("reconnect_controller_b_", hist_b0, b.histograms(), (
                ("loop_lag", "viridian_event_loop_lag_seconds"),
                ("register", "viridian_register_seconds"),
                ("session_open", "viridian_session_open_seconds"),
                ("ack", "viridian_heartbeat_ack_seconds"))))
            result["reconnect_register_refusals"] = int(
                b.total("viridian_register_refusals_total"))
            drain()
            result["reconnect_sim_loop_lag_max_ms"] = max(lags, default=0.0)
            line = sim.latest()
            # agents whose contact deadline passed (a real one would have fenced, stopping
            # its partitions) and sessions that ended, from the kill until all were back
            result["reconnect_past_deadline"] = line["past_deadline"] - past1
            result["reconnect_sessions_ended"] = line["sessions_ended"] - ended1
            result["reconnect_ended_why"] = {
                k: v - why1.get(k, 0) for k, v in line["ended_why"].items()
                if v != why1.get(k, 0)}
            result["restarted_after_reconnect"] = line["assigns"] - assigns_before
            result["running_after_reconnect"] = line["running"]
            result["running_before_reconnect"] = running_before
            result["controller_b_rss_mib"] = round(rss_mib(b.pid), 1)
            # B loaded everything when it started (a replica already running keeps its
            # cache warm through a change of leader: no load then)
            result["controller_b_cache_load_s"] = round(
                b.total("viridian_cache_load_seconds"), 2)
        result["etcd_db_mib"] = round(etcd_db_bytes(etcd) / MIB, 1)
    finally:
        # A second Ctrl-C (or `timeout` passing one on) must not cut the clean-up short:
        # the processes run in sessions of their own and would be left behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if sim is not None:
            sim.stop()
        for r in (a, b):
            if r is not None:
                r.kill()
        etcd.stop()


def print_table(result: dict[str, Any]) -> None:
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--lease-ttl", type=int, default=3)
    parser.add_argument("--per-channel", type=int, default=50,
                        help="simulated agents sharing a gRPC channel (saves the "
                        "simulator's CPU; the controller sees the same sessions)")
    parser.add_argument("--max-heartbeats-per-second", dest="max_beats", type=float,
                        default=2000.0, help="the replicas' heartbeat budget (a huge one "
                        "keeps every agent at TTL/6: the pace before it scaled)")
    parser.add_argument("--sim-processes", type=int, default=1,
                        help="processes the simulated agents are split over")
    parser.add_argument("--skip-reconnect", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result: dict[str, Any] = {}
    failed = None
    try:
        run(args, result)
    except RuntimeError as err:   # a step that never finished: say so, keep the rest
        failed = result["error"] = str(err)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if failed:
        print(f"bench/scale.py: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
