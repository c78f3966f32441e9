"""Requests cut short: delete --force, save, move and drain, each interrupted at a random
moment (the gRPC call cancelled, or the CLI making it killed with SIGKILL, by its pid), and
`viridian node drain` killed mid-way. The partitions a fault makes for itself are its
victims, retired after it."""

from __future__ import annotations

import random
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import grpc
import rules
from etcd_view import wait_readable
from failure_util import REPO
from fault import Fault
from harness import FaultCluster
from viridian.v1 import controller_pb2 as cpb

__all__ = ["drain", "interrupted_delete", "interrupted_move", "interrupted_save"]

REQUEST_SETTLE_S = 20.0


def _cli(fh: FaultCluster, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "controller.cli", "--controller",
                             fh.fc.ctl, *args], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _interrupted(fh: FaultCluster, rng: random.Random, method: str, request: Any,
                 cli_args: list[str], note: list[str]) -> None:
    """Send the request and interrupt it at a random moment: either the gRPC call is
    cancelled after 0-12 ms (a delete or a save is answered in about that time here), or
    the CLI sending it is killed (SIGKILL, by its pid) after 0.3-1.2 s (its start-up takes
    most of that). Either way it may land before, during or after the server's work."""
    if rng.random() < 0.5:
        after = rng.uniform(0.0, 0.012)
        future = getattr(fh.api.stub(), method).future(request, timeout=10)
        time.sleep(after)
        cancelled = future.cancel()
        note.append(f"{method} cancelled after {after * 1000:.0f} ms"
                    f"{'' if cancelled else ' (it had completed)'}")
        return
    proc = _cli(fh, *cli_args)
    after = rng.uniform(0.3, 1.2)
    try:
        proc.wait(after)
        note.append(f"CLI {' '.join(cli_args[:2])} finished before its kill (exit "
                    f"{proc.returncode})")
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # our own child
        proc.wait(10)
        note.append(f"CLI {' '.join(cli_args[:2])} killed after {after:.2f}s")


def _interrupted_drain(fh: FaultCluster, rng: random.Random, node: str, cli: bool,
                       note: list[str]) -> None:
    """Start a drain and interrupt it mid-way: 0-0.5 s after its first progress message
    (the node is cordoned then and its partitions start to move), the stream is cancelled
    or the `viridian node drain` CLI printing it is killed with SIGKILL."""
    after = rng.uniform(0.0, 0.5)
    if not cli:
        call: Any = fh.api.stub().DrainNode(cpb.DrainNodeRequest(name=node), timeout=60)
        seen = 0
        try:
            for progress in call:
                seen += 1
                if seen == 1:
                    threading.Timer(after, call.cancel).start()
                if progress.done or progress.failed:
                    note.append(f"the drain ended before the cancel ({progress.message})")
                    return
        except grpc.RpcError as err:
            code = err.code().name if isinstance(err, grpc.Call) else "?"
            note.append(f"drain stream {code} {after:.2f}s after its first message")
        return
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "--controller",
                             fh.fc.ctl, "node", "drain", node], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15.0)  # its first progress line
    if ready:
        proc.stdout.readline()
        time.sleep(after)
    if proc.poll() is not None:
        note.append(f"the drain CLI ended by itself (exit {proc.returncode})")
    else:
        proc.send_signal(signal.SIGKILL)  # our own child, by its pid
        note.append(f"the drain CLI killed {after:.2f}s after its first line"
                    if ready else "the drain CLI killed, silent for 15 s")
    proc.wait(10)
    proc.stdout.close()


def _victim(fh: FaultCluster, kind: str) -> str:
    return fh.names(kind.removeprefix("interrupted-"), 1)[0]


def _wait_phase_not(fh: FaultCluster, name: str, phases: tuple[str, ...],
                    timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        snap = wait_readable(fh.view, 10)
        p = snap.partitions.get(name)
        ph = rules.phase(p) if p is not None else "absent"
        if ph not in phases or time.monotonic() > deadline:
            return ph
        time.sleep(0.1)


def interrupted_delete(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-delete")
    note: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])

    def inject() -> None:
        fh.checker.forget(name)  # from now on it may be gone
        _interrupted(fh, rng, "DeletePartition",
                     cpb.DeletePartitionRequest(name=name, force=True),
                     ["delete", name, "--force"], note)

    def heal() -> None:
        if name in wait_readable(fh.view, 10).partitions:
            note.append("the partition survived the interrupted delete")
            fh.checker.expect(name, ha=True)  # still there: acknowledged, as before
        else:
            note.append("the partition was deleted")

    return Fault("interrupted-delete", name, inject, heal, hold, prepare, note, [name],
                 timed_after_heal=True)


def interrupted_save(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-save")
    note: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])

    def inject() -> None:
        _interrupted(fh, rng, "SavePartition", cpb.PartitionRef(name=name),
                     ["save", name], note)

    def heal() -> None:
        ph = _wait_phase_not(fh, name, ("SAVING",), REQUEST_SETTLE_S)
        note.append(f"after the save: {ph}")
        if ph == "SAVED":
            fh.api.call("StartPartition", cpb.StartPartitionRequest(name=name))

    return Fault("interrupted-save", name, inject, heal, hold, prepare, note, [name],
                 timed_after_heal=True)


def interrupted_move(fh: FaultCluster, rng: random.Random, hold: float) -> Fault:
    name = _victim(fh, "interrupted-move")
    note: list[str] = []
    where: list[str] = []

    def prepare() -> None:
        fh.create([name], ha=True)
        fh.wait_running([name])
        where.append(fh.bound_node(name))
        fh.api.call("SavePartition", cpb.PartitionRef(name=name))
        ph = _wait_phase_not(fh, name, ("RUNNING", "SAVING"), REQUEST_SETTLE_S)
        note.append(f"saved on {where[0]}: {ph}")

    def inject() -> None:
        to = rng.choice([n for n in fh.fc.nodes if n != where[0]])
        note.append(f"move to {to}")
        _interrupted(fh, rng, "MovePartition", cpb.MovePartitionRequest(name=name, to_node=to),
                     ["move", name, "--to", to], note)

    def heal() -> None:
        fh.api.call("StartPartition", cpb.StartPartitionRequest(name=name))

    return Fault("interrupted-move", name, inject, heal, hold, prepare, note, [name],
                 timed_after_heal=True)


def drain(fh: FaultCluster, rng: random.Random, hold: float, cli: bool) -> Fault:
    snap = wait_readable(fh.view, 10)
    load = {n: sum(b.node == n for b in snap.bindings.values()) for n in fh.fc.nodes}
    node = max(load, key=lambda n: load[n])
    note: list[str] = [f"{load[node]} partitions bound there"]

    def inject() -> None:
        _interrupted_drain(fh, rng, node, cli, note)
        deadline = time.monotonic() + REQUEST_SETTLE_S  # the drain goes on without a client
        while time.monotonic() < deadline:
            if not any(b.node == node for b in wait_readable(fh.view, 10).bindings.values()):
                note.append("the node emptied")
                return
            time.sleep(0.2)
        note.append(f"the node still had partitions bound {REQUEST_SETTLE_S:g}s later")

    def heal() -> None:
        fh.api.call("UncordonNode", cpb.CordonNodeRequest(name=node))

    kind = "drain-cli-killed" if cli else "interrupted-drain"
    return Fault(kind, node, inject, heal, hold, note=note, timed_after_heal=True)
