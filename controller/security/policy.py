"""Who may call what: the permission every RPC needs, and each principal's permissions.

Public port (users): viewer reads; operator also changes partitions, images and nodes;
admin also manages tokens. A join token may only call JoinNode. Agent port (mutual TLS):
a node certificate may use the agent gateway (what it may touch is then bounded to its own
node by the gateway itself); a controller certificate may use the relays other replicas
need (state pulls, logs). Health and reflection answer anyone.
"""

from __future__ import annotations

from enum import Enum

from viridian.v1 import types_pb2 as pb

from controller.security.principal import Principal

__all__ = ["MUTATING", "Permission", "allowed", "required"]


class Permission(Enum):
    OPEN = "open"            # health checks, reflection
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    JOIN = "join"
    AGENT = "agent"          # node sessions, pulls
    RELAY = "relay"          # replica to replica

_CONTROLLER = "/viridian.v1.Controller/"
_GATEWAY = "/viridian.v1.AgentGateway/"

_READ = {"GetPartition", "ListPartitions", "WatchPartitions", "PartitionLogs", "ListNodes",
         "GetNode", "PlanCapacity", "ListImages", "ListEvents", "WatchEvents",
         "ExplainPlacement", "WatchNodes", "GetVersion", "GetPartitionStats",
         "WatchStats"}
_WRITE = {"CreatePartition", "StartPartition", "StopPartition", "DeletePartition",
          "SendStdin", "PausePartition", "ResumePartition", "SavePartition", "MovePartition",
          "CreateCheckpoint", "ApplyCheckpoint", "DeleteCheckpoint", "CordonNode",
          "UncordonNode", "DrainNode", "RemoveNode", "PushImage", "DeleteImage",
          "TagImage", "UpdatePartition"}
_ADMIN = {"CreateToken", "ListTokens", "DeleteToken"}

#: Methods whose calls are audited (everything that changes the cluster).
MUTATING = frozenset({*(_CONTROLLER + m for m in _WRITE),
                      *(_CONTROLLER + m for m in _ADMIN if m != "ListTokens"),
                      _CONTROLLER + "JoinNode"})


def required(method: str) -> Permission | None:
    """The permission `method` needs; None for a method we do not know (refused)."""
    if method.startswith(("/grpc.health.v1.Health/", "/grpc.reflection.")):
        return Permission.OPEN
    if method.startswith(_CONTROLLER):
        name = method[len(_CONTROLLER):]
        if name in _READ:
            return Permission.READ
        if name in _WRITE:
            return Permission.WRITE
        if name in _ADMIN:
            return Permission.ADMIN
        if name == "JoinNode":
            return Permission.JOIN
    if method.startswith(_GATEWAY):
        return Permission.AGENT
    return None


_ROLE_GRANTS: dict[pb.Role.ValueType, set[Permission]] = {
    pb.ROLE_VIEWER: {Permission.READ},
    pb.ROLE_OPERATOR: {Permission.READ, Permission.WRITE},
    pb.ROLE_ADMIN: {Permission.READ, Permission.WRITE, Permission.ADMIN, Permission.JOIN},
    pb.ROLE_NODE_JOIN: {Permission.JOIN},
}

#: What a controller certificate may call on another replica's agent port.
_RELAYS = {_GATEWAY + "PullState", _GATEWAY + "PullImage", _GATEWAY + "ReplicateBlob",
           _CONTROLLER + "PartitionLogs", _CONTROLLER + "WatchStats"}


def allowed(principal: Principal, method: str, permission: Permission,
            agent_port: bool) -> bool:
    if permission is Permission.OPEN or principal.kind == "insecure":
        return True
    if agent_port:
        if principal.kind == "node":
            return permission is Permission.AGENT
        return principal.kind == "controller" and method in _RELAYS
    if principal.kind != "user":
        return False
    return permission in _ROLE_GRANTS.get(principal.role, set())
