"""SetupAdmission on its own: the bound, re-admission, release, expiry and the spread of
the retry hints."""

from __future__ import annotations

import random

from controller.gateway.admission import SetupAdmission


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_the_bound_holds_and_a_node_already_setting_up_is_let_in_again() -> None:
    clock = Clock()
    adm = SetupAdmission(limit=3, clock=clock, rng=random.Random(1))
    assert [adm.admit(n) for n in ("a", "b", "c")] == [None, None, None]
    wait = adm.admit("d")
    assert wait is not None and 0.5 <= wait <= 0.5 + 1.01
    assert adm.admit("b") is None and len(adm) == 3
    adm.done("a")
    assert adm.admit("d") is None
    assert adm.refused == 1


def test_slots_whose_agents_never_came_back_are_freed_after_the_expiry() -> None:
    clock = Clock()
    adm = SetupAdmission(limit=2, clock=clock)
    adm.admit("a")
    clock.t += 3
    adm.admit("b")
    assert adm.admit("c") is not None
    clock.t += SetupAdmission.EXPIRY_S - 2.9   # a expired, b not yet
    assert adm.admit("c") is None
    assert adm.admit("d") is not None


def test_the_hint_spreads_wider_the_more_are_refused() -> None:
    clock = Clock()
    adm = SetupAdmission(limit=1, clock=clock, rng=random.Random(7))
    adm.admit("holder")
    few = [adm.admit(f"few-{i}") for i in range(10)]
    clock.t += 1.0
    many = [adm.admit(f"many-{i}") for i in range(3000)]
    assert all(w is not None and 0.5 <= w <= 1.6 for w in few)
    waits = [w for w in many if w is not None]
    assert max(waits) > 4.0 and max(waits) <= 0.5 + SetupAdmission.MAX_SPREAD_S
