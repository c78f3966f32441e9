"""Public API: GetVersion."""

from __future__ import annotations

from viridian.v1 import controller_pb2 as cpb

from controller.grpc_errors import Context, map_errors
from controller.version import API_VERSION, VERSION

__all__ = ["VersionApi"]


class VersionApi:
    @map_errors
    async def GetVersion(
        self, request: cpb.GetVersionRequest, context: Context
    ) -> cpb.GetVersionResponse:
        return cpb.GetVersionResponse(version=VERSION, api_version=API_VERSION)
