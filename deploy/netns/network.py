"""Host plumbing: one network namespace per service, a veth pair from each into a bridge in
the root namespace (the bridge holds .1 of the subnet, so the host reaches every service),
the addresses, /etc/netns/<ns>/{hosts,resolv.conf,hostname}, link cuts, and the removal of
all of it. Traffic never leaves the bridge: namespaces get no default route and the host
does no forwarding for them.

Bridged frames between two services reach the root namespace's iptables FORWARD chain only
when bridge netfilter is on (net.bridge.bridge-nf-call-iptables = 1). If that chain's
policy is then DROP (dockerd sets both so), nothing would flow between services. So the
bridge gets an ACCEPT rule of its own at the top of FORWARD (`-i BR -o BR`, commented with
the bridge's name) whenever iptables is installed -- also when nothing drops yet, since a
dockerd started while the cluster runs would cut it -- and exactly that rule is removed with
the bridge. dockerd later putting its own jumps (DOCKER-USER, DOCKER-ISOLATION-*, ...) above
it changes nothing: those chains only act on Docker's bridges or return. Nothing else of the
root namespace's rules is touched."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import ClusterError

__all__ = [
    "LOCK_FILE",
    "NETNS_ETC",
    "PREFIX",
    "SUBNET_BASE",
    "Network",
    "bridge_name",
    "bridged_traffic_dropped",
    "etc_dirs",
    "forward_rules",
    "ip",
    "links",
    "namespace_prefix",
    "namespaces",
    "netns_pids",
    "remove",
    "remove_forward_rules",
]

NETNS_ETC = Path("/etc/netns")
LOCK_FILE = Path("/run/lock/viridian-netns-cluster.lock")
SUBNET_BASE = "10.213"  # each cluster takes a free 10.213.N.0/24
PREFIX = "vir"


def ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def netns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False)
    return [int(p) for p in out.split() if p.isdigit()]


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Serialises subnet choice between runners on this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    used = ip("-o", "-4", "addr", "show") + ip("-4", "route", "show", "table", "all")
    for n in range(256):
        if f"{SUBNET_BASE}.{n}." not in used:
            return ipaddress.IPv4Network(f"{SUBNET_BASE}.{n}.0/24")
    raise ClusterError(f"no free {SUBNET_BASE}.N.0/24 subnet")


def namespace_prefix(cluster_id: str) -> str:
    return f"{PREFIX}-{cluster_id}-"


def bridge_name(cluster_id: str) -> str:
    """The bridge's name, also the prefix of every veth of the cluster."""
    return f"{PREFIX}{cluster_id}"


def namespaces(cluster_id: str, check: bool = True) -> list[str]:
    """The cluster's network namespaces that exist."""
    prefix = namespace_prefix(cluster_id)
    return [line.split()[0] for line in ip("netns", "list", check=check).splitlines()
            if line.startswith(prefix)]


def links(cluster_id: str, check: bool = True) -> list[str]:
    """The cluster's bridge and host-side veths that exist."""
    out: list[str] = []
    for line in ip("-o", "link", "show", check=check).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link.startswith(bridge_name(cluster_id)):
                out.append(link)
    return out


def etc_dirs(cluster_id: str) -> list[Path]:
    """The cluster's /etc/netns/<ns> directories."""
    return list(NETNS_ETC.glob(f"{namespace_prefix(cluster_id)}*"))


def remove(cluster_id: str, netns: Sequence[str]) -> list[str]:
    """Delete these namespaces, then the cluster's links and /etc/netns dirs; say what went."""
    removed: list[str] = []
    for ns in netns:
        ip("netns", "delete", ns, check=False)
        removed.append(f"netns {ns}")
    for link in links(cluster_id, check=False):
        ip("link", "delete", link, check=False)
        removed.append(f"link {link}")
    for d in etc_dirs(cluster_id):
        shutil.rmtree(d, ignore_errors=True)
        removed.append(f"dir {d}")
    removed += remove_forward_rules(cluster_id)
    return removed


BR_NF_CALL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridged_traffic_dropped(br_nf_call_iptables: str | None, forward_rules: str) -> bool:
    """Whether the root namespace's iptables would drop frames bridged between services:
    bridge netfilter passes them to FORWARD, whose policy is DROP."""
    return ((br_nf_call_iptables or "").strip() == "1"
            and "-P FORWARD DROP" in forward_rules.splitlines())


def _iptables(*args: str) -> subprocess.CompletedProcess[str] | None:
    if shutil.which("iptables") is None:
        return None
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)


def _forward_accept(bridge: str) -> list[str]:
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment",
            f"netns-cluster {bridge}", "-j", "ACCEPT"]


def allow_bridged_traffic(bridge: str) -> bool:
    """Put the bridge's ACCEPT rule first in FORWARD; True if added. Without iptables there
    is nothing to add (and nothing that could drop). A failed insert is an error only when
    the bridge's frames are being dropped now."""
    listed = _iptables("-S", "FORWARD")
    if listed is None:
        return False
    proc = _iptables("-I", "FORWARD", "1", *_forward_accept(bridge))
    if proc is not None and proc.returncode == 0:
        return True
    try:
        br_nf: str | None = BR_NF_CALL.read_text()
    except OSError:
        br_nf = None
    if listed.returncode == 0 and not bridged_traffic_dropped(br_nf, listed.stdout):
        return False
    raise ClusterError(f"iptables -I FORWARD for {bridge}: "
                       f"{proc.stderr.strip() if proc else 'no iptables'}")


def forward_rules(cluster_id: str) -> list[str]:
    """The cluster's FORWARD ACCEPT rules in the root namespace, as iptables lists them."""
    listed = _iptables("-S", "FORWARD")
    tag = f"netns-cluster {bridge_name(cluster_id)}"
    return [line for line in (listed.stdout if listed else "").splitlines() if tag in line]


def remove_forward_rules(cluster_id: str) -> list[str]:
    removed: list[str] = []
    rule = _forward_accept(bridge_name(cluster_id))
    while forward_rules(cluster_id):
        proc = _iptables("-D", "FORWARD", *rule)
        if proc is None or proc.returncode != 0:
            break
        removed.append(f"iptables FORWARD accept for {bridge_name(cluster_id)}")
    return removed


class Network:
    """One cluster's bridge, and a namespace with an address on it for each service."""

    def __init__(self, cluster_id: str) -> None:
        self.id = cluster_id
        self.bridge = bridge_name(cluster_id)
        self.subnet: ipaddress.IPv4Network | None = None
        self.addresses: dict[str, str] = {}  # service -> address, in start order
        self.host_veth: dict[str, str] = {}  # service -> its veth's end on the bridge
        self.forward_rule = False  # whether the bridge's FORWARD ACCEPT rule was added

    def namespace(self, service: str) -> str:
        return f"{namespace_prefix(self.id)}{service}"

    @property
    def gateway(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def create_bridge(self, services: Sequence[str]) -> None:
        """Take a free subnet, create the bridge on its .1, give the services .2, .3, ..."""
        with _host_lock():
            self.subnet = _free_subnet()
            ip("link", "add", "name", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            self.forward_rule = allow_bridged_traffic(self.bridge)
        hosts = [f"{self.subnet.network_address + i + 2}" for i in range(len(services))]
        self.addresses.clear()  # the same dict: Faults holds it
        self.addresses.update(zip(services, hosts, strict=True))

    def create_namespaces(self, hostnames: Mapping[str, str]) -> None:
        """A namespace per addressed service, linked to the bridge, with /etc/netns files
        naming every service (by service name and by `hostnames[service]`)."""
        assert self.subnet is not None
        for i, svc in enumerate(self.addresses):
            ns, host, peer = self.namespace(svc), f"{self.bridge}h{i}", f"{self.bridge}p{i}"
            ip("netns", "add", ns)
            ip("link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns)
            ip("link", "set", host, "master", self.bridge, "up")
            ip("-n", ns, "link", "set", peer, "name", "eth0")
            ip("-n", ns, "addr", "add", f"{self.addresses[svc]}/{self.subnet.prefixlen}",
               "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self.host_veth[svc] = host
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 f"{self.gateway}\thost.docker.internal host-gateway"]
        for svc in self.addresses:
            names = dict.fromkeys([svc, hostnames[svc]])
            lines.append(f"{self.addresses[svc]}\t{' '.join(names)}")
        for svc in self.addresses:
            etc = NETNS_ETC / self.namespace(svc)
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text("\n".join(lines) + "\n")
            # No name servers: a name not in hosts fails at once, and nothing leaves the bridge.
            (etc / "resolv.conf").write_text("# netns-cluster: names come from /etc/hosts\n"
                                             "options timeout:1 attempts:1\n")
            (etc / "hostname").write_text(hostnames[svc] + "\n")

    def set_link(self, service: str, up: bool) -> None:
        """Take the service's link to the bridge down (a cut) or up again."""
        ip("link", "set", self.host_veth[service], "up" if up else "down")

    def describe(self) -> str:
        return (f"network {self.bridge} {self.subnet}: "
                + ", ".join(f"{s}={a}" for s, a in self.addresses.items()))
