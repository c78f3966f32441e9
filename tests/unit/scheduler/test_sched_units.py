"""parse_size / format_size: exact binary suffixes, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.scheduler.units import format_size, parse_size

KI, MI, GI, TI = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1Ki", KI),
        ("512Mi", 512 * MI),
        ("4Gi", 4 * GI),
        ("2Ti", 2 * TI),
        ("1.5Gi", 1536 * MI),
        (" 8Gi ", 8 * GI),
        ("512M", 512 * MI),
        ("512m", 512 * MI),
        ("1G", GI),
        ("2K", 2 * KI),
        ("1T", TI),
        ("1GB", 10**9),
        ("64MB", 64 * 10**6),
        ("4kB", 4000),
        ("1.5GB", 15 * 10**8),
    ],
    ids=["zero", "bytes", "Ki", "Mi", "Gi", "Ti", "fraction", "spaces", "M-binary",
         "m-binary", "G-binary", "K-binary", "T-binary", "GB-decimal", "MB-decimal",
         "kB-decimal", "fraction-decimal"],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "Gi", "1Gb", "1gB", "1GiB", "-1Gi", "1.5", "0.3Ki", "abc", "1 Gi Gi", "1Q"],
    ids=["empty", "no-number", "bits", "mixed-case", "GiB", "negative", "fractional-bytes",
         "inexact", "garbage", "double-suffix", "unknown"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("n", "human", "exact"),
    [
        (0, "0", "0"),
        (100, "100", "100"),
        (512 * MI, "512Mi", "512Mi"),
        (4 * GI, "4Gi", "4Gi"),
        (1536 * MI, "1.5Gi", "1536Mi"),
        (7 * GI - 1, "6.99Gi", str(7 * GI - 1)),
        (-2 * GI, "-2Gi", "-2Gi"),
        (3 * TI, "3Ti", "3Ti"),
    ],
    ids=["zero", "bytes", "Mi", "Gi", "fraction", "truncates", "negative", "Ti"],
)
def test_format_size(n: int, human: str, exact: str) -> None:
    assert format_size(n) == human
    assert format_size(n, exact=True) == exact


@given(st.integers(min_value=0, max_value=1 << 50))
def test_exact_format_round_trips(n: int) -> None:
    assert parse_size(format_size(n, exact=True)) == n
