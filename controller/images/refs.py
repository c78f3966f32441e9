"""Image references as users write them: NAME (= NAME:latest), NAME:TAG, NAME@sha256:HEX.

The grammar is checked in controller.validation (split_image_reference); this is the value."""

from __future__ import annotations

from dataclasses import dataclass

from controller.validation import split_image_reference

DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    name: str
    tag: str = DEFAULT_TAG   # "" when the reference names a digest
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        """The reference `text` names; INVALID_ARGUMENT for one that is not well formed."""
        name, tag, digest = split_image_reference(text)
        return cls(name, tag, digest)

    @property
    def key(self) -> str:
        """NAME:TAG, the name of a tag record (only for tag references)."""
        return f"{self.name}:{self.tag}"

    def __str__(self) -> str:
        return f"{self.name}@{self.digest}" if self.digest else self.key


def split_key(key: str) -> tuple[str, str]:
    """(name, tag) of a tag record's key NAME:TAG."""
    name, _, tag = key.partition(":")
    return name, tag or DEFAULT_TAG
