"""Sizes for the CLI: the scheduler's parse/format with the CLI's error wording."""

from __future__ import annotations

from controller.scheduler.units import format_size as _format_size
from controller.scheduler.units import parse_size as _parse_size

__all__ = ["format_size", "parse_size"]


def parse_size(text: str) -> int:
    """"512Mi" or "512M" -> 536870912, "1GB" -> 10**9; ValueError naming the suffixes."""
    try:
        return _parse_size(text)
    except ValueError as err:
        why = "not a whole number of bytes" if "whole" in str(err) else (
            "use bytes, Ki/Mi/Gi/Ti (or K/M/G/T, the same) or KB/MB/GB/TB (powers of 1000)")
        raise ValueError(f"invalid size '{text}': {why}") from None


def format_size(n: int) -> str:
    """536870912 -> "512Mi" (truncated to two decimals when not exact)."""
    return _format_size(n)
