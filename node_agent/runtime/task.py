"""The kernel boundary: what a syscall handler sees of the guest that called it.

A handler gets a Task and the six raw argument registers. Through the Task it reaches the
calling guest thread, that thread's process (memory, descriptors, working directory), and
the partition-wide services (``kernel``: scheduler, filesystem, spec, events). It never
touches the vCPU or Unicorn: the few things a handler needs from the CPU (the thread's TLS
base, a copy of its registers for a new thread, giving up the vCPU) are methods here, which
the vCPU implements. One Task per vCPU; it follows whichever thread the vCPU runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as X

from .abi import ABI_I386, ABI_X86_64
from .registers import start_registers

if TYPE_CHECKING:
    from .abi import Abi
    from .files import FdTable
    from .machine import Machine
    from .memory import GuestMemory
    from .process import Process
    from .threads import GuestThread
    from .vcpu import Vcpu

__all__ = ["Task", "FS", "GS"]

FS, GS = "fs", "gs"
_BASES = {FS: X.UC_X86_REG_FS_BASE, GS: X.UC_X86_REG_GS_BASE}


class Task:
    """The calling thread as syscall handlers see it (see the module docstring)."""

    __slots__ = ("_cpu", "kernel", "abi", "is64")

    def __init__(self, cpu: Vcpu, kernel: Machine) -> None:
        self._cpu = cpu
        self.kernel = kernel
        self.abi: Abi = ABI_X86_64
        self.is64 = True

    def use_arch(self, is64: bool) -> None:
        """The vCPU switched to a process of the other architecture (vcpu._use_arch)."""
        self.is64 = is64
        self.abi = ABI_X86_64 if is64 else ABI_I386

    # -- who is calling ----------------------------------------------------------------
    @property
    def thread(self) -> GuestThread:
        thread = self._cpu.thread
        assert thread is not None, "a syscall always has a calling thread"
        return thread

    @property
    def process(self) -> Process:
        thread = self._cpu.thread
        assert thread is not None, "a syscall always has a calling thread"
        return thread.process

    @property
    def mem(self) -> GuestMemory:
        return self._cpu.mem

    @property
    def fds(self) -> FdTable:
        thread = self._cpu.thread
        assert thread is not None, "a syscall always has a calling thread"
        return thread.process.fds

    def raise_signal(self, sig: int) -> None:
        """Send ``sig`` to the calling thread (SIGPIPE, a signal to itself)."""
        self.kernel.raise_signal(self.thread, sig)

    # -- the few CPU services a handler needs ---------------------------------------------
    def segment_base(self, which: str) -> int:
        """The calling thread's FS or GS base (arch_prctl ARCH_GET_FS/GS)."""
        return self._cpu.reg(_BASES[which])

    def set_segment_base(self, which: str, addr: int) -> None:
        self._cpu.set_reg(_BASES[which], addr)

    def copy_registers_to(self, child: GuestThread, stack: int, tls: int | None) -> None:
        """Give ``child`` this thread's registers as they are at the syscall's return, with
        0 as its result, ``stack`` (if non-zero) as its stack pointer and, on x86_64,
        ``tls`` (if given) as its FS base: clone's new thread."""
        cpu = self._cpu
        child.context = cpu.uc.context_save()
        # Inside the hook the saved context still points at the syscall instruction itself.
        child.pending[cpu.pc_reg] = cpu.return_pc()
        child.pending[cpu.ret_reg] = 0
        if stack:
            child.pending[cpu.sp_reg] = stack
        if tls is not None and self.is64:
            child.pending[X.UC_X86_REG_FS_BASE] = tls
        # A new thread inherits the signal mask; a forked child also the alternate stack.
        parent = self.thread.sig
        same = child.process is self.thread.process
        child.sig = parent.clone_thread() if same else parent.fork_copy()

    def restart_registers(self, args: dict[int, int] | None = None) -> dict[int, int]:
        """Registers that make the calling thread issue this syscall again when it next
        runs (a blocking call woken to retry, as Linux restarts after -ERESTARTSYS), with
        argument ``i`` (0-5) replaced by ``args[i]``; the result register holds the number."""
        cpu = self._cpu
        ids = cpu._ids                       # the number's and the six arguments' registers
        regs = {cpu.pc_reg: cpu.return_pc() - 2, cpu.ret_reg: cpu.syscall_nr}
        for index, value in (args or {}).items():
            regs[ids[index + 1]] = value
        return regs

    def start_program(self, pc: int, sp: int, is64: bool) -> None:
        """execve: the calling thread's next run starts a new program (x86_64 or i386:
        ``is64``) at ``pc`` with stack ``sp`` and every other register cleared, on its
        process's (new) address space."""
        thread = self.thread
        thread.pending = start_registers(is64, pc, sp)
        thread.reset_context = True
        thread.sig.reset_on_exec()

    def arm_restart(self) -> None:
        """Before parking: a wake-up with threads.RESTART runs this syscall again (same
        number and arguments) instead of returning a result."""
        cpu = self._cpu
        self.thread.restart = {cpu.pc_reg: cpu.return_pc() - 2, cpu.ret_reg: cpu.syscall_nr}

    # -- signal delivery: the thread's registers as a signal frame holds them --------------
    def get_regs(self) -> dict[str, int]:
        """General registers, pc ("rip"/"eip"), "eflags", segment selectors ("cs", "ss",
        "ds", "es", "fs", "gs") and, on x86_64, "fs_base"/"gs_base"."""
        return self._cpu.regs_dict()

    def set_regs(self, regs: dict[str, int]) -> None:
        """Write the named registers (get_regs's names); the caller sanitizes them."""
        self._cpu.write_regs(regs)

    def get_fpu(self) -> bytes:
        """The x87/SSE state as a 512-byte fxsave image."""
        return self._cpu.fpu_image()

    def set_fpu(self, image: bytes) -> None:
        """Load a 512-byte fxsave image (reserved MXCSR bits are dropped)."""
        self._cpu.load_fpu_image(image)

    def refresh_exec(self) -> None:
        """Make pages the handler just made executable runnable on this vCPU now."""
        self._cpu.refresh_exec()

    def yield_cpu(self) -> None:
        """Give the vCPU to a waiting thread when this syscall returns (sched_yield)."""
        self._cpu.preempt(0.0)
