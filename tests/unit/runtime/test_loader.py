"""validate_image accepts static x86_64/i386 executables and explains everything else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from runtime_helpers import GuestBuilder

from node_agent.runtime import ImageError, validate_image


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_static_executables_are_accepted(guest: GuestBuilder, arch: str) -> None:
    assert validate_image(guest("hello", arch)) == arch


def test_dynamic_executable_is_rejected() -> None:
    dynamic = Path(shutil.which("ls") or "/bin/ls")
    with pytest.raises(ImageError, match="not a static ELF"):
        validate_image(dynamic)


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
