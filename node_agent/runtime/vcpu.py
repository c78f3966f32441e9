"""One vCPU: a Unicorn instance on its own host thread, running guest threads in turn."""

from __future__ import annotations

import ctypes
import time
import traceback
from typing import TYPE_CHECKING, Any

from unicorn import (
    UC_ARCH_X86,
    UC_ERR_FETCH_PROT,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_INSN_INVALID,
    UC_ERR_READ_PROT,
    UC_ERR_READ_UNMAPPED,
    UC_ERR_WRITE_PROT,
    UC_ERR_WRITE_UNMAPPED,
    UC_HOOK_INSN,
    UC_HOOK_INTR,
    UC_HOOK_MEM_INVALID,
    UC_MEM_FETCH_PROT,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_READ_PROT,
    UC_MEM_READ_UNMAPPED,
    UC_MEM_WRITE_PROT,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_MODE_64,
    UC_PROT_ALL,
    Uc,
    UcError,
)
from unicorn import x86_const as X

from .gdt import GDT_SIZE, KERNEL_DS_SELECTOR, USER_DS_SELECTOR
from .memory import GuestFault, GuestMemory
from .syscalls.common import BLOCK, EXIT, E, errno_of
from .task import Task
from .threads import RUNNING, GuestThread

try:  # the binding's loaded libunicorn, for batch register access without per-call wrappers
    from unicorn.unicorn_py3.unicorn import uclib as _uclib
except ImportError:  # pragma: no cover - older binding layout
    from unicorn.unicorn import _uc as _uclib

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["Vcpu", "TCG_BUFFER"]

TCG_BUFFER = 48 << 20
QUANTUM = 0.02          # seconds a thread may keep its vCPU while others wait
X87_CONTROL_WORD = 0x37F
MXCSR_DEFAULT = 0x1F80
_ARGS64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI, X.UC_X86_REG_RDX,
           X.UC_X86_REG_R10, X.UC_X86_REG_R8, X.UC_X86_REG_R9)
_ARGS32 = (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
           X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP)
_ACCESS = {
    UC_MEM_READ_UNMAPPED: "read from unmapped address", UC_MEM_WRITE_UNMAPPED:
    "write to unmapped address", UC_MEM_FETCH_UNMAPPED: "execute at unmapped address",
    UC_MEM_READ_PROT: "read from protected address", UC_MEM_WRITE_PROT:
    "write to read-only address", UC_MEM_FETCH_PROT: "execute non-executable address",
}
_MEM_ERRORS = {UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
               UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT}
_EXCEPTIONS = {0: "division error", 1: "debug trap", 3: "breakpoint (int3)", 4: "overflow",
               5: "bound range exceeded", 6: "illegal instruction", 7: "FPU not available",
               8: "double fault", 12: "stack fault", 13: "general protection fault",
               14: "page fault", 16: "x87 floating-point error", 17: "alignment check",
               19: "SIMD floating-point error"}


class Vcpu:
    """Runs guest threads from the machine's scheduler until the partition is done."""

    def __init__(self, machine: Machine, index: int) -> None:
        self.machine = machine
        self.index = index
        self.is64 = machine.arch == "x86_64"
        self.pc_reg = X.UC_X86_REG_RIP if self.is64 else X.UC_X86_REG_EIP
        self.sp_reg = X.UC_X86_REG_RSP if self.is64 else X.UC_X86_REG_ESP
        self.ret_reg = X.UC_X86_REG_RAX if self.is64 else X.UC_X86_REG_EAX
        self.flags_reg = X.UC_X86_REG_EFLAGS
        self.table = machine.syscalls
        mem = machine.mem
        assert mem is not None
        self.mem: GuestMemory = mem
        uc = Uc(UC_ARCH_X86, UC_MODE_64 if self.is64 else UC_MODE_32)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        for addr, size, perms, host in self.mem.unicorn_regions():
            uc.mem_map_ptr(addr, size, perms, host)
        self.uc = uc
        self._uch = uc._uch
        if self.is64:
            uc.hook_add(UC_HOOK_INSN, self._on_syscall64, aux1=X.UC_X86_INS_SYSCALL)
        # At CPL 3 the CPU faults every privileged instruction except port I/O, which this
        # unicorn lets through (gen_check_io is a no-op): these hooks fault it instead. They
        # run only when a guest executes in/out/ins/outs, so they cost nothing otherwise.
        uc.hook_add(UC_HOOK_INSN, self._on_port_in, aux1=X.UC_X86_INS_IN)
        uc.hook_add(UC_HOOK_INSN, self._on_port_out, aux1=X.UC_X86_INS_OUT)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_MEM_INVALID, self._on_bad_memory)
        ids = _ARGS64 if self.is64 else _ARGS32
        self._ids = (ctypes.c_int * 7)(*ids)
        self._vals = (ctypes.c_uint64 * 7)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * 7)(*[base + 8 * i for i in range(7)])
        self._result = ctypes.c_uint64()
        self._result_ptr = ctypes.addressof(self._result)
        self._mask = (1 << 64) - 1 if self.is64 else 0xFFFFFFFF
        self.exec_generation = 0
        self._exec_seen = (-1, 0)       # (epoch, index) of memory.py's exec log applied
        self.thread: GuestThread | None = None
        self.run_started = 0.0
        self.stop_why: str | None = None
        self.fault: str | None = None
        self.kicks = 0                  # asynchronous stops requested (pause, preemption)
        self.task = Task(self, machine)  # what syscall handlers see of the calling thread

    # -- registers ------------------------------------------------------------------
    def reg(self, reg_id: int) -> int:
        return int(self.uc.reg_read(reg_id))

    def set_reg(self, reg_id: int, value: int) -> None:
        self.uc.reg_write(reg_id, value)

    @property
    def pc(self) -> int:
        return self.reg(self.pc_reg)

    def return_pc(self) -> int:
        """Inside a syscall hook: where the guest resumes (x86_64 RIP is still at ``syscall``)."""
        return self.pc + 2 if self.is64 else self.pc

    # -- the run loop -------------------------------------------------------------
    def run(self) -> None:
        sched = self.machine.sched
        while True:
            thread = sched.take()
            if thread is None:
                return
            try:
                self._run_thread(thread)
            except UcError as exc:
                sched.finish(None, self._describe(exc))
            except Exception as exc:  # a runtime bug must end the partition, not the agent
                self.machine.log_error(traceback.format_exc())
                sched.finish(None, f"runtime error: {exc!r}")
            finally:
                self.thread = None
            sched.release(thread)

    def _run_thread(self, thread: GuestThread) -> None:
        uc = self.uc
        self.run_started = time.monotonic()
        self.thread = thread
        if thread.context is not None:
            uc.context_restore(thread.context)
        if thread.fresh:
            if thread.context is None:
                self._reset_fpu()
            self._load_segments(thread)
        thread.fresh = False
        for reg_id, value in thread.pending.items():
            uc.reg_write(reg_id, value)
        thread.pending.clear()
        if self.mem.exec_generation != self.exec_generation:
            self._apply_exec()
        self.stop_why = None
        self.fault = None
        self.run_started = time.monotonic()
        paused = self.machine.sched.paused
        kicks = self.kicks
        if not paused:           # a pause that raced with take(): do not start at all
            uc.emu_start(self.pc, 0)
            paused = self.machine.sched.paused
        kicked = self.kicks != kicks
        if thread.context is None:
            thread.context = uc.context_save()
        else:
            uc.context_update(thread.context)
        if self.stop_why is None and thread.state == RUNNING and not paused and not kicked:
            if self.pc == 0:       # emu_start's `until` address: a jump to NULL
                self.machine.sched.finish(None, "guest fault: execute at unmapped address 0x0")
        # a kick (preemption, pause; maybe a late one) just requeues the thread

    def _load_segments(self, thread: GuestThread) -> None:
        """First run of a thread with a GDT of its own (every i386 thread; the x86_64 main
        thread, whose GDT the others share through their copied context).

        The main thread starts at CPL 0 on the boot page (gdt.py): SS is the kernel data
        segment its iret needs, DS/ES already the user's. An i386 clone child reloads GS from
        its own GDT. Later runs restore the whole context (GDTR and segment caches included).
        """
        if thread.gdt:
            self.uc.reg_write(X.UC_X86_REG_GDTR, (0, thread.gdt, GDT_SIZE - 1, 0))
        if self.is64:
            return
        if thread.context is None:
            self.uc.reg_write(X.UC_X86_REG_SS, KERNEL_DS_SELECTOR)
            for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES):
                self.uc.reg_write(seg, USER_DS_SELECTOR)
        gs = self.reg(X.UC_X86_REG_GS)
        if gs:
            self.uc.reg_write(X.UC_X86_REG_GS, gs)

    def _reset_fpu(self) -> None:
        """A program's first instruction sees the FPU as Linux's execve leaves it: x87 control
        word 0x37F (64-bit precision, all exceptions masked) and MXCSR 0x1F80 (all SSE
        exceptions masked, round to nearest). Unicorn starts both at 0, which runs x87 math
        at 24-bit precision and unmasks SSE exceptions."""
        self.uc.reg_write(X.UC_X86_REG_FPCW, X87_CONTROL_WORD)
        self.uc.reg_write(X.UC_X86_REG_MXCSR, MXCSR_DEFAULT)

    def _apply_exec(self) -> None:
        """Map executable what became so since this vCPU last looked (memory.py's log)."""
        pieces, self._exec_seen, self.exec_generation = self.mem.exec_since(self._exec_seen)
        for lo, hi in pieces:
            self.uc.mem_protect(lo, hi - lo, UC_PROT_ALL)

    def preempt(self, quantum: float) -> None:
        """From this vCPU's syscall hook: switch threads if the current one used ``quantum``.

        Compute-bound threads are preempted from outside by the machine's ticker (``kick``).
        """
        if self.thread is not None and time.monotonic() - self.run_started >= quantum:
            self.stop_why = "preempt"
            self.uc.emu_stop()

    def kick(self) -> None:
        """From another thread: stop emulation at the next TB start (pause, preemption).

        Exact only with the asyncstop patch (docs/unicorn-patch.md): the stop lands at an
        instruction boundary, never replaying a store. The guest thread is requeued.
        """
        if self.thread is not None:
            self.kicks += 1
            self.uc.emu_stop()

    def halt(self) -> None:
        self.stop_why = "halt"
        self.uc.emu_stop()

    def refresh_exec(self) -> None:
        """Apply new executable ranges now (called from this vCPU's own syscall hook)."""
        if self.mem.exec_generation != self.exec_generation:
            self._apply_exec()

    def close(self) -> None:
        """Release the Unicorn instance now (before guest memory is unmapped)."""
        finalizer = getattr(self.uc, "_Uc__finalizer", None)
        if finalizer is not None:
            finalizer()

    # -- hooks ------------------------------------------------------------------------
    def _on_syscall64(self, uc: Any, _user: Any) -> None:
        self._syscall()

    def _syscall(self) -> None:
        _uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, 7)
        vals = self._vals
        nr = vals[0]
        handler = self.table.get(nr)
        if handler is None:
            self.machine.unknown_syscall(nr)
            result = E.NOSYS
        else:
            try:
                result = handler(self.task, vals[1], vals[2], vals[3], vals[4], vals[5], vals[6])
            except OSError as exc:
                result = errno_of(exc)
            except GuestFault:
                result = E.FAULT
            except (ValueError, OverflowError, UnicodeError):   # malformed guest arguments
                result = E.INVAL
        if result == BLOCK or result == EXIT:
            self.stop_why = "block" if result == BLOCK else "exit"
            self.uc.emu_stop()
            return
        self._result.value = result & self._mask
        _uclib.uc_reg_write(self._uch, self.ret_reg, self._result_ptr)
        if self.machine.sched.runq:
            self.preempt(QUANTUM)

    def _on_port_in(self, uc: Any, _port: int, _size: int, _user: Any) -> int:
        self._protection_fault(uc)
        return 0

    def _on_port_out(self, uc: Any, _port: int, _size: int, _value: int, _user: Any) -> None:
        self._protection_fault(uc)

    def _protection_fault(self, uc: Any) -> None:
        """Port I/O at CPL 3 with IOPL 0 and no I/O bitmap: #GP, as the CPU would raise."""
        self._on_interrupt(uc, 13, None)

    def _on_interrupt(self, uc: Any, intno: int, _user: Any) -> None:
        if intno == 0x80 and not self.is64:
            self._syscall()
            return
        what = _EXCEPTIONS.get(intno, f"cpu exception {intno}")
        if intno == 0x80:
            what = "int 0x80 from 64-bit code (unsupported)"
        self.stop_why = "fault"
        self.machine.sched.finish(None, f"guest fault: {what} at pc 0x{self.pc:x}")
        uc.emu_stop()

    def _on_bad_memory(self, uc: Any, access: int, address: int, size: int, value: int,
                       _user: Any) -> bool:
        what = _ACCESS.get(access, "bad memory access at")
        self.fault = f"guest fault: {what} 0x{address:x} at pc 0x{self.pc:x}"
        if self.mem.in_guard_gap(address):
            self.fault += " (stack overflow into the guard gap)"
        return False

    def _describe(self, exc: UcError) -> str:
        if exc.errno in _MEM_ERRORS and self.fault:
            return self.fault
        if exc.errno == UC_ERR_INSN_INVALID:
            return f"illegal instruction at pc 0x{self.pc:x}"
        return f"guest fault: {exc} at pc 0x{self.pc:x}"

