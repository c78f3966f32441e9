"""ELF loading: validate a static x86_64/i386 image, place it in guest memory, build the stack."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .memory import PAGE, GuestMemory, page_down, page_up, uc_perms
from .spec import ImageError

__all__ = ["validate_image", "ElfImage", "read_image", "load_image", "build_stack"]

DYN_BASE = 0x400000
_PF_X, _PF_W, _PF_R = 1, 2, 4


@dataclass(frozen=True)
class ElfImage:
    """What the loader needs from an ELF file, read once."""

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


def _arch_of(elf: Any) -> str:
    machine, cls = elf["e_machine"], elf.elfclass
    if machine == "EM_X86_64" and cls == 64:
        return "x86_64"
    if machine == "EM_386" and cls == 32:
        return "i386"
    raise ImageError(f"bad image: unsupported architecture {machine} ({cls}-bit)")


def _parse(stream: BinaryIO) -> ElfImage:
    try:
        elf = ELFFile(stream)
    except ELFError as exc:
        raise ImageError(f"bad image: not an ELF file ({exc})") from exc
    arch = _arch_of(elf)
    etype = elf["e_type"]
    if etype not in ("ET_EXEC", "ET_DYN"):
        raise ImageError(f"bad image: ELF type {etype} is not an executable")
    segments: list[tuple[int, int, int, int, int]] = []
    phdr_vaddr: int | None = None
    for seg in elf.iter_segments():
        ptype = seg["p_type"]
        if ptype == "PT_INTERP":
            raise ImageError("bad image: not a static ELF (it needs a dynamic loader)")
        if ptype == "PT_DYNAMIC" and etype == "ET_EXEC":
            raise ImageError("bad image: not a static ELF (it has a dynamic section)")
        if ptype == "PT_PHDR":
            phdr_vaddr = int(seg["p_vaddr"])
        if ptype == "PT_LOAD" and seg["p_memsz"] > 0:
            segments.append((int(seg["p_vaddr"]), int(seg["p_memsz"]), int(seg["p_offset"]),
                             int(seg["p_filesz"]), int(seg["p_flags"])))
    if not segments:
        raise ImageError("bad image: no loadable segments")
    bias = 0
    if etype == "ET_DYN":
        bias = DYN_BASE - page_down(min(s[0] for s in segments))
    return ElfImage(arch=arch, entry=int(elf["e_entry"]) + bias, bias=bias,
                    phoff=int(elf["e_phoff"]), phentsize=int(elf["e_phentsize"]),
                    phnum=int(elf["e_phnum"]), phdr_vaddr=phdr_vaddr, segments=tuple(segments))


def read_image(path: Path) -> ElfImage:
    """Parse ``path``; raise ImageError when it is not a runnable static ELF."""
    try:
        with open(path, "rb") as fh:
            return _parse(fh)
    except OSError as exc:
        raise ImageError(f"bad image: cannot read {path.name}: {exc.strerror}") from exc


def validate_image(path: Path) -> str:
    """Return "x86_64" or "i386" for a static ELF executable; raise ImageError otherwise."""
    return read_image(path).arch


def load_image(image: ElfImage, path: Path, mem: GuestMemory) -> int:
    """Copy the PT_LOAD segments into guest memory; return the guest address of the phdrs."""
    pages: dict[int, int] = {}
    phdr_addr: int | None = None
    with open(path, "rb") as fh:
        for vaddr, memsz, offset, filesz, flags in image.segments:
            addr = vaddr + image.bias
            if filesz:
                fh.seek(offset)
                mem.write(addr, fh.read(filesz))
            perms = uc_perms(bool(flags & _PF_R), bool(flags & _PF_W), bool(flags & _PF_X))
            for page in range(page_down(addr), page_up(addr + memsz), PAGE):
                pages[page] = pages.get(page, 0) | perms
            if offset <= image.phoff < offset + filesz:
                phdr_addr = addr + image.phoff - offset
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
    """Lay out argc/argv/envp/auxv below ``mem.stack_top``; return the initial stack pointer."""
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
