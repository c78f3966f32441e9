"""The partition state machine (machine.py) and the operations built on it: applying events
(actions.py), node drains (drain.py) and evictions of lost nodes (eviction.py)."""
