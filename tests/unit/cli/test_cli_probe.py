"""What the CLI says when it cannot talk to a controller (controller.cli.client.probe)."""

from __future__ import annotations

import datetime
from concurrent import futures

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.cli.client import probe


def _self_signed_ca() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_tls_client_of_a_plaintext_server_is_told_about_tls() -> None:
    """gRPC's text for a failed handshake ends in "OK": the CLI used to print
    `cannot reach the controller at ADDR: OK`."""
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        channel = grpc.secure_channel(f"127.0.0.1:{port}",
                                      grpc.ssl_channel_credentials(_self_signed_ca()))
        why = probe(channel, 5.0)
        channel.close()
    finally:
        server.stop(None)
    assert why is not None and why.startswith("TLS handshake failed"), why
    assert "--insecure" in why


def test_a_closed_port_is_connection_refused() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    server.stop(None)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        why = probe(channel, 5.0)
    assert why is not None and "refused" in why.lower(), why
