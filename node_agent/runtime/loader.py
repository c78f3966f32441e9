"""ELF loading: validate a static x86_64/i386 image, place it in guest memory, build the stack."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
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

__all__ = ["validate_image", "ElfImage", "read_image", "load_image", "build_stack",
           "MIN_VADDR"]

DYN_BASE = 0x400000
#: Nothing is loaded below this (Linux's vm.mmap_min_addr): the NULL page stays unmapped.
MIN_VADDR = 0x10000
MAX_PHDRS_BYTES = 1 << 16           # Linux refuses more than 64 KiB of program headers
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


def _bad(reason: str) -> ImageError:
    return ImageError(f"bad image: {reason}")


def _parse(stream: BinaryIO, file_size: int) -> ElfImage:
    """Check everything the loader relies on; any malformed header is an ImageError.

    What is refused, as Linux's execve would (ENOEXEC/EINVAL) or where loading would read
    past the file or wrap the address space: a wrong class/machine/type, program headers of
    the wrong size, more than 64 KiB of them or lying past the end of the file, a segment
    with p_filesz > p_memsz or whose data lies past the end of the file, a segment below
    64 KiB or past the end of the user address space, overlapping segments, a dynamic ELF.
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
    for i in range(phnum):
        ptype, flags, offset, vaddr, filesz, memsz = layout.phdr_fields(raw, i * phentsize)
        if ptype == PT_INTERP:
            raise _bad("not a static ELF (it needs a dynamic loader)")
        if ptype == PT_DYNAMIC and etype == ET_EXEC:
            raise _bad("not a static ELF (it has a dynamic section)")
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
                    segments=tuple(segments))


def read_image(path: Path) -> ElfImage:
    """Parse ``path``; raise ImageError when it is not a runnable static ELF."""
    try:
        with open(path, "rb") as fh:
            return _parse(fh, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise ImageError(f"bad image: cannot read {path.name}: {exc.strerror}") from exc


def validate_image(path: Path) -> str:
    """Return "x86_64" or "i386" for a static ELF executable; raise ImageError otherwise."""
    return read_image(path).arch


def load_image(image: ElfImage, path: Path, mem: GuestMemory) -> int:
    """Copy the PT_LOAD segments into guest memory; return the guest address of the phdrs.

    The file is read straight into guest memory (no host copy of a segment). A file that
    shrank since ``read_image`` checked it is an ImageError.
    """
    pages: dict[int, int] = {}
    phdr_addr: int | None = None
    try:
        with open(path, "rb") as fh:
            for vaddr, memsz, offset, filesz, flags in image.segments:
                addr = vaddr + image.bias
                if filesz:
                    fh.seek(offset)
                    view = mem.host_view(addr, filesz)
                    while view:
                        n = fh.readinto(view)
                        if not n:
                            raise _bad("the file changed while it was being loaded")
                        view = view[n:]
                perms = uc_perms(bool(flags & _PF_R), bool(flags & _PF_W), bool(flags & _PF_X))
                for page in range(page_down(addr), page_up(addr + memsz), PAGE):
                    pages[page] = pages.get(page, 0) | perms
                if offset <= image.phoff < offset + filesz:
                    phdr_addr = addr + image.phoff - offset
    except OSError as exc:
        raise ImageError(f"bad image: cannot read {path.name}: {exc.strerror}") from exc
    mem.set_image_perms(pages)
    if image.phdr_vaddr is not None:
        return image.phdr_vaddr + image.bias
    return phdr_addr or 0


# auxv keys
AT_NULL, AT_PHDR, AT_PHENT, AT_PHNUM, AT_PAGESZ = 0, 3, 4, 5, 6
AT_BASE, AT_FLAGS, AT_ENTRY = 7, 8, 9
AT_UID, AT_EUID, AT_GID, AT_EGID, AT_PLATFORM, AT_HWCAP, AT_CLKTCK = 11, 12, 13, 14, 15, 16, 17
AT_SECURE, AT_RANDOM, AT_HWCAP2, AT_EXECFN = 23, 25, 26, 31


def build_stack(mem: GuestMemory, image: ElfImage, phdr: int, argv: list[str],
                env: list[str]) -> int:
    """Lay out argc/argv/envp/auxv below ``mem.stack_top``; return the initial stack pointer.
    Raises MemoryError when their strings and pointers take more than a quarter of the
    stack (Linux's execve: E2BIG)."""
    word = 8 if image.arch == "x86_64" else 4
    size = sum(len(a.encode()) + 1 + word for a in argv + env)
    stack = mem.stack_top - mem.stack_low
    if size > stack // 4:
        raise MemoryError(f"the arguments and environment ({format_size(size)}) take more "
                          f"than a quarter of the {format_size(stack)} stack")
    return _build_stack(mem, image, phdr, argv, env)


def _build_stack(mem: GuestMemory, image: ElfImage, phdr: int, argv: list[str],
                 env: list[str]) -> int:
    word = 8 if image.arch == "x86_64" else 4
    fmt = "<Q" if word == 8 else "<I"
    sp = mem.stack_top

    def push_bytes(data: bytes) -> int:
        nonlocal sp
        sp -= len(data)
        mem.write(sp, data)
        return sp

    execfn = push_bytes(argv[0].encode() + b"\0")
    env_ptrs = [push_bytes(e.encode() + b"\0") for e in env]
    arg_ptrs = [push_bytes(a.encode() + b"\0") for a in argv]
    platform = push_bytes(b"x86_64\0" if word == 8 else b"i686\0")
    sp &= ~15
    rand = push_bytes(os.urandom(16))
    auxv = [
        (AT_PHDR, phdr), (AT_PHENT, image.phentsize), (AT_PHNUM, image.phnum),
        (AT_PAGESZ, PAGE), (AT_BASE, 0), (AT_FLAGS, 0), (AT_ENTRY, image.entry),
        (AT_UID, 0), (AT_EUID, 0), (AT_GID, 0), (AT_EGID, 0), (AT_PLATFORM, platform),
        (AT_HWCAP, 0), (AT_CLKTCK, 100), (AT_SECURE, 0), (AT_RANDOM, rand),
        (AT_HWCAP2, 0), (AT_EXECFN, execfn), (AT_NULL, 0),
    ]
    words: list[int] = [len(argv), *arg_ptrs, 0, *env_ptrs, 0]
    for key, value in auxv:
        words += [key, value]
    sp -= len(words) * word
    sp &= ~15
    mem.write(sp, b"".join(struct.pack(fmt, w) for w in words))
    return sp
