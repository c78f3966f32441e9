"""Run deploy/docker-compose.yml without Docker: one network namespace per service.

The code lives in the `netns` package next to this file (deploy/netns/, see its __init__
for the module layout); this module keeps the names older callers import from it:

    from netns_cluster import NetnsCluster, ClusterError, load_compose, parse_duration

Python API (the integration tests use it):

    with NetnsCluster("deploy/docker-compose.yml", run_dir) as c:
        c.address("controller-1")            # "10.213.7.5"
        c.kill("controller-1")               # SIGKILL its process (no restart)
        c.stop("node-2"); c.start("node-2")  # like docker stop / start
        c.cut("node-3"); c.restore("node-3") # take its link down / up

`down(run_dir)` removes what a crashed runner left, from the state file it keeps in the run
dir. `python deploy/netns_cluster.py up|down ...` is the same as deploy/netns-cluster.
"""

from __future__ import annotations

import sys

from netns.cli import main
from netns.cluster import NetnsCluster
from netns.compose import HealthCheck, Service, load_compose, parse_duration
from netns.errors import ClusterError
from netns.launch import REPO, default_programs
from netns.leftovers import STATE_FILE, down
from netns.network import LOCK_FILE, NETNS_ETC, PREFIX, SUBNET_BASE, netns_pids

__all__ = [
    "LOCK_FILE",
    "NETNS_ETC",
    "PREFIX",
    "REPO",
    "STATE_FILE",
    "SUBNET_BASE",
    "ClusterError",
    "HealthCheck",
    "NetnsCluster",
    "Service",
    "default_programs",
    "down",
    "load_compose",
    "main",
    "netns_pids",
    "parse_duration",
]

if __name__ == "__main__":
    sys.exit(main())
