"""Fault-injection suite (tests/faults/): the netns runner's fault primitives, and the
cluster of deploy/docker-compose.yml under faults with a checker of Viridian's promises
running throughout (see checker.py, injector.py, scenarios.py).

Modules here import the netns runner (deploy/) and the integration helpers
(tests/integration/) by name; this puts both on sys.path.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO / "deploy", REPO / "tests" / "integration", REPO / "tests" / "faults"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
