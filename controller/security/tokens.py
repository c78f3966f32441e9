"""Bearer tokens: "ID.SECRET", like kubeadm's bootstrap tokens.

The ID is public (it names the token in `viridian token ls` and in audit records); the
SECRET is shown once and only its sha256 is stored, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string

__all__ = ["TOKEN_RE", "new_token", "parse_token", "secret_digest", "secret_matches"]

_ALPHABET = string.ascii_lowercase + string.digits
TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{32})$")


def new_token() -> tuple[str, str]:
    """(id, full token text)."""
    token_id = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    return token_id, f"{token_id}.{secret}"


def parse_token(text: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = TOKEN_RE.match(text.strip())
    return (match.group(1), match.group(2)) if match else None


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def secret_matches(stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(stored, secret_digest(secret))
