"""Image references as users type them: NAME, NAME:TAG or NAME@sha256:HEX.

Names are DNS labels (no "/" or ":"), so the first ":" or "@" ends the name. The controller
validates names and tags; this only splits and refuses what cannot be a reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import click

__all__ = ["ImageRef", "parse_ref"]

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str = ""        # "" = latest (the controller's default)
    digest: str = ""

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"


def parse_ref(text: str, *, allow_digest: bool = True, what: str = "image") -> ImageRef:
    """Split ``text``; a bad one is a usage error naming ``what``."""
    if "@" in text:
        name, _, digest = text.partition("@")
        if not allow_digest:
            raise click.UsageError(f"{what} {text!r}: give NAME[:TAG], not a digest")
        if not _DIGEST.fullmatch(digest):
            raise click.UsageError(f"{what} {text!r}: the digest must be sha256: and 64 "
                                   "lower-case hex digits")
        ref = ImageRef(name, digest=digest)
    else:
        name, _, tag = text.partition(":")
        if ":" in text and not tag:
            raise click.UsageError(f"{what} {text!r}: empty tag after ':'")
        if ":" in tag:
            raise click.UsageError(f"{what} {text!r}: a tag holds no ':'")
        ref = ImageRef(name, tag=tag)
    if not ref.name:
        raise click.UsageError(f"{what} {text!r}: empty name")
    return ref
