"""Signal frames on the guest stack, laid out as Linux's x86 signal code lays them out.

x86_64: ``struct rt_sigframe`` (return address, ucontext, siginfo) with the FPU state in
fxsave format 64-byte aligned above it. i386: the rt frame (SA_SIGINFO) and the classic
``struct sigframe``; their FPU state is the 112-byte legacy fsave header followed by the
fxsave image. A handler may read and change all of it; ``read_frame`` gives back what
rt_sigreturn/sigreturn restore, and the caller sanitizes it (the guest wrote it).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SigInfo", "FrameSpec", "Restored", "write_frame", "read_frame", "pack_fxsave",
           "unpack_fxsave", "FXSAVE_SIZE", "frame_address", "RT_FRAME_64", "RT_FRAME_32",
           "SIGFRAME_32", "sanitize_flags"]

FXSAVE_SIZE = 512
FSAVE_HEADER = 112                 # i386: struct fregs_state before the fxsave image
REDZONE = 128                      # x86_64 leaf functions may use 128 bytes below rsp
RT_FRAME_64 = 8 + 304 + 128        # pretcode + ucontext + siginfo
RT_FRAME_32 = 16 + 128 + 116 + 8   # pretcode, sig, pinfo, puc + siginfo + ucontext + retcode
SIGFRAME_32 = 8 + 88 + 624 + 4 + 8  # pretcode, sig + sigcontext + legacy fpstate + mask + code
UC_FLAGS_64 = 0x2 | 0x4            # UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS
SS_ONSTACK, SS_DISABLE = 1, 2

# eflags bits a signal return may change (Linux's FIX_EFLAGS without TF/RF: this emulator's
# single-stepping is not a guest feature).
_USER_FLAGS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800 | 0x40000   # CF PF AF ZF SF DF OF AC
_ALWAYS = 0x202                    # IF and the reserved bit 1

_REGS64 = ("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx",
           "rdx", "rax", "rcx", "rsp", "rip", "eflags")
_REGS32 = ("edi", "esi", "ebp", "esp", "ebx", "edx", "ecx", "eax")
_RETCODE_SIG = b"\x58\xb8\x77\x00\x00\x00\xcd\x80"      # popl %eax; movl $119,%eax; int $0x80
_RETCODE_RT = b"\xb8\xad\x00\x00\x00\xcd\x80\x00"       # movl $173,%eax; int $0x80


@dataclass
class SigInfo:
    """The siginfo a handler (SA_SIGINFO) or sigtimedwait sees."""

    signo: int
    code: int = 0
    errno: int = 0
    pid: int = 0
    uid: int = 0
    addr: int = 0          # faults: the address
    value: int = 0         # sigqueue/timers: sigval
    timerid: int = 0
    overrun: int = 0
    status: int = 0
    kind: str = "kill"     # which union member: kill, rt, fault, timer, chld

    def pack(self, is64: bool) -> bytes:
        word = "Q" if is64 else "I"
        mask = (1 << 64) - 1 if is64 else 0xFFFFFFFF
        head = struct.pack("<iii", self.signo, self.errno, self.code)
        head += b"\0" * 4 if is64 else b""
        if self.kind == "fault":
            body = struct.pack("<" + word, self.addr & mask)
        elif self.kind == "timer":
            body = struct.pack("<ii" + word, self.timerid, self.overrun, self.value & mask)
        elif self.kind == "chld":
            body = struct.pack("<iIi", self.pid, self.uid, self.status)
        else:                                  # kill, rt (sigqueue): pid, uid, sigval
            body = struct.pack("<iI" + word, self.pid, self.uid, self.value & mask)
        data = head + body
        return data + bytes(128 - len(data))

    def save(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def restore(cls, data: dict[str, Any]) -> SigInfo:
        ints = {k: int(v) for k, v in data.items() if k != "kind"}
        return cls(int(ints.pop("signo")), **ints, kind=str(data.get("kind", "kill")))


@dataclass
class FrameSpec:
    """What goes into one signal frame (everything the caller knows)."""

    sig: int
    info: SigInfo
    handler: int
    restorer: int          # 0: no SA_RESTORER
    rt: bool               # SA_SIGINFO frame (always on x86_64)
    mask: int              # the mask to restore on return (uc_sigmask / oldmask)
    stack: tuple[int, int, int]   # the altstack: (ss_sp, ss_flags, ss_size) for uc_stack
    trap: tuple[int, int, int] = (0, 0, 0)   # trapno, err, cr2 of a fault


@dataclass
class Restored:
    """What a sigreturn puts back: registers, FPU image (or None: reset), mask."""

    regs: dict[str, int]
    fpu: bytes | None
    mask: int


def frame_address(sp: int, is64: bool, rt: bool) -> tuple[int, int]:
    """(frame address, FPU area address) below ``sp`` (already switched to the altstack)."""
    if is64:
        fx = (sp - FXSAVE_SIZE) & ~63
        return ((fx - RT_FRAME_64) & ~15) - 8, fx
    fx = (sp - FXSAVE_SIZE) & ~63
    fpstate = fx - FSAVE_HEADER
    size = RT_FRAME_32 if rt else SIGFRAME_32
    return ((fpstate - size + 4) & ~15) - 4, fpstate


def sanitize_flags(old: int, new: int) -> int:
    return (old & ~_USER_FLAGS & ~0x100) | (new & _USER_FLAGS) | _ALWAYS


def _fsave_header(fx: bytes) -> bytes:
    """The legacy i386 fsave environment + registers derived from an fxsave image."""
    fcw, fsw, ftw = struct.unpack_from("<HHB", fx, 0)
    tags = 0
    for phys in range(8):
        valid = (ftw >> phys) & 1
        tags |= (0 if valid else 3) << (2 * phys)
    regs = b"".join(fx[32 + 16 * i:32 + 16 * i + 10] for i in range(8))
    return struct.pack("<7I", 0xFFFF0000 | fcw, 0xFFFF0000 | fsw, 0xFFFF0000 | tags,
                       0, 0, 0, 0xFFFF0000) + regs + struct.pack("<HH", fsw, 0)


def _mcontext64(regs: dict[str, int], spec: FrameSpec, fpaddr: int) -> bytes:
    words = struct.pack("<18Q", *(regs[n] & (1 << 64) - 1 for n in _REGS64))
    segs = struct.pack("<HHHH", regs["cs"], regs.get("gs", 0), regs.get("fs", 0), regs["ss"])
    trapno, err, cr2 = spec.trap
    tail = struct.pack("<QQQQQ", err, trapno, spec.mask & 0xFFFFFFFF, cr2, fpaddr)
    return words + segs + tail + bytes(64)


def _mcontext32(regs: dict[str, int], spec: FrameSpec, fpaddr: int) -> bytes:
    trapno, err, cr2 = spec.trap
    return struct.pack("<4I8I3I5I2I", regs["gs"], regs["fs"], regs["es"], regs["ds"],
                       *(regs[n] & 0xFFFFFFFF for n in _REGS32), trapno, err,
                       regs["eip"] & 0xFFFFFFFF, regs["cs"], regs["eflags"] & 0xFFFFFFFF,
                       regs["esp"] & 0xFFFFFFFF, regs["ss"], fpaddr, spec.mask & 0xFFFFFFFF,
                       cr2)


def write_frame(write: Any, sp: int, is64: bool, regs: dict[str, int], fpu: bytes,
                spec: FrameSpec) -> dict[str, int]:
    """Write the frame below ``sp`` with ``write(addr, bytes)``; return the registers the
    handler starts with. Raises whatever ``write`` raises for a bad stack."""
    frame, fpaddr = frame_address(sp, is64, spec.rt)
    ss_sp, ss_flags, ss_size = spec.stack
    if is64:
        write(fpaddr, fpu)
        uc = struct.pack("<QQQiiQ", UC_FLAGS_64, 0, ss_sp, ss_flags, 0, ss_size)
        uc += _mcontext64(regs, spec, fpaddr) + struct.pack("<Q", spec.mask)
        write(frame, struct.pack("<Q", spec.restorer) + uc + spec.info.pack(True))
        return {"rsp": frame, "rip": spec.handler, "rdi": spec.sig, "rsi": frame + 312,
                "rdx": frame + 8, "rax": 0}
    write(fpaddr, _fsave_header(fpu) + fpu)
    if spec.rt:
        uc = struct.pack("<IIIiI", 0, 0, ss_sp, ss_flags, ss_size)
        uc += _mcontext32(regs, spec, fpaddr) + struct.pack("<Q", spec.mask)
        ret = spec.restorer or frame + 260
        head = struct.pack("<IiII", ret, spec.sig, frame + 16, frame + 144)
        write(frame, head + spec.info.pack(False) + uc + _RETCODE_RT)
        return {"esp": frame, "eip": spec.handler, "eax": spec.sig, "edx": frame + 16,
                "ecx": frame + 144}
    ret = spec.restorer or frame + 724
    body = struct.pack("<Ii", ret, spec.sig) + _mcontext32(regs, spec, fpaddr)
    body += bytes(624) + struct.pack("<I", (spec.mask >> 32) & 0xFFFFFFFF) + _RETCODE_SIG
    write(frame, body)
    return {"esp": frame, "eip": spec.handler, "eax": spec.sig, "edx": 0, "ecx": 0}


def read_frame(read: Any, sp: int, is64: bool, rt: bool) -> Restored:
    """What (rt_)sigreturn restores, from the frame the return address ``sp`` points past.

    Raises whatever ``read`` raises for a bad pointer. Values are raw: sanitize them."""
    if is64:
        frame = sp - 8
        mc = read(frame + 48, 256)
        vals = struct.unpack_from("<18Q", mc, 0)
        regs = dict(zip(_REGS64, vals, strict=True))
        regs["cs"], regs["gs"], regs["fs"], regs["ss"] = struct.unpack_from("<HHHH", mc, 144)
        fpaddr = struct.unpack_from("<Q", mc, 184)[0]
        mask = struct.unpack("<Q", read(frame + 8 + 296, 8))[0]
        fpu = read(fpaddr, FXSAVE_SIZE) if fpaddr else None
        return Restored(regs, fpu, mask)
    if rt:
        frame = sp - 4
        sc_at, mask_at = frame + 144 + 20, frame + 144 + 108
    else:
        frame = sp - 8
        sc_at, mask_at = frame + 8, 0
    sc = read(sc_at, 88)
    v = struct.unpack("<4I8I3I5I2I", sc)
    regs = {"gs": v[0] & 0xFFFF, "fs": v[1] & 0xFFFF, "es": v[2] & 0xFFFF,
            "ds": v[3] & 0xFFFF}
    regs.update(zip(_REGS32, v[4:12], strict=True))
    regs["eip"], regs["cs"], regs["eflags"] = v[14], v[15] & 0xFFFF, v[16]
    regs["ss"] = v[18] & 0xFFFF
    fpaddr = v[19]
    if rt:
        mask = struct.unpack("<Q", read(mask_at, 8))[0]
    else:
        high = struct.unpack("<I", read(frame + 8 + 88 + 624, 4))[0]
        mask = v[20] | (high << 32)
    fpu = read(fpaddr + FSAVE_HEADER, FXSAVE_SIZE) if fpaddr else None
    return Restored(regs, fpu, mask)


def pack_fxsave(fcw: int, fsw: int, ftag: int, st: list[tuple[int, int]], mxcsr: int,
                xmm: list[int]) -> bytes:
    """An fxsave image: ``ftag`` is the full tag word (2 bits per physical register,
    3 = empty), ``st`` the registers in stack order ST(0)..ST(7) as (mantissa, exponent)."""
    abridged = 0
    for phys in range(8):
        if (ftag >> (2 * phys)) & 3 != 3:
            abridged |= 1 << phys
    out = bytearray(FXSAVE_SIZE)
    struct.pack_into("<HHBB", out, 0, fcw & 0xFFFF, fsw & 0xFFFF, abridged, 0)
    struct.pack_into("<II", out, 24, mxcsr & 0xFFFFFFFF, 0xFFFF)
    for i, (mant, exp) in enumerate(st):
        struct.pack_into("<QH", out, 32 + 16 * i, mant & (1 << 64) - 1, exp & 0xFFFF)
    for i, value in enumerate(xmm):
        out[160 + 16 * i:176 + 16 * i] = (value & (1 << 128) - 1).to_bytes(16, "little")
    return bytes(out)


def unpack_fxsave(data: bytes, nxmm: int) -> dict[str, Any]:
    """The registers in an fxsave image (the inverse of pack_fxsave); MXCSR reserved bits
    cleared (a real fxrstor would fault on them)."""
    fcw, fsw, abridged = struct.unpack_from("<HHB", data, 0)
    mxcsr = struct.unpack_from("<I", data, 24)[0] & 0xFFFF
    ftag = 0
    for phys in range(8):
        ftag |= (0 if (abridged >> phys) & 1 else 3) << (2 * phys)
    st = [struct.unpack_from("<QH", data, 32 + 16 * i) for i in range(8)]
    xmm = [int.from_bytes(data[160 + 16 * i:176 + 16 * i], "little") for i in range(nxmm)]
    return {"fcw": fcw, "fsw": fsw, "ftag": ftag, "st": st, "mxcsr": mxcsr, "xmm": xmm}
