"""A controller whose port is taken says so in one line and exits 1 (gRPC raises a
RuntimeError for a failed bind, which used to end in a traceback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_a_taken_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'proto'}"}
        res = subprocess.run(
            [sys.executable, "-m", "controller.cli", "controller", "--listen",
             f"127.0.0.1:{port}", "--etcd", "127.0.0.1:1", "--insecure",
             "--data-dir", str(tmp_path / "ctl")],
            capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr, res.stderr
