"""validate_image accepts x86_64/i386 executables (static or dynamically linked) and explains
everything else."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runtime_helpers import GuestBuilder

from node_agent.runtime import ImageError, validate_image


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_static_executables_are_accepted(guest: GuestBuilder, arch: str) -> None:
    assert validate_image(guest("hello", arch)) == arch


def test_dynamic_executable_is_accepted() -> None:
    """Its interpreter is looked for in the partition's root at start (test_dynamic_elf.py)."""
    dynamic = Path(shutil.which("ls") or "/bin/ls")
    assert validate_image(dynamic) == "x86_64"


def test_non_elf_and_missing_files_are_rejected(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ImageError, match="not an ELF"):
        validate_image(script)
    with pytest.raises(ImageError, match="cannot read"):
        validate_image(tmp_path / "missing")


def test_object_file_is_not_an_executable(guest: GuestBuilder, tmp_path: Path) -> None:
    obj = tmp_path / "x.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), "-x", "c", "-"], input=b"int x;",
                   check=True)
    with pytest.raises(ImageError, match="ET_REL is not an executable"):
        validate_image(obj)


# -- malformed headers: always ImageError with one line, never anything else -------------------
_EHDR = {"x86_64": struct.Struct("<16sHHIQQQIHHHHHH"), "i386": struct.Struct("<16sHHIIIIIHHHHHH")}
_PHDR = {"x86_64": struct.Struct("<IIQQQQQQ"), "i386": struct.Struct("<IIIIIIII")}
_PT_LOAD = 1


def _patched(binary: Path, out: Path, arch: str, **fields: int) -> Path:
    """``binary`` with ELF header fields (e_phoff, e_phnum, ...) replaced."""
    data = bytearray(binary.read_bytes())
    names = ("ident", "e_type", "e_machine", "e_version", "e_entry", "e_phoff", "e_shoff",
             "e_flags", "e_ehsize", "e_phentsize", "e_phnum", "e_shentsize", "e_shnum",
             "e_shstrndx")
    values = dict(zip(names, _EHDR[arch].unpack_from(data), strict=True))
    values.update(fields)
    _EHDR[arch].pack_into(data, 0, *values.values())
    out.write_bytes(data)
    return out


def _load_phdrs(data: bytes, arch: str) -> list[tuple[int, list[int]]]:
    """(file offset, fields) of each PT_LOAD program header, fields in struct order."""
    ehdr = _EHDR[arch].unpack_from(data)
    phoff, phentsize, phnum = ehdr[5], ehdr[9], ehdr[10]
    found = []
    for i in range(phnum):
        off = phoff + i * phentsize
        fields = list(_PHDR[arch].unpack_from(data, off))
        if fields[0] == _PT_LOAD:
            found.append((off, fields))
    return found


def _one_line_image_error(path: Path) -> str:
    with pytest.raises(ImageError) as info:
        validate_image(path)
    message = str(info.value)
    assert message.startswith("bad image: ") and "\n" not in message, message
    assert str(path.parent) not in message          # no host paths
    return message


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_malformed_elf_headers_are_image_errors(guest: GuestBuilder, tmp_path: Path,
                                                arch: str) -> None:
    hello = guest("hello", arch)
    size = hello.stat().st_size
    cases = {
        "huge_phoff": {"e_phoff": (1 << 63) if arch == "x86_64" else 0xFFFFFFF0},
        "phoff_past_end": {"e_phoff": size - 8},
        "huge_phnum": {"e_phnum": 0xFFFF},
        "zero_phnum": {"e_phnum": 0},
        "bad_phentsize": {"e_phentsize": 7},
        "bad_class_for_machine": {"e_machine": 62 if arch == "i386" else 3},
    }
    for name, fields in cases.items():
        _one_line_image_error(_patched(hello, tmp_path / name, arch, **fields))


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_malformed_segments_are_image_errors(guest: GuestBuilder, tmp_path: Path,
                                             arch: str) -> None:
    hello = guest("hello", arch)
    data = hello.read_bytes()
    loads = _load_phdrs(data, arch)
    # field positions inside the program header, per class
    off_i, vaddr_i, filesz_i, memsz_i = (2, 3, 5, 6) if arch == "x86_64" else (1, 2, 4, 5)
    top = (1 << 64) - 1 if arch == "x86_64" else 0xFFFFFFFF

    def mutate(name: str, index: int, changes: dict[int, int]) -> Path:
        out = bytearray(data)
        pos, fields = loads[index]
        fields = list(fields)
        for i, v in changes.items():
            fields[i] = v
        _PHDR[arch].pack_into(out, pos, *fields)
        path = tmp_path / name
        path.write_bytes(out)
        return path

    last = len(loads) - 1
    first_vaddr = loads[0][1][vaddr_i]
    second_vaddr = loads[1][1][vaddr_i]
    mutated = {
        "offset_past_end": mutate("a", last, {off_i: len(data) + 4096}),
        "filesz_past_end": mutate("b", last, {filesz_i: len(data), memsz_i: 2 * len(data)}),
        "filesz_over_memsz": mutate("c", last, {memsz_i: 1}),
        "vaddr_overflow": mutate("d", last, {vaddr_i: top - 0x100, memsz_i: 0x10000}),
        "overlap": mutate("e", 0, {memsz_i: second_vaddr - first_vaddr + 0x2000}),
        "below_64k": mutate("f", 0, {vaddr_i: 0x1000}),
    }
    messages = {name: _one_line_image_error(path) for name, path in mutated.items()}
    assert "overlap" in messages["overlap"]


_BASES: dict[str, bytes] = {}


def _base(arch: str) -> bytes:
    """A real static ELF (built once for the fuzz test, which cannot use fixtures)."""
    if arch not in _BASES:
        if shutil.which("gcc") is None:
            pytest.skip("gcc is not installed")
        builder = GuestBuilder(Path(tempfile.mkdtemp(prefix="fuzz-elf-")))
        _BASES[arch] = builder("hello", arch).read_bytes()
    return _BASES[arch]


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arch=st.sampled_from(["x86_64", "i386"]),
       edits=st.lists(st.tuples(st.integers(0, 0x400), st.integers(0, 255),
                                st.sampled_from([1, 2, 4, 8])), min_size=1, max_size=8),
       truncate=st.one_of(st.none(), st.integers(0, 0x2000)))
def test_fuzzed_headers_give_an_arch_or_image_error(tmp_path: Path, arch: str,
                                                     edits: list[tuple[int, int, int]],
                                                     truncate: int | None) -> None:
    """Random writes over the ELF header and program headers (the first KiB), sometimes a
    truncated file: validate_image returns an architecture or raises ImageError."""
    data = bytearray(_base(arch))
    for pos, byte, width in edits:
        value = (byte * 0x0101010101010101) if byte in (0, 0xFF) else byte << (8 * (pos % width))
        data[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    if truncate is not None:
        del data[truncate:]
    path = tmp_path / "fuzzed"
    path.write_bytes(bytes(data))
    try:
        assert validate_image(path) in ("x86_64", "i386")
    except ImageError as exc:
        assert "\n" not in str(exc)
