"""The public Controller service, assembled from one part per object kind."""

from __future__ import annotations

from viridian.v1 import controller_pb2_grpc

from controller.api.context import ApiContext
from controller.api.events_explain import EventsExplainApi
from controller.api.images import ImagesApi
from controller.api.lifecycle import LifecycleApi
from controller.api.nodes import NodesApi
from controller.api.partitions import PartitionsApi
from controller.api.security import SecurityApi
from controller.api.stats import StatsApi
from controller.api.update import UpdateApi
from controller.api.version import VersionApi
from controller.api.watch_nodes import WatchNodesApi

__all__ = ["ApiContext", "ControllerService"]


class ControllerService(
    PartitionsApi,
    LifecycleApi,
    NodesApi,
    ImagesApi,
    EventsExplainApi,
    SecurityApi,
    StatsApi,
    UpdateApi,
    VersionApi,
    WatchNodesApi,
    controller_pb2_grpc.ControllerServicer,
):
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
