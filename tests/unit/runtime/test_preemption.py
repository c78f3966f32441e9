"""Guest threads are time-sliced onto vCPUs by preemption, not only at syscalls.

tests/guests/spin_token.c: four threads hand a token around with atomic spin-waits and no
syscalls while spinning, so with fewer vCPUs than threads it finishes only if the machine's
ticker stops a thread that used a full quantum while others wait (Machine._preempt).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder, Run, make_root, run_machine

from node_agent.runtime.machine import Machine

EXPECTED = {"8": b"rounds=8 value=3367059755000743937\n",
            "16": b"rounds=16 value=13804221810579509249\n"}


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_spinning_threads_share_fewer_vcpus(run_guest: Callable[..., Run], arch: str,
                                            vcpus: int) -> None:
    run = run_guest("spin_token", "8", arch=arch, vcpus=vcpus)
    assert (run.status.exit_code, run.status.failed_reason) == (0, None), run
    assert run.stdout == EXPECTED["8"]


def test_pause_and_resume_while_the_ticker_preempts(guest: GuestBuilder, tmp_path: Path) -> None:
    root = make_root(tmp_path, guest("spin_token"), "/bin/spin_token")
    pauses: list[bool] = []
    errors: list[BaseException] = []

    def pause_repeatedly(machine: Machine) -> None:
        def control() -> None:
            try:
                deadline = time.monotonic() + 10
                while not machine.vcpus or not any(v.thread for v in machine.vcpus):
                    if time.monotonic() > deadline:
                        raise AssertionError("the guest never started")
                    time.sleep(0.001)
                for _ in range(5):
                    machine.pause()
                    with machine.sched.cond:
                        pauses.append(not any(t.on_cpu for t in machine.sched.threads.values())
                                      and all(v.thread is None for v in machine.vcpus))
                    machine.resume()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        threading.Thread(target=control, daemon=True).start()

    run = run_machine(root, "/bin/spin_token", ("16",), vcpus=1, control=pause_repeatedly)
    assert not errors, errors
    assert pauses == [True] * 5
    assert (run.status.exit_code, run.status.failed_reason) == (0, None), run
    assert run.stdout == EXPECTED["16"]
