"""Translation between API objects and the pure scheduler's model, and the snapshot builder."""

from __future__ import annotations

from viridian.v1 import types_pb2 as pb

from controller.scheduler import (
    Allocation,
    Decision,
    NodeInfo,
    PartitionRequest,
    Snapshot,
)
from controller.store import ClusterCache

ARCH_NAMES: dict[int, str] = {pb.ARCH_X86_64: "x86_64", pb.ARCH_I386: "i386"}
DEFAULT_CPU_RATIO = 4.0
DEFAULT_MEMORY_RATIO = 1.0
NODE_LABEL = "viridian.io/node"  # every node carries it: a target node (move, start --node)
                                 # selects it for one placement


def node_info(node: pb.Node, alive: bool) -> NodeInfo:
    spec = node.spec
    return NodeInfo(
        name=node.name,
        vcpus=spec.vcpus,
        memory_bytes=spec.memory_bytes,
        arches=frozenset(ARCH_NAMES[a] for a in spec.arches if a in ARCH_NAMES),
        labels={**spec.labels, NODE_LABEL: node.name},
        cordoned=spec.cordoned,
        ready=alive and node.status.state == pb.NODE_STATE_READY,
        cpu_allocation_ratio=spec.cpu_allocation_ratio or DEFAULT_CPU_RATIO,
        memory_allocation_ratio=spec.memory_allocation_ratio or DEFAULT_MEMORY_RATIO,
    )


def request_for(name: str, spec: pb.PartitionSpec, arch: int, target: str = ""
                ) -> PartitionRequest:
    """What placement needs of a partition; `target` (status.target_node) restricts this
    one placement to that node."""
    return PartitionRequest(
        name=name,
        vcpus=max(spec.vcpus, 1),
        memory_bytes=max(spec.memory_bytes, 1),
        arch=ARCH_NAMES.get(int(arch), "x86_64"),
        node_selector={**spec.node_selector, **({NODE_LABEL: target} if target else {})},
        anti_affinity_group=spec.anti_affinity_group,
        max_per_node=spec.max_per_node or 1,
        strategy=spec.placement_strategy,
    )


def snapshot_of(cache: ClusterCache, exclude: str = "") -> Snapshot:
    """Nodes and their allocations as the cache sees them now (exclude: ignore one partition,
    so explaining a bound partition does not count it against its own node)."""
    nodes = [node_info(n, cache.node_alive(n.name)) for n in cache.nodes.values()]
    allocations = [
        Allocation(name, alloc.node, e.vcpus, e.memory_bytes, e.group)
        for alloc in cache.allocations.values()
        if alloc.node in cache.nodes
        for name, e in alloc.entries.items()
        if name != exclude
    ]
    return Snapshot.of(nodes, allocations)


def explanation(decision: Decision, current_node: str = "") -> pb.PlacementExplanation:
    out = pb.PlacementExplanation(
        partition=decision.partition,
        chosen_node=decision.node or "",
        summary=decision.reason,
        current_node=current_node,
    )
    for v in decision.verdicts or ():
        out.verdicts.append(
            pb.NodeVerdict(
                node=v.node,
                passed=v.passed,
                total=v.total,
                chosen=v.node == decision.node,
                filters=[
                    pb.FilterResult(
                        name=f.name, passed=f.passed, reason_code=f.reason_code, detail=f.detail
                    )
                    for f in v.filters
                ],
                scores=[
                    pb.ScoreResult(name=s.name, raw=s.raw, weight=s.weight, weighted=s.weighted)
                    for s in v.scores
                ],
            )
        )
    return out
