"""The worker's watchdog: it stops its guest once CLOCK_BOOTTIME passes the contact deadline
the agent wrote to RUN_DIR/watchdog (real worker processes, real guest)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fakes import wait_sync

from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.watchdog_file import WATCHDOG_FILE, write_deadline
from node_agent.runtime.workers import WorkerHandle, WorkerManager


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[WorkerManager]:
    mgr = WorkerManager(tmp_path / "run")
    yield mgr
    for handle in mgr.adopt():
        if handle.poll() is None:
            handle.stop(grace_s=2.0)
    mgr.close()


def launch(mgr: WorkerManager, root: Path, name: str) -> WorkerHandle:
    handle = mgr.launch(PartitionSpec(name=name, root=root, entrypoint="/worker_stdin"), 1,
                        stdin=True)
    wait_sync(lambda: b"ready\n" in handle.read_console(0)[0], "the guest to start")
    return handle


def test_worker_runs_while_fed_and_stops_at_the_deadline(manager: WorkerManager,
                                                         guest_bins: Path) -> None:
    watchdog = manager.run_dir / WATCHDOG_FILE
    write_deadline(watchdog, boottime() + 1.0, 3.0)
    handle = launch(manager, guest_bins, "fed")
    # The agent keeps moving the deadline: the guest runs past several old deadlines.
    started = boottime()
    while boottime() < started + 1.5:
        write_deadline(watchdog, boottime() + 0.4, 3.0)
        time.sleep(0.1)
        assert handle.poll() is None, "stopped although the deadline was moving"
    last = boottime() + 0.4
    write_deadline(watchdog, last, 3.0)
    status = handle.wait(5.0)
    ended = boottime()
    assert status is not None and status.exit_code is None
    assert status.failed_reason is not None and status.failed_reason.startswith("fenced:")
    assert last <= ended < last + 0.8, ended - last
    assert ("Fenced", status.failed_reason) in handle.events()


def test_mtime_means_nothing(manager: WorkerManager, guest_bins: Path) -> None:
    """A file last modified long ago, holding a deadline in the future: keep running."""
    watchdog = manager.run_dir / WATCHDOG_FILE
    write_deadline(watchdog, boottime() + 30.0, 3.0)
    os.utime(watchdog, (0, 0))
    handle = launch(manager, guest_bins, "old-mtime")
    assert handle.wait(1.0) is None


@pytest.mark.parametrize("content", ["past", "other-boot"])
def test_worker_started_without_contact_stops_at_once(manager: WorkerManager,
                                                      guest_bins: Path, content: str) -> None:
    watchdog = manager.run_dir / WATCHDOG_FILE
    if content == "past":
        write_deadline(watchdog, 0.0, 3.0)  # what a never-contacted agent writes
    else:
        watchdog.write_text(json.dumps({"deadline": boottime() + 60, "ttl": 3.0,
                                        "boot_id": "not this boot"}))
    handle = manager.launch(PartitionSpec(name="late", root=guest_bins,
                                          entrypoint="/worker_stdin"), 1, stdin=True)
    status = handle.wait(5.0)
    assert status is not None
    assert status.failed_reason is not None and status.failed_reason.startswith("fenced:")
