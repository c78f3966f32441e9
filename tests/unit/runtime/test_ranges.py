"""RangeSet (GuestMemory's bookkeeping) against a set-of-units model, and its cap."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.runtime.ranges import RangeSet

spans = st.tuples(st.integers(0, 60), st.integers(1, 12)).map(lambda t: (t[0], t[0] + t[1]))
ops = st.lists(st.tuples(st.sampled_from(["add", "remove"]), spans), max_size=40)


def _intervals(units: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for u in sorted(units):
        if out and out[-1][1] == u:
            out[-1] = (out[-1][0], u + 1)
        else:
            out.append((u, u + 1))
    return out


@settings(max_examples=300, deadline=None)
@given(ops, spans)
def test_matches_a_model_of_covered_units(sequence: list[tuple[str, tuple[int, int]]],
                                          probe: tuple[int, int]) -> None:
    ranges = RangeSet(limit=1000)
    model: set[int] = set()
    for op, (lo, hi) in sequence:
        if op == "add":
            assert ranges.add(lo, hi)
            model |= set(range(lo, hi))
        else:
            removed = ranges.remove(lo, hi)
            assert removed == _intervals(model & set(range(lo, hi)))
            model -= set(range(lo, hi))
        assert ranges.pairs() == _intervals(model)
    lo, hi = probe
    window = set(range(lo, hi))
    assert ranges.overlaps(lo, hi) == bool(model & window)
    assert ranges.covers(lo, hi) == (window <= model and len(_intervals(model & window)) == 1)
    assert ranges.intersecting(lo, hi) == _intervals(model & window)
    assert ranges.uncovered(lo, hi) == _intervals(window - model)


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 6))
def test_the_cap_is_never_exceeded_and_refusals_change_nothing(
        sequence: list[tuple[str, tuple[int, int]]], limit: int) -> None:
    ranges = RangeSet(limit=limit)
    for op, (lo, hi) in sequence:
        before = ranges.pairs()
        done = ranges.add(lo, hi) if op == "add" else ranges.remove(lo, hi) is not None
        if not done:
            assert ranges.pairs() == before
        assert len(ranges) <= limit
