"""Byte sizes: parse_size("512Mi") and format_size(536870912).

Binary suffixes Ki, Mi, Gi, Ti (powers of 1024) are what we print. parse_size also takes the
single letters K, M, G, T (and k, m, g, t) as the same binary units, as `docker run -m 512m`
and `qemu -m 1G` do, and KB, MB, GB, TB as decimal units (powers of 1000), as disk makers
and the SI write them: "1G" is 1073741824 bytes, "1GB" is 1000000000.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["ALIASES", "SUFFIXES", "format_size", "parse_size"]

#: Binary suffixes, smallest first; a bare number is bytes.
SUFFIXES: tuple[tuple[str, int], ...] = (
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
)
#: What parse_size also reads: single letters as binary units, two letters as decimal ones.
ALIASES: tuple[tuple[str, int], ...] = (
    *((letter, factor) for (name, factor) in SUFFIXES for letter in (name[0], name[0].lower())),
    ("KB", 1000), ("kB", 1000), ("MB", 1000**2), ("GB", 1000**3), ("TB", 1000**4),
)
_FACTOR = dict(SUFFIXES + ALIASES)
_SIZE_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(" + "|".join(sorted(_FACTOR, key=len, reverse=True)) + r")?\s*$")


def parse_size(text: str) -> int:
    """Parse "512Mi", "1.5Gi" or "4096" into bytes; the result must be a whole number."""
    match = _SIZE_RE.match(text)
    if match is None:
        raise ValueError(
            f"invalid size {text!r}: expected a number with an optional suffix: Ki, Mi, Gi, Ti "
            "(or K, M, G, T: the same) or KB, MB, GB, TB (powers of 1000)"
        )
    number, suffix = match.groups()
    value = Fraction(number) * (_FACTOR[suffix] if suffix else 1)
    if value.denominator != 1:
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n: int, *, exact: bool = False) -> str:
    """Format bytes for people ("6Gi", "1.5Gi", truncated); exact=True parses back to n."""
    if n < 0:
        return "-" + format_size(-n, exact=exact)
    if exact:
        for suffix, factor in reversed(SUFFIXES):
            if n >= factor and n % factor == 0:
                return f"{n // factor}{suffix}"
        return str(n)
    for suffix, factor in reversed(SUFFIXES):
        if n >= factor:
            if n % factor == 0:
                return f"{n // factor}{suffix}"
            # Truncate (never round up) to two decimals: "free 6.99Gi" must not read as "7Gi".
            whole, frac = divmod(n * 100 // factor, 100)
            text = f"{whole}.{frac:02d}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return str(n)
