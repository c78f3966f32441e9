"""Run deploy/docker-compose.yml without Docker: one network namespace per service.

Each service of the compose file gets a network namespace `vir-<id>-<service>`, a veth pair
into a bridge `vir<id>`, an address of its own and /etc/netns/<ns>/hosts naming every
service; its `entrypoint` + `command` then run as `ip netns exec <ns> ARGV`, with the
image's programs mapped onto this machine's. `depends_on` conditions order the start, each
health check runs inside its service's namespace until it passes, and restart policies are
applied by a supervisor thread. Needs root and iproute2.

One concern per module, in dependency order:

    errors.py     ClusterError
    compose.py    reading the compose file (services, depends_on, health checks, volumes,
                  the entrypoint from the Dockerfile)
    network.py    namespaces, the bridge, veths, addresses, /etc/netns files, link cuts
    launch.py     how a command runs here: program shims, volume dirs, environment, logs
    services.py   the services' processes: start order, stop/kill/signal (freeze and
                  thaw), health, restarts
    faults.py     network faults inside the services' namespaces: black holes, netem
    delayq.py     netem's delay in user space (NFQUEUE), for kernels without sch_netem
    leftovers.py  the state file, down() after a crashed runner, leftovers()
    cluster.py    NetnsCluster, the Python API the tests use
    cli.py        `netns-cluster up` / `down`, and the network faults on a running cluster

deploy/netns_cluster.py re-exports the public names for older callers.
"""

from .cluster import NetnsCluster
from .compose import HealthCheck, Service, load_compose, parse_duration
from .errors import ClusterError
from .faults import Faults, Netem
from .launch import default_programs
from .leftovers import down

__all__ = [
    "ClusterError",
    "Faults",
    "HealthCheck",
    "NetnsCluster",
    "Netem",
    "Service",
    "default_programs",
    "down",
    "load_compose",
    "parse_duration",
]
