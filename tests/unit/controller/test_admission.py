"""SetupAdmission on its own: the bound, re-admission, release, expiry, and retry hints that
bring refused agents back as fast as sessions are set up."""

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
    assert wait is not None and SetupAdmission.MIN_WAIT_S <= wait <= 1.0
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


def _measure_setups(adm: SetupAdmission, clock: Clock, took: float, rounds: int) -> None:
    """Fill every slot, and let each setup take `took` seconds, `rounds` times."""
    for r in range(rounds):
        names = [f"m{r}-{i}" for i in range(adm.limit)]
        assert all(adm.admit(n) is None for n in names)
        clock.t += took
        for n in names:
            adm.done(n)


def test_refused_agents_are_booked_to_return_as_fast_as_sessions_are_set_up() -> None:
    """A burst of 300 refusals at a replica with 10 slots whose setups take 0.5 s: they must
    come back spread over the 15 s it takes to set them up (20 a second), never more in any
    half second than there are slots, and not later than needed. (The first version spread
    them at random over a window set by the refusal rate: 75 a second here.)"""
    clock = Clock()
    adm = SetupAdmission(limit=10, clock=clock, rng=random.Random(3))
    _measure_setups(adm, clock, took=0.5, rounds=120)
    assert abs(adm.setup_s - 0.5) < 0.01 and abs(adm.rate() - 20.0) < 0.5
    for i in range(10):
        assert adm.admit(f"holder-{i}") is None
    waits = sorted(w for w in (adm.admit(f"burst-{i}") for i in range(300)) if w is not None)
    assert len(waits) == 300
    assert waits[0] >= SetupAdmission.MIN_WAIT_S
    assert 14.0 <= waits[-1] <= 16.0
    for i, w in enumerate(waits):   # no half second holds more returns than there are slots
        assert sum(1 for x in waits[i:i + 20] if x < w + 0.5) <= 11


def test_the_queue_follows_the_measured_setup_time() -> None:
    """Fast setups give short waits; a lone refusal at an idle queue waits only a moment."""
    clock = Clock()
    adm = SetupAdmission(limit=10, clock=clock, rng=random.Random(5))
    _measure_setups(adm, clock, took=0.05, rounds=120)
    for i in range(10):
        adm.admit(f"holder-{i}")
    waits = [adm.admit(f"burst-{i}") for i in range(100)]
    assert max(w for w in waits if w is not None) < 1.0   # 200 a second: 100 in 0.5 s
    clock.t += 3.0   # the queue has drained; the holders are still setting up
    lone = adm.admit("lone")
    assert lone is not None and lone < SetupAdmission.MIN_WAIT_S + 0.01


def test_no_hint_exceeds_the_cap_however_long_the_queue() -> None:
    clock = Clock()
    adm = SetupAdmission(limit=1, clock=clock, rng=random.Random(9))
    adm.admit("holder")
    waits = [adm.admit(f"n{i}") for i in range(1000)]   # 1 a second at the assumed 1 s
    assert max(w for w in waits if w is not None) <= SetupAdmission.MAX_WAIT_S + 1.0


def test_incoming_counts_the_nodes_setting_up_and_those_booked_to_come_back() -> None:
    clock = Clock()
    adm = SetupAdmission(limit=10, clock=clock, rng=random.Random(2))
    _measure_setups(adm, clock, took=1.0, rounds=120)   # 10 a second
    for i in range(10):
        adm.admit(f"holder-{i}")
    assert adm.incoming() == 10
    for i in range(50):
        adm.admit(f"burst-{i}")
    assert 55 <= adm.incoming() <= 62   # 50 booked over the next ~5 s
    clock.t += 3.0
    assert 25 <= adm.incoming() <= 32   # 30 of them should be back by now
