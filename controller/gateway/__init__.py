"""Agent sessions (service.py), what agents report (reports.py, inventory.py), and what
they are told to run (dispatch.py)."""
