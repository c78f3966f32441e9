"""The supervisor with real workers: report causes, duplicate commands, FORGET, fencing, and
adoption of a save the previous agent began."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from collections.abc import Awaitable, Callable

from agent_fakes import wait_for
from agent_helpers import Node, image_of, last, running
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

K = apb.PartitionCommand
P = pb
C = apb
MakeNode = Callable[[str], Node]


def run(make: MakeNode, body: Callable[[Node], Awaitable[None]], name: str = "node") -> None:
    async def main() -> None:
        node = make(name)
        await node.sup.start()
        try:
            await body(node)
        finally:
            await node.close()

    asyncio.run(main())


def ended(node: Node, name: str) -> Callable[[], bool]:
    return lambda: bool(node.reports(name)) and last(node, name).phase in (
        P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED, P.PARTITION_PHASE_SAVED)


def test_report_causes(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        node.assign("hello", "worker_hello", stdin=False)
        await wait_for(ended(node, "hello"), "the guest to exit", 20.0)
        r = last(node, "hello")
        assert (r.phase, r.cause, r.has_exit_code) == (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_EXITED,
                                                       True)
        await running(node, "stop-me")
        assert last(node, "stop-me").cause == C.REPORT_CAUSE_UNSPECIFIED
        node.command("stop-me", K.KIND_STOP)
        await wait_for(ended(node, "stop-me"), "the stop", 20.0)
        r = last(node, "stop-me")
        assert (r.phase, r.cause, r.reason) == (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED,
                                                "stopped by request")
        await running(node, "crash")
        lp = node.sup.local["crash"]
        assert lp.handle is not None
        os.kill(lp.handle.pid, signal.SIGSEGV)
        await wait_for(ended(node, "crash"), "the crash", 20.0)
        r = last(node, "crash")
        assert (r.phase, r.cause) == (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED)
        node.sup.assign(apb.Assignment(name="no-image", epoch=1, image=pb.Image(name="x")))
        await wait_for(ended(node, "no-image"), "the failed launch")
        r = last(node, "no-image")
        assert (r.phase, r.cause) == (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED)
        assert r.reason.startswith("could not start")

    run(node_factory, body)


def test_commands_for_copies_not_run_here(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "p", epoch=3)
        for kind in (K.KIND_STOP, K.KIND_PAUSE, K.KIND_SAVE):
            node.command("p", kind, epoch=2)
            node.command("nothing", kind, epoch=5)
        stale = [r for r in node.reports() if r.cause == C.REPORT_CAUSE_NOT_RUNNING]
        assert [(r.name, r.epoch, r.phase) for r in stale] == \
            [("p", 2, P.PARTITION_PHASE_OFF), ("nothing", 5, P.PARTITION_PHASE_OFF)] * 3
        assert node.sup.local["p"].running and not node.sup.local["p"].stopping

    run(node_factory, body)


def test_duplicate_save_is_ignored_and_a_saved_one_reannounced(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "p")
        node.command("p", K.KIND_SAVE)
        node.command("p", K.KIND_SAVE)  # a new controller replica re-sends the command
        await wait_for(ended(node, "p"), "the save", 30.0)
        await asyncio.sleep(0.1)  # a failure of the second save would be reported by now
        saved = last(node, "p")
        assert (saved.phase, saved.cause) == (P.PARTITION_PHASE_SAVED,
                                              C.REPORT_CAUSE_UNSPECIFIED)
        assert not [r for r in node.reports("p") if r.cause == C.REPORT_CAUSE_SAVE_FAILED
                    or r.reason.startswith("save failed")]
        assert [r.phase for r in node.reports("p")] == [P.PARTITION_PHASE_RUNNING,
                                                        P.PARTITION_PHASE_SAVED]
        path = node.sup.states.path("p", saved.state.digest)
        assert path is not None and path.stat().st_size == saved.state.size_bytes
        node.command("p", K.KIND_SAVE)  # after the handover: say it is saved, with its state
        again = last(node, "p")
        assert len(node.reports("p")) == 3 and again == saved

    run(node_factory, body)


def test_pause_resume_stop_are_idempotent(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "p")
        count = len(node.reports("p"))
        node.command("p", K.KIND_RESUME)  # running already: re-announce
        assert len(node.reports("p")) == count + 1
        assert last(node, "p").phase == P.PARTITION_PHASE_RUNNING
        node.command("p", K.KIND_PAUSE)
        node.command("p", K.KIND_PAUSE)  # under way: ignored
        await wait_for(lambda: last(node, "p").phase == P.PARTITION_PHASE_PAUSED, "the pause")
        await asyncio.sleep(0.1)
        phases = [r.phase for r in node.reports("p")][count + 1:]
        assert phases == [P.PARTITION_PHASE_PAUSED]
        node.command("p", K.KIND_PAUSE)  # paused already: re-announce
        assert [r.phase for r in node.reports("p")][count + 1:] == [P.PARTITION_PHASE_PAUSED] * 2
        node.command("p", K.KIND_STOP)
        node.command("p", K.KIND_STOP)  # stopping: ignored
        await wait_for(ended(node, "p"), "the stop", 20.0)
        await asyncio.sleep(0.1)
        offs = [r for r in node.reports("p") if r.phase == P.PARTITION_PHASE_OFF]
        assert [(r.cause, r.reason) for r in offs] == [(C.REPORT_CAUSE_STOPPED,
                                                        "stopped by request")]

    run(node_factory, body)


def test_stop_or_fence_during_launch_never_runs(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        node.assign("stopped", "worker_stdin")
        node.command("stopped", K.KIND_STOP)
        node.assign("fenced", "worker_stdin")
        assert node.sup.fence("fenced: test") == 2
        await wait_for(lambda: ended(node, "stopped")() and ended(node, "fenced")(),
                       "both to end")
        assert (last(node, "stopped").phase, last(node, "stopped").cause) == \
            (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FENCED)  # the fence came after the stop
        r = last(node, "fenced")
        assert (r.phase, r.cause, r.reason) == (P.PARTITION_PHASE_FAILED,
                                                C.REPORT_CAUSE_FENCED, "fenced: test")
        assert P.PARTITION_PHASE_RUNNING not in [r.phase for r in node.reports()]
        assert node.sup.workers.adopt() == [] and node.sup.inventory() == []

    run(node_factory, body)


def test_fence_stops_running_partitions(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "a")
        await running(node, "b")
        assert sorted(node.sup.inventory()) == [("a", 1), ("b", 1)]
        assert node.sup.fence("fenced: lost contact") == 2
        assert node.sup.fence("fenced: lost contact") == 0  # once
        await wait_for(lambda: ended(node, "a")() and ended(node, "b")(), "the fence", 10.0)
        for name in ("a", "b"):
            r = last(node, name)
            assert (r.phase, r.cause, r.reason) == (P.PARTITION_PHASE_FAILED,
                                                    C.REPORT_CAUSE_FENCED,
                                                    "fenced: lost contact")
        assert node.sup.inventory() == []

    run(node_factory, body)


def test_forget_semantics(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "p", epoch=5)
        node.command("p", K.KIND_FORGET, epoch=0)   # it runs: epoch 0 leaves it alone
        node.command("p", K.KIND_FORGET, epoch=4)   # an older copy is meant, not this one
        await asyncio.sleep(0.2)
        assert node.sup.local["p"].running and not node.sup.local["p"].stopping
        node.command("p", K.KIND_FORGET, epoch=5)
        assert "p" not in node.sup.local
        await wait_for(ended(node, "p"), "the forgotten copy to stop", 20.0)
        r = last(node, "p")
        assert (r.phase, r.cause, r.epoch) == (P.PARTITION_PHASE_OFF, C.REPORT_CAUSE_STOPPED, 5)
        pdir = node.sup.workers.parts / "p"
        await wait_for(lambda: not pdir.exists() and not (node.sup.layers / "p").exists(),
                       "its files to go")
        await running(node, "q", epoch=6)
        node.command("q", K.KIND_FORGET, epoch=7)   # a newer epoch: older copies go too
        await wait_for(lambda: "q" not in node.sup.local and ended(node, "q")(), "q to stop")
        node.sup.states.dir("gone").joinpath("x.state").write_bytes(b"x")
        node.command("gone", K.KIND_FORGET, epoch=0, purge=True)
        await wait_for(lambda: not (node.sup.states.root / "gone").exists(), "the purge")

    run(node_factory, body)


def test_adopts_a_save_finished_while_the_agent_was_down(node_factory: MakeNode) -> None:
    """The agent died while the worker saved: the worker ended saved, its state sits in the
    scratch file. The next agent reports SAVED with a proper StateRef, not 'guest exited'."""

    async def body(first: Node) -> None:
        await running(first, "p")
        handle = first.sup.local["p"].handle
        assert handle is not None
        await first.sup.close()  # the agent dies, its save request still being served
        scratch = first.sup.states.scratch("p", "save")
        await asyncio.to_thread(handle.save, scratch)
        digest = "sha256:" + hashlib.sha256(scratch.read_bytes()).hexdigest()
        size = scratch.stat().st_size

        second = Node(first.run_dir, first.bins)
        await second.sup.start()
        try:
            r = second.sup.local["p"].report
            assert (r.phase, r.cause) == (P.PARTITION_PHASE_SAVED, C.REPORT_CAUSE_UNSPECIFIED)
            assert (r.state.digest, r.state.size_bytes, r.state.node) == (digest, size, "node-1")
            assert second.sup.states.path("p", digest) is not None and not scratch.exists()
            assert second.sup.reports() == [r]
        finally:
            await second.close()

    run(node_factory, body)


def test_adopted_save_without_its_state_fails(node_factory: MakeNode) -> None:
    async def body(first: Node) -> None:
        await running(first, "p")
        handle = first.sup.local["p"].handle
        assert handle is not None
        await first.sup.close()
        scratch = first.sup.states.scratch("p", "save")
        await asyncio.to_thread(handle.save, scratch)
        scratch.unlink()

        second = Node(first.run_dir, first.bins)
        await second.sup.start()
        try:
            r = second.sup.local["p"].report
            assert (r.phase, r.cause) == (P.PARTITION_PHASE_FAILED, C.REPORT_CAUSE_FAILED)
            assert "save did not complete" in r.reason
        finally:
            await second.close()

    run(node_factory, body)


def test_adopted_worker_that_saves_later_is_collected(node_factory: MakeNode) -> None:
    """Adopted while running; the save the old agent asked for ends after the restart."""

    async def body(first: Node) -> None:
        await running(first, "p")
        old_handle = first.sup.local["p"].handle
        assert old_handle is not None
        await first.sup.close()

        second = Node(first.run_dir, first.bins)
        await second.sup.start()
        try:
            assert second.sup.local["p"].report.phase == P.PARTITION_PHASE_RUNNING
            scratch = second.sup.states.scratch("p", "save")
            await asyncio.to_thread(old_handle.save, scratch)
            await wait_for(ended(second, "p"), "the save to be collected", 20.0)
            r = last(second, "p")
            assert r.phase == P.PARTITION_PHASE_SAVED and r.state.digest
            assert second.sup.states.path("p", r.state.digest) is not None
        finally:
            await second.close()

    run(node_factory, body)


def test_checkpoint_is_idempotent(node_factory: MakeNode) -> None:
    async def body(node: Node) -> None:
        await running(node, "p")

        def taken() -> list[apb.PartitionReport]:
            return [r for r in node.reports("p") if r.checkpoint == "cp1"]

        node.command("p", K.KIND_CHECKPOINT, checkpoint="cp1")
        node.command("p", K.KIND_CHECKPOINT, checkpoint="cp1")  # under way: ignored
        await wait_for(lambda: bool(taken()), "the checkpoint", 20.0)
        await asyncio.sleep(0.2)
        assert len(taken()) == 1 and taken()[0].state.digest and not taken()[0].reason
        node.command("p", K.KIND_CHECKPOINT, checkpoint="cp1")  # taken: say so again
        assert len(taken()) == 2 and taken()[1].state.digest == taken()[0].state.digest
        assert last(node, "p").checkpoint == "cp1"
        assert node.sup.local["p"].report.phase == P.PARTITION_PHASE_RUNNING

    run(node_factory, body)


def test_restart_on_the_same_node_after_a_save_keeps_its_new_layer(
        node_factory: MakeNode) -> None:
    """Save, then start again on the same node: the controller sends FORGET of the old
    epoch and, at once, the new assignment restoring the state. The FORGET's clean-up ran
    after the new launch had made its writable layer and deleted it: the restore failed
    with ENOENT (7 of 10 times in the fault suite)."""

    async def body(node: Node) -> None:
        await running(node, "p", epoch=1)
        node.command("p", K.KIND_SAVE)
        await wait_for(ended(node, "p"), "the save", 30.0)
        saved = last(node, "p")
        assert saved.phase == P.PARTITION_PHASE_SAVED
        image, _ = image_of(node.bins / "worker_stdin")
        # The two messages arrive in different turns of the loop, and the FORGET's clean-up
        # of the old worker takes a moment (a slow disk, here made certain).
        forget_worker = node.sup.workers.forget

        def slow_forget(name: str) -> None:
            time.sleep(0.3)
            forget_worker(name)

        node.sup.workers.forget = slow_forget  # type: ignore[method-assign]
        node.command("p", K.KIND_FORGET, epoch=1)
        await asyncio.sleep(0.05)
        node.sup.assign(apb.Assignment(name="p", epoch=2, image=image, restore=saved.state,
                                       spec=pb.PartitionSpec(image=image.name, stdin=True)))
        await wait_for(lambda: last(node, "p").epoch == 2 and last(node, "p").phase in (
            P.PARTITION_PHASE_RUNNING, P.PARTITION_PHASE_FAILED), "the restore", 30.0)
        restored = last(node, "p")
        assert restored.phase == P.PARTITION_PHASE_RUNNING, restored.reason
        await asyncio.sleep(0.3)  # a late clean-up would make the worker fail by now
        assert last(node, "p") == restored
        assert node.sup.local["p"].handle is not None
        assert node.sup.local["p"].handle.poll() is None

    run(node_factory, body)
