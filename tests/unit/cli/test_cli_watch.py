"""`-w/--watch` on ls, get, nodes and events, fed by the fake controller's watch streams;
Ctrl-C on a real `viridian` process ends a watch with status 0."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cli_fake import FakeController, make_partition
from click.testing import Result
from conftest import Invoke
from viridian.v1 import types_pb2

from tests.ctrl_c import popen_interruptible

Phase = types_pb2.PartitionPhase
ROOT = Path(__file__).parents[3]


def watched(fake: FakeController, invoke: Invoke, args: list[str],
            change: Callable[[], None], watches: int = 1) -> Result:
    """Run the CLI with a watch; once the watch is open, change() the fake, then let the
    watch streams end (after they sent every change) so the command returns."""

    def driver() -> None:
        try:
            deadline = time.monotonic() + 20
            with fake.lock:
                while fake.watches_opened < watches:
                    assert time.monotonic() < deadline, "the CLI never opened its watch"
                    fake.lock.wait(0.05)
            change()
        finally:
            fake.end_watches()

    thread = threading.Thread(target=driver)
    thread.start()
    result = invoke(*args)
    thread.join(30)
    return result


def put(fake: FakeController, p: types_pb2.Partition) -> None:
    copy = types_pb2.Partition()
    copy.CopyFrom(p)
    fake._put(copy)


def stopped(fake: FakeController, name: str) -> None:
    p = types_pb2.Partition()
    p.CopyFrom(fake.partitions[name])
    p.status.phase = Phase.PARTITION_PHASE_OFF
    p.status.has_exit_code = True
    put(fake, p)


def deleted(fake: FakeController, name: str) -> None:
    with fake.lock:
        del fake.partitions[name]
        fake.lock.notify_all()


def test_ls_watch_prints_the_table_then_a_line_per_change(
        fake: FakeController, invoke: Invoke) -> None:
    put(fake, make_partition("web"))
    put(fake, make_partition("db-primary"))

    def change() -> None:
        stopped(fake, "web")
        put(fake, make_partition("cache"))
        deleted(fake, "db-primary")

    result = watched(fake, invoke, ["ls", "-w"], change)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "NODE", "VCPUS", "MEMORY", "IMAGE", "AGE"]
    rows = [line.split()[:2] for line in lines[1:]]
    assert rows[:2] == [["db-primary", "Running"], ["web", "Running"]]   # the table
    assert sorted(rows[2:]) == [["cache", "Running"], ["db-primary", "Deleted"],
                                ["web", "Off(0)"]]                       # the changes
    column = lines[0].index("PHASE")  # change lines are aligned with the table
    assert all(line[column:].split()[0] in ("Running", "Off(0)", "Deleted")
               for line in lines[1:])
    assert lines[0].index("IMAGE") == lines[-1].index("hello")


def test_watch_prints_nothing_when_nothing_shown_changed(
        fake: FakeController, invoke: Invoke) -> None:
    put(fake, make_partition("web"))

    def change() -> None:
        p = types_pb2.Partition()
        p.CopyFrom(fake.partitions["web"])
        p.status.stop_grace_seconds = 3.0  # a new revision, the same row
        put(fake, p)

    result = watched(fake, invoke, ["ls", "--watch"], change)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_a_partition_leaving_a_filtered_watch_shows_once(
        fake: FakeController, invoke: Invoke) -> None:
    put(fake, make_partition("web"))
    put(fake, make_partition("api"))

    def change() -> None:
        stopped(fake, "web")                 # leaves the list: shown once, Off
        p = types_pb2.Partition()
        p.CopyFrom(fake.partitions["web"])
        p.status.reason = "no longer matching, no longer shown"
        put(fake, p)

    result = watched(fake, invoke, ["ls", "-w", "--phase", "running", "-o", "wide"], change)
    assert result.exit_code == 0, result.stderr
    names = [line.split()[:2] for line in result.stdout.splitlines()[1:]]
    assert names == [["api", "Running"], ["web", "Running"], ["web", "Off(0)"]]


def test_get_watch_json_is_one_event_per_line(fake: FakeController, invoke: Invoke) -> None:
    put(fake, make_partition("web"))
    put(fake, make_partition("other"))

    def change() -> None:
        stopped(fake, "other")  # not the one watched
        stopped(fake, "web")

    result = watched(fake, invoke, ["get", "web", "-w", "-o", "json"], change)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["type"], r["object"]["name"], r["object"]["status"]["phase"])
            for r in records] == [("ADDED", "web", "PARTITION_PHASE_RUNNING"),
                                  ("MODIFIED", "web", "PARTITION_PHASE_OFF")]


def test_nodes_watch(fake: FakeController, invoke: Invoke) -> None:
    def change() -> None:
        fake.change_node("node-2", lambda n: setattr(n.spec, "cordoned", True))
        with fake.lock:
            del fake.nodes["node-1"]
            fake.lock.notify_all()

    result = watched(fake, invoke, ["nodes", "-w"], change)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["NAME", "STATE", "VCPUS", "MEMORY", "PARTITIONS",
                                    "CORDONED"]
    rows = [(line.split()[0], line.split()[1], line.split()[5]) for line in lines[1:]]
    assert rows[:2] == [("node-1", "Ready", "no"), ("node-2", "Ready", "no")]
    assert sorted(rows[2:]) == [("node-1", "Deleted", "no"), ("node-2", "Ready", "yes")]


def test_nodes_watch_does_not_go_with_plan(invoke: Invoke) -> None:
    result = invoke("nodes", "-w", "--plan")
    assert result.exit_code == 2 and "--plan" in result.stderr


def _cli_process(fake: FakeController, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "PYTHONUNBUFFERED": "1"}
    return popen_interruptible(
        [sys.executable, "-m", "controller.cli", "--controller", fake.address,  # type: ignore[attr-defined]
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _lines(stream: object) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:  # type: ignore[attr-defined]
            out.put(line)

    threading.Thread(target=read, daemon=True).start()
    return out


def test_ctrl_c_ends_a_watch_with_status_0(fake: FakeController, tmp_path: Path) -> None:
    put(fake, make_partition("web"))
    proc = _cli_process(fake, tmp_path, "ls", "-w")
    try:
        out = _lines(proc.stdout)
        assert out.get(timeout=30).split()[0] == "NAME"
        assert out.get(timeout=30).split()[:2] == ["web", "Running"]
        stopped(fake, "web")
        assert out.get(timeout=30).split()[:2] == ["web", "Off(0)"]  # from the watch
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_ends_events_watch_with_status_0(fake: FakeController, tmp_path: Path) -> None:
    proc = _cli_process(fake, tmp_path, "events", "-w")
    try:
        out = _lines(proc.stdout)
        reasons = []
        while "NodeLost" not in reasons:
            reasons.append(out.get(timeout=30).split()[2])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ctrl_c_right_after_the_first_line_never_hangs(fake: FakeController,
                                                       tmp_path: Path) -> None:
    """Ctrl-C as the watch call starts: grpc's Channel.close() (and the channel's garbage
    collection) hung for ever about one time in five on the call the interrupt unwound
    (grpc/grpc#19973); the CLI now leaves the channel to the kernel once interrupted."""
    put(fake, make_partition("web"))
    for attempt in range(25):
        proc = _cli_process(fake, tmp_path, "ls", "-w")
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().split()[0] == "NAME"
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(20)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"attempt {attempt}: the CLI hung after Ctrl-C") from None
            assert code == 0, f"attempt {attempt}: exit {code}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
