"""Shut Down and Turn Off on the node: a STOP command's grace travels through the
supervisor and OP_STOP {"grace": s} to Machine.stop(grace); a shorter STOP for a stop under
way is passed on; the fence and the watchdog turn off at once; a worker that outlives
grace + margin is killed. Most tests run real workers with a recording stand-in Machine
(grace_machine.py); the last ones run the real Machine on real guests."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from agent_fakes import wait_for, wait_sync
from agent_helpers import Node, last, running
from grace_machine import recorded
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.runtime.spec import PartitionSpec
from node_agent.runtime.watchdog_file import WATCHDOG_FILE, write_deadline
from node_agent.runtime.worker_main import stop_grace
from node_agent.runtime.workers import STOP_MARGIN_S, WorkerHandle, WorkerManager

HERE = Path(__file__).resolve().parent
GUESTS = HERE.parents[1] / "guests"
FAKE = "grace_machine:RecordingMachine"
K = apb.PartitionCommand
P = pb


@pytest.fixture
def fake_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork server (a fresh interpreter) imports the stand-in from this directory."""
    monkeypatch.setenv("PYTHONPATH", str(HERE))


@pytest.fixture
def fake_manager(tmp_path: Path, fake_path: None) -> Iterator[WorkerManager]:
    mgr = WorkerManager(tmp_path / "run", machine=FAKE)
    yield mgr
    for handle in mgr.adopt():
        if handle.poll() is None:
            handle.stop(0.0, margin_s=2.0)
    mgr.close()


def launch(mgr: WorkerManager, name: str, root: Path, entry: str = "/x",
           stdin: bool = False) -> WorkerHandle:
    handle = mgr.launch(PartitionSpec(name=name, root=root, entrypoint=entry), 1,
                        stdin=stdin)
    wait_sync(lambda: b"ready\n" in handle.read_console(0)[0], f"{name} to start")
    return handle


@pytest.mark.parametrize(("payload", "grace"), [
    (b"", 0.0), (b'{"grace": 2.5}', 2.5), (b'{"grace": 0}', 0.0), (b'{"grace": -3}', 0.0),
    (b'{"grace": NaN}', 0.0), (b'{"grace": Infinity}', 3600.0), (b'{"grace": 1e308}', 3600.0),
    (b'{"grace": "7"}', 7.0), (b'{"grace": "soon"}', 0.0), (b'{"grace": [1]}', 0.0),
    (b"[1, 2]", 0.0), (b"\xff\xfe", 0.0), (b"{", 0.0), (b"{}", 0.0)])
def test_a_hostile_stop_payload_means_at_once(payload: bytes, grace: float) -> None:
    assert stop_grace(payload) == grace


def test_op_stop_carries_the_grace_to_machine_stop(fake_manager: WorkerManager,
                                                   tmp_path: Path) -> None:
    handle = launch(fake_manager, "shut", tmp_path)
    began = time.monotonic()
    handle.stop(0.6)
    took = time.monotonic() - began
    assert recorded(handle.dir) == [0.6]
    status = handle.poll()
    assert status is not None and (status.exit_code, status.failed_reason) == (143, None)
    assert 0.5 <= took < 0.6 + STOP_MARGIN_S, took  # the machine used its grace, no kill

    off = launch(fake_manager, "off", tmp_path)
    off.stop()  # the default is Turn Off
    assert recorded(off.dir) == [0.0]


def test_a_worker_outliving_grace_and_margin_is_killed(fake_manager: WorkerManager,
                                                       tmp_path: Path) -> None:
    handle = launch(fake_manager, "deaf", tmp_path)
    began = time.monotonic()
    handle.stop(0.4, margin_s=0.4)
    took = time.monotonic() - began
    status = handle.poll()
    assert recorded(handle.dir) == [0.4]
    assert status is not None and status.failed_reason == \
        "worker killed: did not stop within 0.8s"
    assert 0.7 <= took < 5.0, took


def test_the_watchdog_turns_off_at_once(fake_manager: WorkerManager, tmp_path: Path) -> None:
    write_deadline(fake_manager.run_dir / WATCHDOG_FILE, 0.0, 3.0)  # contact lost
    handle = fake_manager.launch(PartitionSpec(name="fenced", root=tmp_path,
                                               entrypoint="/x"), 1)
    status = handle.wait(10.0)
    assert status is not None and (status.failed_reason or "").startswith("fenced:")
    assert recorded(handle.dir) == [0.0]


def run_node(make: Callable[[str], Node], body: Callable[[Node], object]) -> None:
    async def main() -> None:
        node = make("node")
        node.sup.workers = WorkerManager(node.run_dir / "workers", machine=FAKE)
        await node.sup.start()
        try:
            await body(node)  # type: ignore[misc]
        finally:
            await node.close()

    asyncio.run(main())


def stop(node: Node, name: str, grace: float) -> None:
    node.sup.command(apb.PartitionCommand(name=name, epoch=1, kind=K.KIND_STOP,
                                          grace_seconds=grace))


def test_supervisor_passes_the_grace_and_turns_off_on_a_shorter_stop(
        node_factory: Callable[[str], Node], fake_path: None) -> None:
    async def body(node: Node) -> None:
        await running(node, "svc")
        handle = node.sup.local["svc"].handle
        assert handle is not None
        stop(node, "svc", 30.0)
        await wait_for(lambda: recorded(handle.dir) == [30.0], "the Shut Down")
        stop(node, "svc", 30.0)   # again (a replica took the session over): nothing new
        stop(node, "svc", 60.0)   # longer: a stop under way is never lengthened
        await asyncio.sleep(0.3)
        assert recorded(handle.dir) == [30.0] and handle.poll() is None
        began = time.monotonic()
        stop(node, "svc", 0.0)    # Turn Off while it shuts down
        await wait_for(lambda: last(node, "svc").phase == P.PARTITION_PHASE_OFF,
                       "the Turn Off", 10.0)
        assert time.monotonic() - began < 5.0
        assert recorded(handle.dir) == [30.0, 0.0]
        r = last(node, "svc")
        assert (r.cause, r.reason, r.exit_code) == (apb.REPORT_CAUSE_STOPPED,
                                                    "stopped by request", 143)

        # The fence turns a guest that is shutting down off at once.
        await running(node, "fence-me")
        fenced = node.sup.local["fence-me"].handle
        assert fenced is not None
        stop(node, "fence-me", 30.0)
        await wait_for(lambda: recorded(fenced.dir) == [30.0], "the Shut Down")
        assert node.sup.fence("fenced: test") == 1
        await wait_for(lambda: last(node, "fence-me").phase == P.PARTITION_PHASE_FAILED,
                       "the fence", 10.0)
        assert recorded(fenced.dir) == [30.0, 0.0]
        assert last(node, "fence-me").cause == apb.REPORT_CAUSE_FENCED

    run_node(node_factory, body)


# -- the real Machine on real guests ---------------------------------------------------

@pytest.fixture(scope="module")
def guest_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build guests")
    root = tmp_path_factory.mktemp("stop-guests")
    for name in ("worker_stdin", "stop_ignore_term"):
        subprocess.run(["gcc", "-O1", "-static", "-o", str(root / name),
                        str(GUESTS / f"{name}.c")], check=True)
    return root


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[WorkerManager]:
    mgr = WorkerManager(tmp_path / "run")
    yield mgr
    for handle in mgr.adopt():
        if handle.poll() is None:
            handle.stop(0.0, margin_s=2.0)
    mgr.close()


@pytest.mark.parametrize("guest", ["worker_stdin", "stop_ignore_term"])
def test_shut_down_of_a_real_guest_ends_off_within_grace_and_margin(
        manager: WorkerManager, guest_root: Path, guest: str) -> None:
    """Both are a lone pid 1 without a SIGTERM handler (worker_stdin has none,
    stop_ignore_term ignores it): pid 1 is init, so SIGTERM does nothing to it and the
    machine turns off at once instead of waiting out the grace. Exit code 143, no kill."""
    handle = launch(manager, guest.replace("_", "-"), guest_root, f"/{guest}", stdin=True)
    began = time.monotonic()
    handle.stop(1.0)
    took = time.monotonic() - began
    status = handle.poll()
    assert status is not None and (status.exit_code, status.failed_reason) == (143, None)
    assert took < 1.0 + STOP_MARGIN_S, took
