"""The compatibility table (compat_cases.CASES): same stdout and exit code as the reference.

Cases with a known gap are strict xfails: when one starts passing, remove its known_gap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from compat_cases import CASES, Case
from compat_runner import ProgramBuilder, Reference, Unavailable, run_case


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.known_gap)] if case.known_gap else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_compat(case: Case, tmp_path: Path, compat_build: ProgramBuilder,
                compat_reference: Reference) -> None:
    try:
        result = run_case(case, tmp_path, compat_build, compat_reference)
    except Unavailable as exc:
        pytest.skip(str(exc))
    assert result.verdict != "differs", result.detail
