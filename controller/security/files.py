"""Certificates on disk. A *PKI directory* holds what one component needs:

    ca.pem            the cluster CA certificate (everyone)
    cert.pem key.pem  the component's own certificate and key
    ca-key.pem        the CA's key (controllers only: they sign node certificates at join)
    tokens            bootstrap tokens, "ID.SECRET ROLE" per line (controllers only)
    token             a bearer token (the admin directory: what the CLI presents)

`viridian certs` and `viridian up` write one such directory per component.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from viridian.v1 import types_pb2 as pb

from controller.security.names import node_server_name
from controller.security.pki import CONTROLLER_NAME, ETCD_NAME, KeyPair, issue, make_ca, serves_as
from controller.security.tls import TlsConfig, TlsError
from controller.security.tokens import new_token, parse_token

__all__ = ["ClusterPki", "PkiDir", "ROLE_BY_NAME"]

ROLE_BY_NAME: dict[str, pb.Role.ValueType] = {
    "admin": pb.ROLE_ADMIN, "operator": pb.ROLE_OPERATOR, "viewer": pb.ROLE_VIEWER,
    "node-join": pb.ROLE_NODE_JOIN,
}


def write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class PkiDir:
    path: Path

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.path / "cert.pem"

    @property
    def key(self) -> Path:
        return self.path / "key.pem"

    def tls(self) -> TlsConfig:
        return TlsConfig.from_files(self.ca, self.cert, self.key)

    def has_identity(self) -> bool:
        return self.cert.is_file() and self.key.is_file()

    def ca_keypair(self) -> KeyPair | None:
        key = self.path / "ca-key.pem"
        if not key.is_file():
            return None
        return KeyPair(self.ca.read_bytes(), key.read_bytes())

    def bootstrap_tokens(self) -> list[tuple[str, pb.Role.ValueType]]:
        path = self.path / "tokens"
        if not path.is_file():
            return []
        out: list[tuple[str, pb.Role.ValueType]] = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or parse_token(parts[0]) is None or parts[1] not in ROLE_BY_NAME:
                raise TlsError(f"{path}:{number}: expected 'ID.SECRET ROLE'")
            out.append((parts[0], ROLE_BY_NAME[parts[1]]))
        return out

    def token(self) -> str:
        path = self.path / "token"
        return path.read_text().strip() if path.is_file() else ""

    def write(self, ca_pem: bytes, pair: KeyPair | None = None) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.ca.write_bytes(ca_pem)
        if pair is not None:
            self.cert.write_bytes(pair.cert_pem)
            write_private(self.key, pair.key_pem)


class ClusterPki:
    """A cluster's CA and everything it signs, under one directory (one PkiDir each)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_dir = PkiDir(root / "ca")

    def ca(self) -> KeyPair:
        """The CA, created on first use and kept (a restarted cluster keeps its identity)."""
        key = self.ca_dir.path / "ca-key.pem"
        if not key.is_file():
            pair = make_ca()
            self.ca_dir.write(pair.cert_pem)
            write_private(key, pair.key_pem)
        return KeyPair(self.ca_dir.ca.read_bytes(), key.read_bytes())

    def controller(self, name: str, hosts: list[str]) -> PkiDir:
        ca = self.ca()
        out = PkiDir(self.root / f"controller-{name}")
        if not out.has_identity():
            out.write(ca.cert_pem, issue(ca, f"controller:{name}",
                                         [CONTROLLER_NAME, "localhost", "127.0.0.1", *hosts]))
            write_private(out.path / "ca-key.pem", ca.key_pem)
        return out

    def etcd(self, name: str, hosts: list[str]) -> PkiDir:
        ca = self.ca()
        out = PkiDir(self.root / f"etcd-{name}")
        if not out.has_identity():
            out.write(ca.cert_pem, issue(ca, f"etcd:{name}",
                                         [ETCD_NAME, "localhost", "127.0.0.1", *hosts]))
        return out

    def node(self, name: str) -> PkiDir:
        ca = self.ca()
        out = PkiDir(self.root / f"node-{name}")
        server = node_server_name(name)
        # A certificate from before nodes served their saved states is issued again.
        if not out.has_identity() or not serves_as(out.cert.read_bytes(), server):
            out.write(ca.cert_pem, issue(ca, f"node:{name}", [server]))
        return out

    def admin(self) -> tuple[PkiDir, str]:
        """The admin directory (CA + token); the token is also a controller bootstrap token
        (see bootstrap_file)."""
        out = PkiDir(self.root / "admin")
        token = out.token()
        if not token:
            out.write(self.ca().cert_pem)
            _, token = new_token()
            write_private(out.path / "token", token.encode() + b"\n")
        return out, token

    def write_bootstrap(self, controller: PkiDir, tokens: list[tuple[str, str]]) -> None:
        lines = "".join(f"{text} {role}\n" for text, role in tokens)
        write_private(controller.path / "tokens", lines.encode())
