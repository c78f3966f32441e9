"""ELF loading: validate an x86_64/i386 image, place it in guest memory, build the stack.

program.py drives these pieces for a whole program (its interpreter, ``#!`` scripts)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from .memory import (
    I386_LIMIT,
    PAGE,
    X86_64_LIMIT,
    GuestMemory,
    format_size,
    page_down,
    page_up,
    uc_perms,
)
from .spec import ImageError

__all__ = ["validate_image", "ElfImage", "read_image", "parse_image", "load_image",
           "copy_segments", "build_stack", "MIN_VADDR", "ET_EXEC", "ET_DYN"]

DYN_BASE = 0x400000
#: Nothing is loaded below this (Linux's vm.mmap_min_addr): the NULL page stays unmapped.
MIN_VADDR = 0x10000
MAX_PHDRS_BYTES = 1 << 16           # Linux refuses more than 64 KiB of program headers
MAX_INTERP = 4096                   # PATH_MAX: Linux refuses a longer PT_INTERP
_PF_X, _PF_W, _PF_R = 1, 2, 4
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_PHDR = 1, 2, 3, 6
ET_EXEC, ET_DYN = 2, 3
_ET_NAMES = {0: "ET_NONE", 1: "ET_REL", 4: "ET_CORE"}
_EM_NAMES = {3: "EM_386", 62: "EM_X86_64", 40: "EM_ARM", 183: "EM_AARCH64", 243: "EM_RISCV",
             8: "EM_MIPS", 20: "EM_PPC", 21: "EM_PPC64", 22: "EM_S390"}


@dataclass(frozen=True)
class _Layout:
    """The fixed-size structures of one ELF class (little-endian only: x86)."""

    bits: int
    ehdr: struct.Struct
    phdr: struct.Struct

    def phdr_fields(self, raw: bytes, off: int) -> tuple[int, int, int, int, int, int]:
        """(type, flags, offset, vaddr, filesz, memsz) of the program header at ``off``."""
        if self.bits == 64:
            ptype, flags, offset, vaddr, _paddr, filesz, memsz, _align = \
                self.phdr.unpack_from(raw, off)
        else:
            ptype, offset, vaddr, _paddr, filesz, memsz, flags, _align = \
                self.phdr.unpack_from(raw, off)
        return ptype, flags, offset, vaddr, filesz, memsz


_LAYOUTS = {
    2: _Layout(64, struct.Struct("<16sHHIQQQIHHHHHH"), struct.Struct("<IIQQQQQQ")),
    1: _Layout(32, struct.Struct("<16sHHIIIIIHHHHHH"), struct.Struct("<IIIIIIII")),
}
_ARCH = {(64, 62): "x86_64", (32, 3): "i386"}


@dataclass(frozen=True)
class ElfImage:
    """What the loader needs from an ELF file, read once and checked (see ``_parse``)."""

    arch: str                 # "x86_64" or "i386"
    entry: int                # already biased
    bias: int
    etype: int                # ET_EXEC or ET_DYN
    interp: str | None        # PT_INTERP: the dynamic loader's guest path, None when static
    phoff: int
    phentsize: int
    phnum: int
    phdr_vaddr: int | None    # from PT_PHDR, unbiased
    segments: tuple[tuple[int, int, int, int, int], ...]  # vaddr, memsz, offset, filesz, flags

    @property
    def low(self) -> int:
        return page_down(min(s[0] for s in self.segments) + self.bias)

    @property
    def high(self) -> int:
        return page_up(max(s[0] + s[1] for s in self.segments) + self.bias)

    @property
    def span(self) -> int:
        """Bytes of guest memory the segments and bss occupy (whole pages, holes included)."""
        return self.high - self.low

    def rebased(self, low: int) -> ElfImage:
        """This ET_DYN image placed so that its lowest page starts at ``low``."""
        bias = self.bias + low - self.low
        return replace(self, bias=bias, entry=self.entry - self.bias + bias)


def _bad(reason: str) -> ImageError:
    return ImageError(f"bad image: {reason}")


def _parse(stream: BinaryIO, file_size: int) -> ElfImage:
    """Check everything the loader relies on; any malformed header is an ImageError.

    What is refused, as Linux's execve would (ENOEXEC/EINVAL) or where loading would read
    past the file or wrap the address space: a wrong class/machine/type, program headers of
    the wrong size, more than 64 KiB of them or lying past the end of the file, a segment
    with p_filesz > p_memsz or whose data lies past the end of the file, a segment below
    64 KiB or past the end of the user address space, overlapping segments, more than one
    PT_INTERP or one that is not a NUL-terminated path of at most PATH_MAX bytes inside the
    file, a dynamic section without an interpreter in an ET_EXEC.
    """
    ident = stream.read(64)
    if len(ident) < 16 or ident[:4] != b"\x7fELF":
        raise _bad("not an ELF file")
    layout = _LAYOUTS.get(ident[4])
    if layout is None:
        raise _bad(f"unknown ELF class {ident[4]}")
    if ident[5] != 1:
        raise _bad("not a little-endian ELF")
    if len(ident) < layout.ehdr.size:
        raise _bad("truncated ELF header")
    (_, etype, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum,
     _shentsize, _shnum, _shstrndx) = layout.ehdr.unpack_from(ident)
    arch = _ARCH.get((layout.bits, machine))
    if arch is None:
        raise _bad(f"unsupported architecture {_EM_NAMES.get(machine, f'machine {machine}')} "
                   f"({layout.bits}-bit)")
    if etype not in (ET_EXEC, ET_DYN):
        raise _bad(f"ELF type {_ET_NAMES.get(etype, str(etype))} is not an executable")
    if phentsize != layout.phdr.size:
        raise _bad(f"program header size {phentsize} (expected {layout.phdr.size})")
    if phnum == 0:
        raise _bad("no program headers")
    table = phnum * phentsize
    if table > MAX_PHDRS_BYTES:
        raise _bad(f"{phnum} program headers (more than 64 KiB)")
    if phoff + table > file_size:
        raise _bad("program headers lie past the end of the file")
    stream.seek(phoff)
    raw = stream.read(table)
    if len(raw) != table:
        raise _bad("program headers lie past the end of the file")
    segments: list[tuple[int, int, int, int, int]] = []
    phdr_vaddr: int | None = None
    interp_at: tuple[int, int] | None = None
    has_dynamic = False
    for i in range(phnum):
        ptype, flags, offset, vaddr, filesz, memsz = layout.phdr_fields(raw, i * phentsize)
        if ptype == PT_INTERP:
            if interp_at is not None:
                raise _bad("more than one PT_INTERP")
            if not 2 <= filesz <= MAX_INTERP or offset + filesz > file_size:
                raise _bad("the PT_INTERP path is empty, too long or past the end of the file")
            interp_at = (offset, filesz)
        has_dynamic |= ptype == PT_DYNAMIC
        if ptype == PT_PHDR:
            phdr_vaddr = vaddr
        if ptype != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise _bad(f"segment {i} has more file data than memory (p_filesz > p_memsz)")
        if offset + filesz > file_size:
            raise _bad(f"segment {i} data lies past the end of the file")
        segments.append((vaddr, memsz, offset, filesz, flags))
    if not segments:
        raise _bad("no loadable segments")
    if has_dynamic and etype == ET_EXEC and interp_at is None:
        raise _bad("an ET_EXEC with a dynamic section but no interpreter (PT_INTERP)")
    interp = None if interp_at is None else _read_interp(stream, *interp_at)
    ordered = sorted(segments)
    for (va, msz, *_), (vb, *_) in zip(ordered, ordered[1:], strict=False):
        if va + msz > vb:
            raise _bad("loadable segments overlap")
    bias = 0
    if etype == ET_DYN:
        bias = DYN_BASE - page_down(ordered[0][0])
    low = page_down(ordered[0][0] + bias)
    high = page_up(max(v + m for v, m, *_ in ordered) + bias)
    limit = X86_64_LIMIT if arch == "x86_64" else I386_LIMIT
    if low < MIN_VADDR:
        raise _bad(f"a segment is placed below 0x{MIN_VADDR:x}")
    if high > limit:
        raise _bad("a segment ends past the end of the user address space")
    return ElfImage(arch=arch, entry=(entry + bias) % (1 << layout.bits), bias=bias,
                    phoff=phoff, phentsize=phentsize, phnum=phnum, phdr_vaddr=phdr_vaddr,
                    segments=tuple(segments), etype=etype, interp=interp)


def _read_interp(stream: BinaryIO, offset: int, size: int) -> str:
    """The PT_INTERP path: NUL-terminated, no NUL inside (Linux: ENOEXEC otherwise)."""
    stream.seek(offset)
    raw = stream.read(size)
    if len(raw) != size or raw[-1] != 0 or 0 in raw[:-1]:
        raise _bad("the PT_INTERP path is not one NUL-terminated string")
    return os.fsdecode(raw[:-1])


def parse_image(stream: BinaryIO) -> ElfImage:
    """Parse an open ELF file (at any position); ImageError when it cannot run."""
    try:
        return _parse(stream, os.fstat(stream.fileno()).st_size)
    except OSError as exc:
        raise ImageError(f"bad image: cannot read it: {exc.strerror}") from exc


def read_image(path: Path) -> ElfImage:
    """Parse ``path``; raise ImageError when it is not a runnable ELF executable."""
    try:
        with open(path, "rb") as fh:
            return _parse(fh, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise ImageError(f"bad image: cannot read {path.name}: {exc.strerror}") from exc


def validate_image(path: Path) -> str:
    """Return "x86_64" or "i386" for an ELF executable, static or dynamically linked (its
    interpreter can only be looked for in the partition's root, at start); raise ImageError
    otherwise."""
    return read_image(path).arch


def copy_segments(image: ElfImage, fd: int, mem: GuestMemory) -> dict[int, int]:
    """Read the PT_LOAD segments straight into guest memory (no host copy of a segment);
    return the UC_PROT permissions of every page they touch. The pages must be zero (bss).

    As Linux maps whole pages, a segment's first page also holds the file bytes before it
    (ld.so finds its own ELF header there). A file that shrank since it was parsed is an
    ImageError."""
    pages: dict[int, int] = {}
    for vaddr, memsz, offset, filesz, flags in image.segments:
        addr = vaddr + image.bias
        lead = addr % PAGE if filesz and offset % PAGE == addr % PAGE else 0
        view, at = mem.host_view(addr - lead, filesz + lead), offset - lead
        while view:
            n = os.preadv(fd, [view], at)
            if not n:
                raise _bad("the file changed while it was being loaded")
            view, at = view[n:], at + n
        perms = uc_perms(bool(flags & _PF_R), bool(flags & _PF_W), bool(flags & _PF_X))
        for page in range(page_down(addr), page_up(addr + memsz), PAGE):
            pages[page] = pages.get(page, 0) | perms
    return pages


def phdr_address(image: ElfImage) -> int:
    """Guest address of the program headers (AT_PHDR): PT_PHDR, else the loaded segment
    holding them, else 0."""
    if image.phdr_vaddr is not None:
        return image.phdr_vaddr + image.bias
    for vaddr, _memsz, offset, filesz, _flags in image.segments:
        if offset <= image.phoff < offset + filesz:
            return vaddr + image.bias + image.phoff - offset
    return 0


def load_image(image: ElfImage, path: Path, mem: GuestMemory) -> int:
    """Copy the program's segments into guest memory at their place in the image area (with
    their ELF permissions); return the guest address of the phdrs."""
    try:
        with open(path, "rb") as fh:
            mem.set_image_perms(copy_segments(image, fh.fileno(), mem))
    except OSError as exc:
        raise ImageError(f"bad image: cannot read {path.name}: {exc.strerror}") from exc
    return phdr_address(image)


# auxv keys
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6
AT_BASE, AT_FLAGS, AT_ENTRY = 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31


#: AT_HWCAP on x86 is CPUID.1:EDX; these are the features of the CPU unicorn emulates
#: (what its cpuid leaf 1 returns in EDX). glibc reads cpuid itself; this is for others.
HWCAP_X86 = 0x078BFBFD


def build_stack(mem: GuestMemory, image: ElfImage, phdr: int, argv: list[str],
                env: list[str], *, base: int = 0, execfn: str | None = None) -> int:
    """Lay out argc/argv/envp/auxv below ``mem.stack_top``; return the initial stack pointer.

    ``base`` is where the interpreter was loaded (AT_BASE, 0 for a static program),
    ``execfn`` the path execve was given (AT_EXECFN, default argv[0]). Raises MemoryError
    when the strings and pointers take more than a quarter of the stack (execve: E2BIG)."""
    word = 8 if image.arch == "x86_64" else 4
    execfn = (argv[0] if argv else "") if execfn is None else execfn
    size = sum(len(os.fsencode(a)) + 1 + word for a in [*argv, *env, execfn])
    stack = mem.stack_top - mem.stack_low
    if size > stack // 4:
        raise MemoryError(f"the arguments and environment ({format_size(size)}) take more "
                          f"than a quarter of the {format_size(stack)} stack")
    return _build_stack(mem, image, phdr, argv, env, base, execfn)


def _build_stack(mem: GuestMemory, image: ElfImage, phdr: int, argv: list[str],
                 env: list[str], base: int, execfn_path: str) -> int:
    word = 8 if image.arch == "x86_64" else 4
    fmt = "<Q" if word == 8 else "<I"
    sp = mem.stack_top

    def push_bytes(data: bytes) -> int:
        nonlocal sp
        sp -= len(data)
        mem.write(sp, data)
        return sp

    execfn = push_bytes(os.fsencode(execfn_path) + b"\0")
    env_ptrs = [push_bytes(os.fsencode(e) + b"\0") for e in env]
    arg_ptrs = [push_bytes(os.fsencode(a) + b"\0") for a in argv]
    platform = push_bytes(b"x86_64\0" if word == 8 else b"i686\0")
    sp &= ~15
    rand = push_bytes(os.urandom(16))
    auxv = [
        (AT_PHDR, phdr), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum),
        (AT_PAGESZ, PAGE), (AT_BASE, base), (AT_FLAGS, 0), (AT_ENTRY, image.entry),
        (AT_UID, 0), (AT_EUID, 0), (AT_GID, 0), (AT_EGID, 0), (AT_PLATFORM, platform),
        (AT_HWCAP, HWCAP_X86), (AT_CLKTCK, 100), (AT_SECURE, 0), (AT_RANDOM, rand),
        (AT_HWCAP2, 0), (AT_EXECFN, execfn), (AT_NULL, 0),
    ]
    words: list[int] = [len(argv), *arg_ptrs, 0, *env_ptrs, 0]
    for key, value in auxv:
        words += [key, value]
    sp -= len(words) * word
    sp &= ~15
    mem.write(sp, b"".join(struct.pack(fmt, w) for w in words))
    return sp
