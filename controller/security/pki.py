"""Certificates for a cluster: one CA, server/client certificates, CSRs signed for joins.

Every Viridian server certificate carries a fixed DNS name per role (`viridian-controller`,
`viridian-etcd`) next to its real host names. Our clients pin the cluster CA and check that
role name, not the dialled address, so a controller is reachable under any address that
routes to it (compose host names, netns addresses, 127.0.0.1) while a node's certificate,
signed by the same CA but without that name, can never pose as a controller.

Identities live in the subject's common name as `KIND:NAME` (`node:node-1`,
`controller:ctl-a`): gRPC exposes the verified common name to servicers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.security.names import CONTROLLER_NAME, ETCD_NAME

__all__ = [
    "CONTROLLER_NAME", "ETCD_NAME", "CertError", "KeyPair", "ca_fingerprint", "issue",
    "make_ca", "make_csr", "serves_as", "sign_csr",
]

CA_DAYS = 3650
LEAF_DAYS = 825


class CertError(ValueError):
    """A certificate, key or CSR that cannot be used."""


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(cluster: str = "viridian") -> KeyPair:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} cluster CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _load_ca(ca: KeyPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert_pem)
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError as err:
        raise CertError(f"unusable CA: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError("the CA key is not an EC key")
    return cert, key


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _build(ca: KeyPair, common_name: str, public_key: ec.EllipticCurvePublicKey,
           server_names: list[str], days: int) -> bytes:
    ca_cert, ca_key = _load_ca(ca)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def issue(ca: KeyPair, common_name: str, server_names: list[str] | None = None,
          days: int = LEAF_DAYS) -> KeyPair:
    """A new key and a certificate for it; with server_names it is also a server cert."""
    key = _new_key()
    cert = _build(ca, common_name, key.public_key(), list(server_names or []), days)
    return KeyPair(cert, _key_pem(key))


def make_csr(common_name: str) -> tuple[bytes, bytes]:
    """(CSR PEM, private key PEM): the key never leaves the agent that made it."""
    key = _new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def sign_csr(ca: KeyPair, csr_pem: bytes, common_name: str, days: int = LEAF_DAYS,
             server_names: list[str] | None = None) -> bytes:
    """A certificate for the CSR's key, with the subject and server names WE choose (the
    CSR's own subject and extensions are ignored: the caller proved a token, not a name);
    a client certificate, also a server one with server_names."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as err:
        raise CertError("the certificate request is not a PEM CSR") from err
    if not csr.is_signature_valid:
        raise CertError("the certificate request's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CertError("the certificate request must use an EC P-256 key")
    return _build(ca, common_name, public_key, list(server_names or []), days)


def serves_as(cert_pem: bytes, server_name: str) -> bool:
    """Whether the certificate is a server certificate for `server_name` (serverAuth and
    that DNS name): node certificates issued before nodes served anything are not."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ExtendedKeyUsageOID.SERVER_AUTH in eku and \
        server_name in san.get_values_for_type(x509.DNSName)


def ca_fingerprint(cert_pem: bytes) -> str:
    """sha256 of the CA certificate's DER form, as `sha256:HEX` (for pinning at join)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        raise CertError("not a PEM certificate") from err
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
