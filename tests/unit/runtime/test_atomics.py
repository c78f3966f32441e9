"""Guest atomics are atomic across vCPUs (each vCPU is its own unicorn instance and host thread).

Without the atomic unicorn patch (docs/unicorn-patch.md) LOCK-prefixed instructions were a
plain load/op/store and XCHG a plain load + store: concurrent guest atomics lost updates, and
glibc's mutexes and futex protocol can break under contention (two owners, lost wake-ups).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from runtime_helpers import Run

from node_agent.runtime.unicorn_build import build_info, is_patched

pytestmark = pytest.mark.skipif(
    not is_patched() or "atomic" not in str(build_info().get("patch")),
    reason="needs the atomic unicorn patch (make venv)")


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_lock_prefixed_instructions_are_atomic_across_vcpus(run_guest: Callable[..., Run],
                                                            arch: str) -> None:
    run = run_guest("atomics", "100000", arch=arch, vcpus=4)
    assert run.stdout == b"xadd=400000 cas=400000 spin=20000 split=42\n", run
    assert (run.status.exit_code, run.status.failed_reason) == (0, None), run.status
