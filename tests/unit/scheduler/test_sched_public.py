"""The public surface of controller.scheduler, and the module-size habit."""

from __future__ import annotations

from pathlib import Path

import pytest

import controller.scheduler as scheduler

PACKAGE = Path(scheduler.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_all_names_exist_and_are_exported() -> None:
    assert sorted(scheduler.__all__) == sorted(set(scheduler.__all__))
    for name in scheduler.__all__:
        assert hasattr(scheduler, name), name
    for name in ("place", "explain", "place_batch", "capacity_plan", "Snapshot", "Decision"):
        assert name in scheduler.__all__


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_module_is_small_with_a_docstring(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) < 400
    assert text.lstrip().startswith('"""')
