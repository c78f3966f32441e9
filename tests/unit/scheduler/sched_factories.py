"""Factories for scheduler tests: make_node(vcpus=4), make_request(memory="8Gi"), snapshots."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.scheduler import Allocation, NodeInfo, PartitionRequest, Snapshot, parse_size


def size(value: int | str) -> int:
    return parse_size(value) if isinstance(value, str) else value


def make_node(
    name: str = "node-0",
    vcpus: int = 4,
    memory: int | str = "16Gi",
    *,
    arches: Iterable[str] = ("x86_64", "i386"),
    labels: Mapping[str, str] | None = None,
    cordoned: bool = False,
    ready: bool = True,
    cpu_ratio: float = 4.0,
    memory_ratio: float = 1.0,
) -> NodeInfo:
    return NodeInfo(
        name=name,
        vcpus=vcpus,
        memory_bytes=size(memory),
        arches=frozenset(arches),
        labels=dict(labels or {}),
        cordoned=cordoned,
        ready=ready,
        cpu_allocation_ratio=cpu_ratio,
        memory_allocation_ratio=memory_ratio,
    )


def make_request(
    name: str = "part-0",
    vcpus: int = 1,
    memory: int | str = "1Gi",
    *,
    arch: str = "x86_64",
    selector: Mapping[str, str] | None = None,
    group: str = "",
    max_per_node: int = 1,
    strategy: str = "",
) -> PartitionRequest:
    return PartitionRequest(
        name=name,
        vcpus=vcpus,
        memory_bytes=size(memory),
        arch=arch,
        node_selector=dict(selector or {}),
        anti_affinity_group=group,
        max_per_node=max_per_node,
        strategy=strategy,
    )


def make_alloc(
    partition: str, node: str, vcpus: int = 1, memory: int | str = "1Gi", group: str = ""
) -> Allocation:
    return Allocation(partition, node, vcpus, size(memory), group)


def make_snapshot(nodes: Iterable[NodeInfo], allocations: Iterable[Allocation] = ()) -> Snapshot:
    return Snapshot.of(nodes, allocations)


def make_cluster(count: int, **node_kwargs: object) -> Snapshot:
    """`count` identical nodes named node-0..node-{count-1}."""
    return Snapshot.of(
        make_node(f"node-{i}", **node_kwargs)  # type: ignore[arg-type]
        for i in range(count)
    )
