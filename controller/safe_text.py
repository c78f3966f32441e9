"""Text that is safe to store and to print on a terminal.

Text from agents (report reasons, event messages) and from etcd is untrusted: an escape
sequence in it could retitle, clear or rewrite an operator's terminal, a carriage return or a
newline could forge another line of output, and a bidi override could make a line read
differently from what it says. `escape_controls` makes every such character visible as a
backslash escape (ESC -> "\\x1b") instead of deleting it, so nothing is hidden either.

Escaped: the C0 controls, DEL, the C1 controls (0x80-0x9f, which 8-bit terminals honour, e.g.
0x9b = CSI), the bidi embedding/override/isolate marks and the Unicode line and paragraph
separators. Tab and newline are kept only where a value may span lines.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "has_controls", "one_line"]

# re's own escapes (a raw string): no control character appears in this source.
_BIDI_AND_SEPARATORS = r"\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f" + _BIDI_AND_SEPARATORS + "]")
_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f" + _BIDI_AND_SEPARATORS + "]")
ELLIPSIS = "…"


_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def has_controls(text: str) -> bool:
    """Whether `text` holds any character escape_controls would escape (tab and newline
    included)."""
    return not text.isprintable() and _ALL.search(text) is not None


def escape_controls(text: str, *, multiline: bool = False) -> str:
    """`text` with every control character shown as an escape; with `multiline`, tab and
    newline are kept."""
    if text.isprintable():  # the common case, in C: no Cc, Cf, Zl or Zp character at all
        return text
    pattern = _BUT_LINES if multiline else _ALL
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape, text)


def one_line(text: str, limit: int) -> str:
    """Untrusted text as one printable line of at most `limit` characters (cut with "…")."""
    if len(text) > limit * 4:
        text = text[: limit * 4]  # escaping only grows it: do not scan megabytes
    text = escape_controls(text)
    if len(text) > limit:
        text = text[: limit - len(ELLIPSIS)] + ELLIPSIS
    return text
