"""One vCPU: a Unicorn instance on its own host thread, running guest threads in turn."""

from __future__ import annotations

import ctypes
import time
import traceback
from time import monotonic as _monotonic
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
    Uc,
    UcError,
)
from unicorn import x86_const as X

from . import syscall_fastpath
from .accounting import CpuMeter
from .gdt import GDT_SIZE, KERNEL_DS_SELECTOR, USER_DS_SELECTOR
from .memory import MAX_UC_REGIONS, GuestFault, GuestMemory
from .registers import ARGS32, ARGS64, GPR32, GPR64
from .sigframe import pack_fxsave, unpack_fxsave
from .signals import (
    SI_KERNEL,
    SIGBUS,
    SIGFPE,
    SIGILL,
    SIGSEGV,
    SIGTRAP,
    deliver,
    fault_signal,
    signal_name,
    terminate,
)
from .syscall_counts import OTHER, SLOTS
from .syscalls import tables
from .syscalls.common import BLOCK, EXIT, E, errno_of
from .task import Task
from .threads import DEAD, RUNNING, GuestThread

try:  # the binding's loaded libunicorn, for batch register access without per-call wrappers
    from unicorn.unicorn_py3.unicorn import uclib as _uclib
except ImportError:  # pragma: no cover - older binding layout
    from unicorn.unicorn import _uc as _uclib

if TYPE_CHECKING:
    from .machine import Machine

__all__ = ["Vcpu", "TCG_BUFFER"]

TCG_BUFFER = 48 << 20
QUANTUM = 0.02          # seconds a thread may keep its vCPU while others wait
#: Unicorn instances (address spaces) a vCPU keeps; each costs about 3 MiB plus its code.
MAX_SPACES = 16
X87_CONTROL_WORD = 0x37F
MXCSR_DEFAULT = 0x1F80
_ACCESS = {
    UC_MEM_READ_UNMAPPED: "read from unmapped address", UC_MEM_WRITE_UNMAPPED:
    "write to unmapped address", UC_MEM_FETCH_UNMAPPED: "execute at unmapped address",
    UC_MEM_READ_PROT: "read from protected address", UC_MEM_WRITE_PROT:
    "write to read-only address", UC_MEM_FETCH_PROT: "execute non-executable address",
}
#: CPU exception -> (signal, si_code) as Linux's traps.c sends them
_FAULT_SIGNALS = {0: (SIGFPE, 1), 1: (SIGTRAP, 1), 3: (SIGTRAP, SI_KERNEL),
                  6: (SIGILL, 2), 12: (SIGBUS, SI_KERNEL), 16: (SIGFPE, 0),
                  17: (SIGBUS, 1), 19: (SIGFPE, 0)}
#: unmasked flags (IE, ZE, OE, DE|UE, PE) -> FPE_FLTINV, FLTDIV, FLTOVF, FLTUND, FLTRES
_FPE_CODES = ((0x01, 7), (0x04, 3), (0x08, 4), (0x12, 5), (0x20, 6))
_SEGS = {"cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS, "ds": X.UC_X86_REG_DS,
         "es": X.UC_X86_REG_ES, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}
_NAMED64 = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rip", "eflags", "fs_base", "gs_base")}
_NAMED32 = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in (
    "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip", "eflags")}
_MEM_ERRORS = {UC_ERR_READ_UNMAPPED, UC_ERR_WRITE_UNMAPPED, UC_ERR_FETCH_UNMAPPED,
               UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UC_ERR_FETCH_PROT}
_EXCEPTIONS = {0: "division error", 1: "debug trap", 3: "breakpoint (int3)", 4: "overflow",
               5: "bound range exceeded", 6: "illegal instruction", 7: "FPU not available",
               8: "double fault", 12: "stack fault", 13: "general protection fault",
               14: "page fault", 16: "x87 floating-point error", 17: "alignment check",
               19: "SIMD floating-point error"}


#: div ecx with ecx = 0: the #DE the probe below raises.
_DIVIDE_BY_ZERO = bytes.fromhex("31d231c9b801000000f7f1")
_in_flight_offsets: dict[int, int | None] = {}


def _in_flight_offset(mode: int) -> int | None:
    """Where a Unicorn context holds QEMU's "exception in flight" (env->old_exception),
    found by raising #DE: the int that goes from -1 to 0 and, set back to -1, lets a second
    #DE be reported as 0 again (not 8). None if that cannot be found (then nothing is reset).

    unicorn hands CPU exceptions to the interrupt hook without delivering them, so the field
    stays set: the next contributory exception (#DE, #GP...) would be reported as a double
    fault (8) and the one after as a triple fault.
    """
    if mode in _in_flight_offsets:
        return _in_flight_offsets[mode]
    found: int | None = None
    uc = Uc(UC_ARCH_X86, mode)
    try:
        uc.ctl_set_tcg_buffer_size(4 << 20)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, _DIVIDE_BY_ZERO)
        seen: list[int] = []

        def hook(uc: Any, intno: int, _user: Any) -> None:
            seen.append(intno)
            uc.emu_stop()

        uc.hook_add(UC_HOOK_INTR, hook)
        end = 0x1000 + len(_DIVIDE_BY_ZERO)
        before = bytes(uc.context_save())
        uc.emu_start(0x1000, end)
        after = bytes(uc.context_save())
        for off in range(0, min(len(before), len(after)) - 3, 4):
            if before[off:off + 4] != b"\xff" * 4 or after[off:off + 4] != bytes(4):
                continue
            context = uc.context_save()
            _set_int(context, off, -1)
            uc.context_restore(context)
            seen.clear()
            uc.emu_start(0x1000, end)
            if seen == [0]:
                found = off
                break
    except UcError:
        found = None
    finally:
        _close_uc(uc)
    _in_flight_offsets[mode] = found
    return found


def _set_int(context: Any, offset: int, value: int) -> None:
    address = ctypes.cast(context.context, ctypes.c_void_p).value
    assert address is not None
    ctypes.c_int32.from_address(address + offset).value = value


class _Space:
    """A Unicorn instance mapping one address space, and how much of its exec log it
    applied."""

    __slots__ = ("mem", "uc", "exec_generation", "exec_seen", "regions")

    def __init__(self, mem: GuestMemory, uc: Any) -> None:
        self.mem = mem
        self.uc = uc
        self.exec_generation = 0
        self.exec_seen = (-1, 0)        # (epoch, index) of memory.py's permission log applied
        self.regions = 0                # Unicorn regions mapped (they are never merged)


def _close_uc(uc: Any) -> None:
    """Release a Unicorn instance now (before the guest memory it maps is unmapped)."""
    finalizer = getattr(uc, "_Uc__finalizer", None)
    if finalizer is not None:
        finalizer()


class Vcpu:
    """Runs guest threads from the machine's scheduler until the partition is done."""

    def __init__(self, machine: Machine, index: int) -> None:
        self.machine = machine
        self.index = index
        self._counts = machine.syscall_counts.row(index)
        self._count_base = 0
        self.flags_reg = X.UC_X86_REG_EFLAGS
        self._ids = (ctypes.c_int * 7)()         # the syscall number's and arguments' registers
        self._vals = (ctypes.c_uint64 * 7)()
        base = ctypes.addressof(self._vals)
        self._ptrs = (ctypes.c_void_p * 7)(*[base + 8 * i for i in range(7)])
        self._result = ctypes.c_uint64()
        self._result_ptr = ctypes.addressof(self._result)
        self._nr = -1                            # the syscall being handled (syscall_nr)
        self.meter = CpuMeter()         # the CPU time of each run slice (accounting.py)
        self.task = Task(self, machine)  # what syscall handlers see of the calling thread
        mem = machine.mem
        assert mem is not None
        self._use_arch(mem.bits == 64)
        # One Unicorn instance per address space this vCPU has run (a process's memory; a
        # vfork child shares its parent's): switching processes switches instances. Each
        # instance runs in its space's mode: an i386 and an x86_64 process can share a vCPU.
        self._spaces: dict[int, _Space] = {}
        self._space = self._space_for(mem)
        self.mem: GuestMemory = mem
        self.uc = self._space.uc
        self._uch = self.uc._uch
        self.thread: GuestThread | None = None
        self.run_started = 0.0
        self.stop_why: str | None = None
        self.fault: str | None = None
        self.fault_access: tuple[int, int] | None = None   # (access, address) of a bad access
        self.kicks = 0                  # asynchronous stops requested (pause, preemption)
        self.exception_taken = False    # a CPU exception went to a handler: see below

    def _use_arch(self, is64: bool) -> None:
        """Take the bound address space's architecture: its registers, syscall table and
        ABI (a vCPU runs x86_64 and i386 processes in turn, as Linux's compat mode does)."""
        self.is64 = is64
        self._count_base = 0 if is64 else SLOTS
        self.pc_reg = X.UC_X86_REG_RIP if is64 else X.UC_X86_REG_EIP
        self.sp_reg = X.UC_X86_REG_RSP if is64 else X.UC_X86_REG_ESP
        self.ret_reg = X.UC_X86_REG_RAX if is64 else X.UC_X86_REG_EAX
        self.general_regs = GPR64 if is64 else GPR32
        self.table = tables("x86_64" if is64 else "i386")
        for i, reg in enumerate(ARGS64 if is64 else ARGS32):
            self._ids[i] = reg
        # A 32-bit register read fills only the low half of its slot: clear what an x86_64
        # process left in the high halves.
        ctypes.memset(self._vals, 0, ctypes.sizeof(self._vals))
        self._mask = (1 << 64) - 1 if is64 else 0xFFFFFFFF
        self.task.use_arch(is64)

    # -- address spaces -------------------------------------------------------------
    def _space_for(self, mem: GuestMemory) -> _Space:
        space = self._spaces.get(id(mem))
        if space is None or space.mem is not mem:
            is64 = mem.bits == 64
            uc = Uc(UC_ARCH_X86, UC_MODE_64 if is64 else UC_MODE_32)
            uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
            regions, seen, generation = mem.unicorn_layout()
            for addr, size, perms, host in regions:
                uc.mem_map_ptr(addr, size, perms, host)
            # The syscall (x86_64) / int 0x80 (i386) and interrupt hooks: from C when the
            # fast path is built (syscall_fastpath.py), else through the binding's ctypes.
            fast = syscall_fastpath.install(
                uc, _uclib, ARGS64 if is64 else ARGS32,
                X.UC_X86_REG_RAX if is64 else X.UC_X86_REG_EAX, is64,
                self.syscall_entry, self._on_interrupt_fast, self._counts,
                0 if is64 else SLOTS, self.meter)
            if fast is None:
                if is64:
                    uc.hook_add(UC_HOOK_INSN, self._on_syscall64, aux1=X.UC_X86_INS_SYSCALL)
                uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
            # At CPL 3 the CPU faults every privileged instruction except port I/O, which this
            # unicorn lets through (gen_check_io is a no-op): these hooks fault it instead.
            # They run only when a guest executes in/out/ins/outs, so they cost nothing else.
            uc.hook_add(UC_HOOK_INSN, self._on_port_in, aux1=X.UC_X86_INS_IN)
            uc.hook_add(UC_HOOK_INSN, self._on_port_out, aux1=X.UC_X86_INS_OUT)
            uc.hook_add(UC_HOOK_MEM_INVALID, self._on_bad_memory)
            space = _Space(mem, uc)
            space.exec_seen, space.exec_generation = seen, generation
            space.regions = len(regions)
            self._evict_spaces()
        else:
            del self._spaces[id(mem)]           # re-inserted last: most recently used
        self._spaces[id(mem)] = space
        return space

    def _evict_spaces(self) -> None:
        """Keep at most MAX_SPACES Unicorn instances: close the least recently used (its
        process gets a fresh one, and translates its code again, when it next runs here)."""
        while len(self._spaces) >= MAX_SPACES:
            key = next(iter(self._spaces))
            space = self._spaces.pop(key)
            if space is self._space:            # bound now (not running): keep it last
                self._spaces[key] = space
                if len(self._spaces) == 1:
                    return
                continue
            _close_uc(space.uc)

    def _bind(self, thread: GuestThread) -> bool:
        """Take ``thread`` and run on its address space's Unicorn instance from now on
        (vCPU thread, not emulating); False when it was killed since ``take`` handed it out.

        One step under the machine's ``_uc_lock``, which ``Machine.collect_memory`` holds to
        drop instances and unmap retired address spaces: a vCPU that has taken a thread
        (``self.thread`` set) keeps its instance, and a thread whose process died in
        between (its memory maybe unmapped already) is never run."""
        with self.machine._uc_lock:
            mem = thread.process.mem
            if thread.state == DEAD or mem.host == 0:
                return False
            self.thread = thread
            if self.mem is mem and self._space.mem is mem and self._space.uc is not None:
                return True
            self._space = self._space_for(mem)
            self.mem = mem
            self.uc = self._space.uc
            self._uch = self.uc._uch
            if (mem.bits == 64) != self.is64:
                self._use_arch(mem.bits == 64)
            return True

    def drop_space(self, mem: GuestMemory) -> bool:
        """Close the Unicorn instance for ``mem`` unless it is running now (caller holds the
        machine's _uc_lock). True when this vCPU no longer has one."""
        space = self._spaces.get(id(mem))
        if space is None or space.mem is not mem:
            return True
        if self.thread is not None and self._space is space:
            return False
        del self._spaces[id(mem)]
        if self._space is space:
            # Bound to nothing until the next _bind; ``self.uc`` still names the closed
            # instance, so nothing may use it before then (halt goes through _space).
            self._space = _Space(mem, None)
        _close_uc(space.uc)
        return True

    # -- registers ------------------------------------------------------------------
    def reg(self, reg_id: int) -> int:
        return int(self.uc.reg_read(reg_id))

    def set_reg(self, reg_id: int, value: int) -> None:
        self.uc.reg_write(reg_id, value)

    def regs_dict(self) -> dict[str, int]:
        """The general registers, pc, flags and segment selectors (bases on x86_64)."""
        names = _NAMED64 if self.is64 else _NAMED32
        out = {n: int(self.uc.reg_read(r)) for n, r in names.items()}
        out.update((n, int(self.uc.reg_read(r))) for n, r in _SEGS.items())
        return out

    def write_regs(self, regs: dict[str, int]) -> None:
        """Write the named registers; a segment selector the CPU refuses loads as 0."""
        names = _NAMED64 if self.is64 else _NAMED32
        for name, value in regs.items():
            if name in _SEGS:
                if int(self.uc.reg_read(_SEGS[name])) != value & 0xFFFF:
                    try:
                        self.uc.reg_write(_SEGS[name], value & 0xFFFF)
                    except UcError:
                        self.uc.reg_write(_SEGS[name], 0)
            elif name in names:
                self.uc.reg_write(names[name], value & self._mask)

    def fpu_image(self) -> bytes:
        """The x87/SSE state as fxsave would store it (ST(i) in stack order)."""
        uc = self.uc
        fsw = int(uc.reg_read(X.UC_X86_REG_FPSW))
        top = (fsw >> 11) & 7
        st = [uc.reg_read(X.UC_X86_REG_FP0 + ((top + i) & 7)) for i in range(8)]
        xmm = [int(uc.reg_read(X.UC_X86_REG_XMM0 + i)) for i in range(16 if self.is64 else 8)]
        return pack_fxsave(int(uc.reg_read(X.UC_X86_REG_FPCW)), fsw,
                           int(uc.reg_read(X.UC_X86_REG_FPTAG)),
                           [(int(m), int(e)) for m, e in st],
                           int(uc.reg_read(X.UC_X86_REG_MXCSR)), xmm)

    def load_fpu_image(self, data: bytes) -> None:
        """Load an fxsave image (the inverse of fpu_image; reserved MXCSR bits dropped)."""
        uc = self.uc
        v = unpack_fxsave(data, 16 if self.is64 else 8)
        uc.reg_write(X.UC_X86_REG_FPCW, v["fcw"])
        uc.reg_write(X.UC_X86_REG_FPSW, v["fsw"])
        uc.reg_write(X.UC_X86_REG_FPTAG, v["ftag"])
        top = (v["fsw"] >> 11) & 7
        for i, (mant, exp) in enumerate(v["st"]):
            uc.reg_write(X.UC_X86_REG_FP0 + ((top + i) & 7), (mant, exp))
        uc.reg_write(X.UC_X86_REG_MXCSR, v["mxcsr"])
        for i, value in enumerate(v["xmm"]):
            uc.reg_write(X.UC_X86_REG_XMM0 + i, value)

    @property
    def syscall_nr(self) -> int:
        """Inside a syscall hook: the number of the call being handled."""
        return self._nr

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
                sig = SIGILL if exc.errno == UC_ERR_INSN_INVALID else \
                    SIGSEGV if exc.errno in _MEM_ERRORS else 0
                self._fatal(sig, self._describe(exc))
            except Exception as exc:  # a runtime bug must end the partition, not the agent
                self.machine.log_error(traceback.format_exc())
                sched.finish(None, f"runtime error: {exc!r}")
            finally:
                self.meter.stop()
                self.thread = None
            sched.release(thread)
            if self.machine._dead_mems:
                self.machine.collect_memory()

    def _run_thread(self, thread: GuestThread) -> None:
        if not self._bind(thread):
            return                       # killed meanwhile: release() drops it
        uc = self.uc
        self.run_started = time.monotonic()
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
        self.stop_why = None
        self.fault = None
        self.run_started = time.monotonic()
        self.meter.start(thread)
        sched = self.machine.sched
        paused = sched.paused
        kicks = self.kicks
        while True:              # signal work (delivery, sigreturn) between runs
            if thread.sig_dirty:
                began = time.monotonic()
                deliver(self.task)
                self.meter.system += time.monotonic() - began
            if self.mem.exec_generation != self._space.exec_generation:
                self._apply_exec()               # permissions changed (mprotect, mmap...)
                uc = self.uc
            # a pause that raced with take(): do not start at all
            if not paused and thread.state == RUNNING and not sched.done:
                self.stop_why = None
                try:
                    uc.emu_start(self.pc, 0)
                except UcError as exc:
                    if self._stale_permissions(exc):
                        continue                 # apply them and run the access again
                    if not self._fault_signal(thread, exc):
                        raise
                if self.exception_taken:
                    self._end_exception()
                paused = sched.paused
                if (self.stop_why is None and thread.state == RUNNING and not paused
                        and self.kicks == kicks and self.pc == 0
                        and fault_signal(self.task, SIGSEGV, 1, 0, 14, 0x14, 0)):
                    continue                     # a jump to NULL, taken by a handler
            if (self.stop_why == "signal" and thread.state == RUNNING and not paused
                    and self.kicks == kicks and not sched.done):
                continue
            break
        kicked = self.kicks != kicks
        if thread.reset_context:        # execve: the next run starts the new program
            thread.reset_context = False
            thread.context = None
            thread.fresh = True
        elif thread.context is None:
            thread.context = uc.context_save()
        else:
            uc.context_update(thread.context)
        if self.stop_why is None and thread.state == RUNNING and not paused and not kicked:
            if self.pc == 0:       # emu_start's `until` address: a jump to NULL
                self._fatal(SIGSEGV, "guest fault: execute at unmapped address 0x0")
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
        """Apply the permission changes since this vCPU last looked (memory.py's log), or,
        when the log was emptied since or the instance has too many regions, rebuild the
        instance from the current permissions. Outside emulation only."""
        space = self._space
        changes, seen, generation = self.mem.exec_since(space.exec_seen)
        if changes is None or space.regions + 2 * len(changes) > MAX_UC_REGIONS:
            self._rebuild_space()
            return
        for lo, hi, perms in changes:
            self.uc.mem_protect(lo, hi - lo, perms)
        space.regions += 2 * len(changes)
        space.exec_seen, space.exec_generation = seen, generation

    def _rebuild_space(self) -> None:
        """A new Unicorn instance for the bound address space, mapping its permissions as
        they are now, with this one's CPU state (its translated code is lost)."""
        context = self.uc.context_save()
        mem = self.mem
        with self.machine._uc_lock:
            old = self._spaces.pop(id(mem), None)
            self._space = self._space_for(mem)
            self.uc = self._space.uc
            self._uch = self.uc._uch
            if old is not None:
                _close_uc(old.uc)
        self.uc.context_restore(context)

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
        """Stop for good (the machine is done; caller holds the machine's _uc_lock).

        Through the current space, never ``self.uc``: on an idle vCPU, ``drop_space`` may
        have closed that instance already, and an emu_stop on it used freed memory (the
        test process died of SIGSEGV when a fork's child exited on one vCPU and the parent's
        exit_group then halted every vCPU). An idle vCPU has nothing to stop."""
        self.stop_why = "halt"
        uc = self._space.uc
        if uc is not None:
            uc.emu_stop()

    def refresh_exec(self) -> None:
        """Nothing: new permissions apply when the syscall returns (``_syscall`` stops
        emulation for them; ``_run_thread`` applies them before resuming)."""

    def close(self) -> None:
        """Release the Unicorn instance now (before guest memory is unmapped)."""
        for space in self._spaces.values():
            _close_uc(space.uc)
        self._spaces.clear()

    # -- hooks ------------------------------------------------------------------------
    def _on_syscall64(self, uc: Any, _user: Any) -> None:
        self._syscall()

    def _syscall(self) -> None:
        """The ctypes path (no fast path built): read the registers, count the call, handle
        it, charge its time and write the result register, as the C hook does."""
        began = _monotonic()
        _uclib.uc_reg_read_batch(self._uch, self._ids, self._ptrs, 7)
        vals = self._vals
        nr = vals[0]
        self._counts[self._count_base + (nr if nr < OTHER else OTHER)] += 1
        result = self.syscall_entry(nr, vals[1], vals[2], vals[3], vals[4], vals[5], vals[6])
        self.meter.system += _monotonic() - began
        if result is not None:
            self._result.value = result & self._mask
            _uclib.uc_reg_write(self._uch, self.ret_reg, self._result_ptr)

    def syscall_entry(self, nr: int, a1: int, a2: int, a3: int, a4: int, a5: int,
                      a6: int) -> int | None:
        """One syscall, from a hook (the C fast path's or ``_syscall``, which count it and
        charge its time): run its handler, and return what the result register gets (its
        caller masks it), or None when the thread blocked or exited (emulation is stopped
        then). A signal to deliver, new permissions to apply or a thread waiting for this
        vCPU stop emulation after the result is written, so the thread sees it first."""
        self._nr = nr
        handler = self.table.get(nr)
        if handler is None:
            self.machine.unknown_syscall(nr, "x86_64" if self.is64 else "i386")
            result = E.NOSYS
        else:
            try:
                result = handler(self.task, a1, a2, a3, a4, a5, a6)
            except OSError as exc:
                result = errno_of(exc)
            except GuestFault:
                result = E.FAULT
            except (ValueError, OverflowError, UnicodeError):   # malformed guest arguments
                result = E.INVAL
        thread = self.thread
        if result >= BLOCK and (result == BLOCK or result == EXIT):   # one compare if not
            self.stop_why = "block" if result == BLOCK else "exit"
            if result == BLOCK and thread is not None:
                thread.sig.syscall_nr = nr          # a signal may restart it
            self.uc.emu_stop()
            return None
        if thread is not None and (thread.sig_dirty              # deliver before returning
                                   or self.mem.exec_generation
                                   != self._space.exec_generation):
            self.stop_why = "signal"              # (or apply new permissions first)
            self.uc.emu_stop()
        elif self.machine.sched.runq:
            self.preempt(QUANTUM)
        return result

    def _on_interrupt_fast(self, intno: int) -> None:
        """The C hook's call for an interrupt that is not a syscall (a CPU exception)."""
        self._on_interrupt(self.uc, intno, None)

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
        elif self._exception_signal(intno):
            return
        self.stop_why = "fault"
        description = f"guest fault: {what} at pc 0x{self.pc:x}"
        if intno == 0x80:
            self.machine.sched.finish(None, description)     # the runtime's limit, not a fault
        else:
            self._fatal(_FAULT_SIGNALS.get(intno, (SIGSEGV, 0))[0], description)
        uc.emu_stop()

    def _on_bad_memory(self, uc: Any, access: int, address: int, size: int, value: int,
                       _user: Any) -> bool:
        what = _ACCESS.get(access, "bad memory access at")
        self.fault_access = (access, address)
        self.fault = f"guest fault: {what} 0x{address:x} at pc 0x{self.pc:x}"
        if self.mem.in_guard_gap(address):
            self.fault += " (stack overflow into the guard gap)"
        return False

    def _exception_signal(self, intno: int) -> bool:
        """A CPU exception the thread's handler takes (SIGFPE, SIGILL, SIGTRAP, SIGBUS, or
        SIGSEGV for the rest): queue it and stop; False when it is fatal."""
        sig, code = _FAULT_SIGNALS.get(intno, (SIGSEGV, SI_KERNEL))
        if intno in (16, 19):
            code = self._fpu_exception_code(intno)
        addr = self.pc if sig in (SIGFPE, SIGILL) else 0
        if self.thread is None or not fault_signal(self.task, sig, code, addr, intno, 0, 0):
            return False
        self.exception_taken = True
        self.stop_why = "signal"
        self.uc.emu_stop()
        return True

    def _fpu_exception_code(self, intno: int) -> int:
        """si_code of an x87 (#MF, 16) or SSE (#XM, 19) exception, from the flags the
        instruction left unmasked, in the order of Linux's fpu__exception_code."""
        if intno == 16:
            err = (int(self.uc.reg_read(X.UC_X86_REG_FPSW))
                   & ~int(self.uc.reg_read(X.UC_X86_REG_FPCW)))
        else:
            mxcsr = int(self.uc.reg_read(X.UC_X86_REG_MXCSR))
            err = mxcsr & ~(mxcsr >> 7)
        for bits, code in _FPE_CODES:
            if err & bits:
                return code
        return 0

    def _end_exception(self) -> None:
        """The exception a handler took is over for the CPU too (``_in_flight_offset``):
        otherwise the guest's next #DE or #GP would be a double fault."""
        self.exception_taken = False
        offset = _in_flight_offset(UC_MODE_64 if self.is64 else UC_MODE_32)
        if offset is not None:
            context = self.uc.context_save()
            _set_int(context, offset, -1)
            self.uc.context_restore(context)

    def _stale_permissions(self, exc: UcError) -> bool:
        """A memory fault while another thread of this address space changed permissions
        (mmap, mprotect on another vCPU) since this instance last applied them: on Linux the
        change was in force for every thread when its syscall returned, so the access is run
        again under the new permissions instead of faulting. (glibc's fork locks every
        malloc arena, one another thread just made with mmap + mprotect among them.) The
        faulting instruction did not complete, and the PC is still at it."""
        if exc.errno not in _MEM_ERRORS or \
                self.mem.exec_generation == self._space.exec_generation:
            return False
        self.fault_access = None
        self.fault = None
        return True

    def _fault_signal(self, thread: GuestThread, exc: UcError) -> bool:
        """emu_start failed on a memory fault or an invalid instruction: True when the
        thread's SIGSEGV/SIGILL handler takes it (delivered before it runs again)."""
        if exc.errno in _MEM_ERRORS and self.fault_access is not None:
            access, addr = self.fault_access
            self.fault_access = None
            prot = access in (UC_MEM_READ_PROT, UC_MEM_WRITE_PROT, UC_MEM_FETCH_PROT)
            write = access in (UC_MEM_WRITE_UNMAPPED, UC_MEM_WRITE_PROT)
            fetch = access in (UC_MEM_FETCH_UNMAPPED, UC_MEM_FETCH_PROT)
            err = 4 | (1 if prot else 0) | (2 if write else 0) | (0x10 if fetch else 0)
            taken = fault_signal(self.task, SIGSEGV, 2 if prot else 1, addr, 14, err, addr)
        elif exc.errno == UC_ERR_INSN_INVALID:
            taken = fault_signal(self.task, SIGILL, 2, self.pc, 6, 0, 0)
        else:
            return False
        if taken:
            self.stop_why = "signal"
        return taken

    def _fatal(self, sig: int, description: str) -> None:
        """A CPU fault no handler takes (``sig``: its signal; 0 for an emulator error that
        is not the guest's doing). In pid 1 it fails the partition (``description`` names
        it); any other process dies of the signal with a core-dump status, as on Linux, and
        the partition goes on (its parent sees WTERMSIG; an event names it)."""
        thread = self.thread
        if thread is None or thread.process.pid == 1 or not sig:
            self.machine.sched.finish(None, description)
            return
        process = thread.process
        self.machine.event("ProcessFault", f"pid {process.pid} ({process.comm or process.exe}) "
                           f"{description}: killed by {signal_name(sig)}")
        terminate(self.machine, process, sig, True)

    def _describe(self, exc: UcError) -> str:
        if exc.errno in _MEM_ERRORS and self.fault:
            return self.fault
        if exc.errno == UC_ERR_INSN_INVALID:
            return f"illegal instruction at pc 0x{self.pc:x}"
        return f"guest fault: {exc} at pc 0x{self.pc:x}"

