"""The syscall fast path (issue 15): syscalls enter Python from the C hook of
node_agent/runtime/_syscall_hook.c, with the same results, counters, signals and failures as
on the ctypes path it replaces; without the module the runtime warns once and keeps the
ctypes path (tests/guests/fastpath.c makes the calls)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import Run

from node_agent.runtime import syscall_fastpath
from node_agent.runtime.syscall_counts import OTHER, SLOTS, SyscallCounts
from node_agent.runtime.syscalls.i386 import TABLE as TABLE32
from node_agent.runtime.syscalls.x86_64 import TABLE as TABLE64

GETPPID = {"x86_64": 110, "i386": 64}
EXPECTED_CALLS = b"""getpid=1 getppid=0 gettid=1
write-null=16 read-null=0
write-badfd=-9 write-negfd=-9 write-zero=0
pipe=0 pipe-write=16 pipe-read=16 same=1
write-efault=-14
clock=0 nonzero=1
clock-efault=-14
brk-grows=1
mmap=1 touched=7 munmap=0
unknown=-38 huge=-38
"""


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """The C hook objects installed while the test runs (none on the ctypes path)."""
    made: list[Any] = []
    install = syscall_fastpath.install

    def recording(*args: Any, **kwargs: Any) -> Any:
        hook = install(*args, **kwargs)
        if hook is not None:
            made.append(hook)
        return hook

    monkeypatch.setattr(syscall_fastpath, "install", recording)
    yield made


def _counted(counts: SyscallCounts, arch: str) -> dict[int, int]:
    row = counts.row(0)
    base = 0 if arch == "x86_64" else SLOTS
    return {nr: row[base + nr] for nr in range(SLOTS) if row[base + nr]}


def _run_counted(run_guest: Callable[..., Run], tmp_path: Path, arch: str, name: str,
                 *args: str) -> tuple[Run, dict[int, int]]:
    counts = SyscallCounts(tmp_path / f"{name}-{arch}.bin")
    run = run_guest("fastpath", *args, arch=arch, control=lambda m: m.count_syscalls(counts))
    return run, _counted(counts, arch)


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_the_fast_path_gives_the_ctypes_path_s_results_and_counts(
        run_guest: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        hooks: list[Any], arch: str) -> None:
    assert syscall_fastpath.available(), syscall_fastpath.unavailable_reason()
    fast, fast_counts = _run_counted(run_guest, tmp_path, arch, "fast", "calls")
    assert (fast.status.exit_code, fast.status.failed_reason) == (0, None), fast.status
    assert fast.stdout == EXPECTED_CALLS
    entered = sum(h.calls for h in hooks)
    assert entered == sum(fast_counts.values()) > 20     # every call came through C
    assert fast_counts[OTHER] == 2              # 1000 and 0x7fffff00 share the last slot
    assert fast.status.unknown_syscalls                  # and both are reported unknown

    monkeypatch.setenv(syscall_fastpath.ENV, "0")
    hooks.clear()
    slow, slow_counts = _run_counted(run_guest, tmp_path, arch, "slow", "calls")
    assert hooks == []
    assert (slow.status.exit_code, slow.stdout) == (0, fast.stdout)
    assert slow_counts == fast_counts
    assert slow.status.unknown_syscalls == fast.status.unknown_syscalls


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_a_signal_arriving_during_a_syscall_loop_is_delivered(
        run_guest: Callable[..., Run], hooks: list[Any], arch: str) -> None:
    run = run_guest("fastpath", "signal", arch=arch)
    assert (run.status.exit_code, run.stdout) == (0, b"signal delivered after calls=1\n")
    assert sum(h.calls for h in hooks) > 0


@pytest.mark.parametrize("fast", [True, False])
def test_a_handler_s_exception_fails_the_partition_not_the_process(
        run_guest: Callable[..., Run], monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """A runtime bug in a handler reaches the vCPU's run loop as an exception (the C hook
    hands it to the binding, which raises it from emu_start), as on the ctypes path."""
    if not fast:
        monkeypatch.setenv(syscall_fastpath.ENV, "0")

    def broken(*_: int) -> int:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(TABLE64, GETPPID["x86_64"], broken)
    run = run_guest("fastpath", "signal")
    assert run.status.exit_code is None
    assert "handler bug" in (run.status.failed_reason or ""), run.status


def test_a_handler_returning_a_non_int_fails_the_partition(
        run_guest: Callable[..., Run], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TABLE32, GETPPID["i386"], lambda *_: "not a number")
    run = run_guest("fastpath", "signal", arch="i386")
    assert run.status.exit_code is None
    assert "TypeError" in (run.status.failed_reason or ""), run.status


def _forget_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscall_fastpath, "_tried", False)
    monkeypatch.setattr(syscall_fastpath, "_loaded", None)
    monkeypatch.setattr(syscall_fastpath, "_reason", None)


def test_without_the_module_the_runtime_warns_once_and_keeps_the_ctypes_path(
        run_guest: Callable[..., Run], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], hooks: list[Any]) -> None:
    _forget_module(monkeypatch)
    monkeypatch.setitem(sys.modules, "node_agent.runtime._syscall_hook", None)  # not built
    first, counts = _run_counted(run_guest, tmp_path, "x86_64", "a", "calls")
    second = run_guest("fastpath", "calls", arch="i386")
    assert (first.status.exit_code, first.stdout) == (0, EXPECTED_CALLS)
    assert (second.status.exit_code, second.stdout) == (0, EXPECTED_CALLS)
    assert counts[GETPPID["x86_64"]] == 1
    assert hooks == []
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if "syscall fast path unavailable" in line]
    assert len(warnings) == 1 and "not built" in warnings[0], warnings
    assert not syscall_fastpath.available()


def test_a_module_of_another_abi_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _forget_module(monkeypatch)
    stale = types.ModuleType("node_agent.runtime._syscall_hook")
    stale.ABI = syscall_fastpath.ABI + 1  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "node_agent.runtime._syscall_hook", stale)
    assert not syscall_fastpath.available()
    assert "stale build" in (syscall_fastpath.unavailable_reason() or "")
    assert "stale build" in capsys.readouterr().err


def _hook_kwargs(**override: Any) -> dict[str, Any]:
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    kwargs: dict[str, Any] = {
        "uc": uc._uch.value, "hook_add": 1, "read_batch": 1, "reg_write": 1,
        "regs": [0] * 7, "ret_reg": 0, "int80": False, "mask": 0xFFFFFFFF,
        "on_syscall": print, "on_interrupt": print, "uc_object": uc, "emu_stop": print,
        "counts": memoryview(bytearray(8 * 2 * SLOTS)).cast("Q"), "count_base": 0,
        "count_other": OTHER, "meter": types.SimpleNamespace(system=0.0)}
    kwargs.update(override)
    return kwargs


@pytest.mark.parametrize("override, error", [
    ({"regs": [0] * 6}, ValueError),
    ({"regs": "abcdefg"}, TypeError),
    ({"hook_add": 0}, ValueError),
    ({"uc": -1}, OverflowError),
    ({"counts": memoryview(bytearray(8 * SLOTS)).cast("Q"), "count_base": SLOTS}, ValueError),
    ({"counts": b"\0" * 8 * 2 * SLOTS}, BufferError),
    ({"count_base": -1}, ValueError),
    ({"on_syscall": 3}, TypeError),
])
def test_the_c_hook_refuses_bad_arguments_before_touching_unicorn(
        override: dict[str, Any], error: type[Exception]) -> None:
    """Checked before uc_hook_add is called (the fake addresses above are never called)."""
    # `make venv` builds the module; the other tests here require it too
    assert syscall_fastpath.available(), syscall_fastpath.unavailable_reason()
    from node_agent.runtime import _syscall_hook  # type: ignore[attr-defined]

    with pytest.raises(error):
        _syscall_hook.SyscallHook(**_hook_kwargs(**override))
