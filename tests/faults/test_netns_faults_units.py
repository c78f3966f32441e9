"""The pure parts of the netns fault primitives (no root needed)."""

from __future__ import annotations

import struct

import pytest
from netns import ClusterError, Netem
from netns.delayq import MSG_PACKET, packet_ids
from netns.faults import pairs
from netns.network import bridged_traffic_dropped


@pytest.mark.parametrize(("spec", "args"), [
    (Netem(delay_ms=100), ["delay", "100ms"]),
    (Netem(delay_ms=100, jitter_ms=20), ["delay", "100ms", "20ms"]),
    (Netem(loss_pct=5), ["loss", "5%"]),
    (Netem(delay_ms=2.5, loss_pct=0.5), ["delay", "2.5ms", "loss", "0.5%"]),
], ids=["delay", "jitter", "loss", "both"])
def test_netem_tc_arguments(spec: Netem, args: list[str]) -> None:
    assert spec.tc_args() == args and not spec.empty


@pytest.mark.parametrize("kwargs", [{"delay_ms": -1}, {"jitter_ms": -1}, {"loss_pct": 101}])
def test_netem_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ClusterError):
        Netem(**kwargs)


def test_netem_nothing_is_empty() -> None:
    assert Netem().empty


def test_pairs_of_groups() -> None:
    assert pairs("a", "b") == [("a", "b")]
    assert pairs("a", ["b", "c", "a"]) == [("a", "b"), ("a", "c")]
    assert pairs(["a", "b"], ["b", "c"]) == [("a", "b"), ("a", "c"), ("b", "c")]


@pytest.mark.parametrize(("br_nf", "rules", "dropped"), [
    ("1\n", "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n", True),
    ("0\n", "-P FORWARD DROP\n", False),  # bridge netfilter off: iptables never sees them
    (None, "-P FORWARD DROP\n", False),  # no br_netfilter at all
    ("1\n", "-P FORWARD ACCEPT\n", False),
], ids=["dockerd", "br-nf-off", "no-br-nf", "accept"])
def test_when_bridged_traffic_needs_its_own_accept(br_nf: str | None, rules: str,
                                                   dropped: bool) -> None:
    assert bridged_traffic_dropped(br_nf, rules) is dropped


def _packet_msg(packet_id: int) -> bytes:
    hdr = struct.pack("!IHB", packet_id, 0x0800, 3) + b"\0"  # id, hw proto, hook, pad
    attr = struct.pack("=HH", 4 + 7, 1) + hdr
    body = struct.pack("!BBH", 0, 0, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), MSG_PACKET, 0, 0, 0) + body


def test_delayer_reads_packet_ids_from_a_batch() -> None:
    assert packet_ids(_packet_msg(7) + _packet_msg(8)) == [7, 8]
    assert packet_ids(b"") == []
