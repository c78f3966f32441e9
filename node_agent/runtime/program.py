"""Starting a program as execve does: ``#!`` scripts, static and dynamically linked ELF.

``load_program`` builds a fresh address space: it follows ``#!`` lines to an ELF (at most
MAX_SCRIPT_DEPTH scripts deep), places the program's segments in the image area (an ET_DYN at
loader.DYN_BASE), and for a program with PT_INTERP loads that interpreter (ld.so, an ET_DYN)
from the partition's own root into the mmap area, then builds the initial stack. The first
instruction is the interpreter's entry; it finds the program through the auxiliary vector
(AT_PHDR, AT_ENTRY, AT_BASE) and maps the libraries itself with mmap.

Every file is opened through the sandbox (fs.py) with the guest's own path rules, so neither
a ``..`` nor an absolute symlink in a script line or PT_INTERP leaves the partition's root,
and every file is hostile: loader.py's checks apply to the interpreter as to the program.
Failures are ExecError (an ImageError carrying the errno execve would return).
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass

from unicorn import UC_PROT_EXEC

from .files import HostFile
from .fs import Sandbox
from .loader import (
    ET_DYN,
    ElfImage,
    build_stack,
    copy_segments,
    parse_image,
    phdr_address,
)
from .memory import PAGE, GuestMemory
from .spec import ImageError
from .vmas import record_elf, record_layout

__all__ = ["load_program", "LoadedProgram", "ExecError", "MAX_SCRIPT_DEPTH"]

#: Scripts that may name another script as their interpreter before ELOOP (Linux allows
#: a few rewrites in search_binary_handler; this runtime allows four scripts in a chain).
MAX_SCRIPT_DEPTH = 4
#: Linux reads this much of a file to recognise it (BINPRM_BUF_SIZE): the whole ``#!`` line.
BINPRM_BUF = 256
_O_RDONLY = 0


class ExecError(ImageError):
    """The program cannot be started; ``errno`` is what execve would return for it."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(f"bad image: {message} ({errno.errorcode.get(err, str(err))})")
        self.errno = err


@dataclass
class LoadedProgram:
    """A program ready to run: its address space, first instruction and stack pointer."""

    arch: str              # "x86_64" or "i386"
    mem: GuestMemory       # fresh, holding the program, its interpreter and the stack
    entry: int             # the first guest instruction (the interpreter's, if dynamic)
    sp: int                # initial stack pointer: argc is at sp
    exe: str               # guest path of the ELF actually run (/proc/self/exe)
    argv: list[str]        # as the program sees it (a script's interpreter first)
    interp: str | None     # guest path of the interpreter, None for a static program
    interp_base: int       # where the interpreter was placed (AT_BASE), 0 when static


def load_program(fs: Sandbox, path: str, argv: list[str], env: list[str],
                 memory_bytes: int, cwd: str) -> LoadedProgram:
    """Load the program at guest ``path`` (relative paths from ``cwd``) for a partition with
    ``memory_bytes`` of memory. Raises ExecError/ImageError when it cannot start and
    MemoryError when it does not fit (execve: ENOMEM, E2BIG)."""
    argv = list(argv) or [path]
    current, what = path, "the program"
    for _depth in range(MAX_SCRIPT_DEPTH + 1):
        file = _open(fs, current, cwd, what)
        try:
            head = os.pread(file.fd, BINPRM_BUF, 0)
            if not head.startswith(b"#!"):
                return _load_elf(fs, file, argv, env, memory_bytes, cwd, path)
        finally:
            file.close()
        interp, arg = parse_shebang(head, _shown(current))
        argv = [interp, *([arg] if arg is not None else []), current, *argv[1:]]
        current, what = interp, f"the interpreter of {_shown(current)}:"
    raise ExecError(errno.ELOOP, f"{_shown(path)}: more than {MAX_SCRIPT_DEPTH} nested #! "
                    "scripts")


def parse_shebang(head: bytes, shown: str) -> tuple[str, str | None]:
    """(interpreter, optional single argument) of a ``#!`` line, as Linux's binfmt_script
    reads it from the file's first 256 bytes: spaces and tabs around both are dropped, the
    name ends at a space, tab or NUL, everything after it is one argument (up to a NUL), and
    a line with no newline whose name may have been cut short is ENOEXEC."""
    buf = head.ljust(BINPRM_BUF, b"\0")[:BINPRM_BUF - 1]     # Linux's buffer is zeroed
    newline = buf.find(b"\n")
    if newline >= 0:
        line = buf[2:newline]
    else:
        line = buf[2:]
        if not re.search(rb"[ \t\0]", line.lstrip(b" \t")):
            raise ExecError(errno.ENOEXEC, f"{shown}: the #! line is cut short")
    line = line.strip(b" \t")
    sep = re.search(rb"[ \t\0]", line)
    name = line if sep is None else line[:sep.start()]
    if not name:
        raise ExecError(errno.ENOEXEC, f"{shown}: a #! line without an interpreter")
    arg = None
    if sep is not None and line[sep.start()] != 0:
        arg = line[sep.start():].lstrip(b" \t").split(b"\0", 1)[0] or None
    return os.fsdecode(name), (None if arg is None else os.fsdecode(arg))


def _shown(path: str) -> str:
    return path if len(path) <= 200 else path[:200] + "..."


def _open(fs: Sandbox, path: str, cwd: str, what: str) -> HostFile:
    """Open a file to execute, as execve's open_exec would: a directory or anything but a
    regular file is EACCES, a missing one ENOENT."""
    try:
        file = fs.open(path, cwd, _O_RDONLY, 0)
    except OSError as exc:
        err = exc.errno or errno.EIO
        reason = "not found in the root" if err == errno.ENOENT else os.strerror(err).lower()
        raise ExecError(err, f"{what} {_shown(path)} {reason}") from None
    if not isinstance(file, HostFile):
        file.close()
        raise ExecError(errno.EACCES, f"{what} {_shown(path)} is not a regular file")
    return file


def _parse(file: HostFile, what: str) -> ElfImage:
    """loader.py's checks; ``what`` (empty for the program itself) prefixes the reason."""
    with open(file.fd, "rb", closefd=False) as stream:
        try:
            return parse_image(stream)
        except ImageError as exc:
            reason = str(exc).removeprefix("bad image: ")
            raise ExecError(errno.ENOEXEC, f"{what}{reason}") from None


def _load_elf(fs: Sandbox, file: HostFile, argv: list[str], env: list[str],
              memory_bytes: int, cwd: str, execfn: str) -> LoadedProgram:
    image = _parse(file, "")
    interp_file = None
    interp: ElfImage | None = None
    if image.interp is not None:
        interp_file = _open(fs, image.interp, cwd, f"the interpreter of {file.gpath}:")
    try:
        if interp_file is not None:
            interp = _parse(interp_file, f"the interpreter {interp_file.gpath}: ")
            _check_interp(image, interp, interp_file.gpath)
        mem = GuestMemory(image.low, image.high, memory_bytes,
                          64 if image.arch == "x86_64" else 32)
        try:
            mem.set_image_perms(copy_segments(image, file.fd, mem))
            if interp is not None and interp_file is not None:
                interp = _place_interp(interp, interp_file, mem)
            sp = build_stack(mem, image, phdr_address(image), argv, env,
                             base=0 if interp is None else interp.low, execfn=execfn)
            _remember(mem, image, file, interp, interp_file, sp)
        except BaseException:
            mem.close()
            raise
    finally:
        if interp_file is not None:
            interp_file.close()
    return LoadedProgram(arch=image.arch, mem=mem,
                         entry=image.entry if interp is None else interp.entry, sp=sp,
                         exe=file.gpath, argv=argv,
                         interp=None if interp_file is None else interp_file.gpath,
                         interp_base=0 if interp is None else interp.low)


def _remember(mem: GuestMemory, image: ElfImage, file: HostFile, interp: ElfImage | None,
              interp_file: HostFile | None, sp: int) -> None:
    """What /proc/<pid>/maps and stat show of the new program (vmas.py)."""
    for elf, src in ((image, file), (interp, interp_file)):
        if elf is not None and src is not None:
            info = src.stat()
            record_elf(mem, elf, src.gpath, info.dev, info.ino)
    record_layout(mem, image, sp)


def _check_interp(image: ElfImage, interp: ElfImage, gpath: str) -> None:
    if interp.interp is not None:
        raise ExecError(errno.ELIBBAD, f"the interpreter {gpath} itself needs an interpreter")
    if interp.etype != ET_DYN:
        raise ExecError(errno.ELIBBAD, f"the interpreter {gpath} is not position-independent "
                        "(ET_DYN)")
    if interp.arch != image.arch:
        raise ExecError(errno.ELIBBAD, f"the interpreter {gpath} is {interp.arch}, the program "
                        f"{image.arch}")


def _place_interp(interp: ElfImage, file: HostFile, mem: GuestMemory) -> ElfImage:
    """Copy the interpreter into an anonymous mapping of the mmap area (top-down, as Linux
    places it below the stack); its executable pages become executable there. Its other
    pages stay writable: this runtime's mmap area has no read-only pages."""
    addr = mem.mmap(interp.span)
    if addr is None:
        raise MemoryError(f"no room for the interpreter ({interp.span // 1024} KiB) in the "
                          "partition's memory")
    placed = interp.rebased(addr)
    pages = copy_segments(placed, file.fd, mem)
    runs: list[list[int]] = []
    for page in sorted(p for p, perms in pages.items() if perms & UC_PROT_EXEC):
        if runs and runs[-1][1] == page:
            runs[-1][1] = page + PAGE
        else:
            runs.append([page, page + PAGE])
    for lo, hi in runs:
        if not mem.make_executable(lo, hi - lo):
            raise MemoryError("the interpreter has too many executable ranges")
    return placed
