"""Click parameter types and shared options: sizes, K=V pairs, durations, -o."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from controller.cli.output import FORMATS
from controller.cli.sizes import parse_size

__all__ = [
    "DEFAULT_OUTPUT_KEY",
    "DURATION",
    "KEY_VALUE",
    "SIZE",
    "output_option",
    "pairs_to_dict",
    "parse_duration",
    "parse_key_value",
]

F = TypeVar("F", bound=Callable[..., Any])


class SizeType(click.ParamType[int, Any]):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


def parse_key_value(text: str) -> tuple[str, str]:
    """"k=v" -> ("k", "v"); the value may be empty or contain "=", the key may not be empty."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"invalid pair '{text}': use KEY=VALUE")
    return key.strip(), value


class KeyValueType(click.ParamType[tuple[str, str], Any]):
    name = "key=value"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_key_value(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


def parse_duration(text: str) -> float:
    """"1h30m", "90s", "2m", or bare seconds "45" -> seconds."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * {"h": 3600, "m": 60, "s": 1}[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration '{text}': use e.g. 90s, 15m, 1h30m")
    return total


class DurationType(click.ParamType[float, Any]):
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


SIZE = SizeType()
KEY_VALUE = KeyValueType()
DURATION = DurationType()


def pairs_to_dict(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    return dict(pairs)


#: ctx.meta key under which the root command leaves the context's default output format.
DEFAULT_OUTPUT_KEY = "viridian.default_output"


def _default_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    if value is not None:
        return value
    fallback = ctx.meta.get(DEFAULT_OUTPUT_KEY)  # meta is shared by the whole command line
    return fallback if isinstance(fallback, str) and fallback in FORMATS else "table"


def output_option(func: F) -> F:
    """-o/--output table|wide|json|yaml (default: the context's, else table); an unknown
    value lists the formats that exist."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(FORMATS),
        default=None,
        callback=_default_output,
        show_default="table, or the context's output",
        help="Output format.",
    )(func)
