"""MAP_SHARED file mappings reach the file, read(), other mappings and forked children."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runtime_helpers import Run


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_shared_file_mapping_reaches_the_file_and_other_mappings(
        run_guest: Callable[..., Run], arch: str) -> None:
    run = run_guest("mm_shared", arch=arch)
    assert run.status.exit_code == 0, run.status
    assert run.stdout.decode().splitlines() == [
        "second mapping sees X, read() sees X",
        "msync=0",
        "after the child wrote: C",
        "file starts XC",
        "shared writable map of a read-only fd fails: 1",   # EACCES, as on Linux
        "private write stays private: X",
        "msync of unmapped: -1",                            # ENOMEM
    ]
