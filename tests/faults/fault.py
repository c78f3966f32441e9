"""A fault: what it does to the cluster (inject), for how long (hold), how it is undone
(heal), and what must be in place first (prepare). The kinds are made in infra_faults.py
(processes and the network) and request_faults.py (requests cut short); injector.py runs
them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Fault"]


@dataclass
class Fault:
    kind: str
    target: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    hold_s: float
    prepare: Callable[[], None] = lambda: None
    note: list[str] = field(default_factory=list)  # what happened, for the report
    victims: list[str] = field(default_factory=list)  # partitions it made: retired after
    # Recovery is timed from the moment the heal begins (restarting a killed service is part
    # of it), except where the heal is a user's own next step (start a saved partition
    # again, uncordon a drained node): then from when that step was taken.
    timed_after_heal: bool = False
