"""Sizes for the CLI: the scheduler's parse/format with the CLI's error wording."""

from __future__ import annotations

from controller.scheduler.units import format_size as _format_size
from controller.scheduler.units import parse_size as _parse_size

__all__ = ["format_size", "parse_size"]


def parse_size(text: str) -> int:
    """"512Mi" -> 536870912; ValueError("invalid size '12Q': use bytes or Ki/Mi/Gi/Ti")."""
    try:
        return _parse_size(text)
    except ValueError:
        raise ValueError(f"invalid size '{text}': use bytes or Ki/Mi/Gi/Ti") from None


def format_size(n: int) -> str:
    """536870912 -> "512Mi" (truncated to two decimals when not exact)."""
    return _format_size(n)
