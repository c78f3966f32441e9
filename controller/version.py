"""The software's version, reported by the CLI, the controller (GetVersion) and the agents
(NodeSpec.agent_version at Register). Kept equal to pyproject.toml's by a unit test."""

from __future__ import annotations

__all__ = ["API_VERSION", "VERSION"]

VERSION = "0.1.0"
API_VERSION = "viridian.v1"
