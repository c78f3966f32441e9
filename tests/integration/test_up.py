"""`viridian up` itself as a child process: ready, SIGTERM leaves nothing, state persists."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from itutil import (
    REPO,
    ProcessRecord,
    kill_all,
    processes_under,
    run_cli,
    short_tmp_dir,
    wait_for,
)

from controller.etcd_server import free_port

EXIT_S = 15.0


def _up(data_dir: Path, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "up", "--nodes", "2", "--data-dir",
         str(data_dir), "--listen", address],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=REPO, start_new_session=True,
    )


def _ready_nodes(address: str, up: subprocess.Popen[str]) -> int:
    assert up.poll() is None, f"viridian up exited with {up.returncode}"
    res = run_cli(address, "--connect-timeout", "1", "nodes", "-o", "json", timeout=15)
    if res.code != 0:
        return 0
    return sum(n["status"]["state"] == "NODE_STATE_READY" for n in json.loads(res.out))


def _stop(up: subprocess.Popen[str], ours: ProcessRecord) -> tuple[int, str, float]:
    ours.add_tree(up.pid)  # everything `up` started, recorded before it is told to stop
    started = time.monotonic()
    up.send_signal(signal.SIGTERM)
    try:
        out, _ = up.communicate(timeout=EXIT_S)
    except subprocess.TimeoutExpired:
        up.kill()
        out, _ = up.communicate()
        return -1, out, time.monotonic() - started
    return up.returncode, out, time.monotonic() - started


def test_up_sigterm_leaves_nothing_and_state_persists(guests: dict[str, Path]) -> None:
    data_dir = short_tmp_dir("vit-up-")
    address = f"127.0.0.1:{free_port()}"
    ours = ProcessRecord()

    def left_behind() -> list[tuple[int, str]]:
        return ours.alive() + processes_under(data_dir)

    try:
        up = _up(data_dir, address)
        wait_for(lambda: _ready_nodes(address, up) == 2, "2 Ready nodes", timeout=30,
                 interval=0.3)
        res = run_cli(address, "image", "push", "it-up-hello", str(guests["hello"]))
        assert res.code == 0, str(res)
        # A partition still running at SIGTERM: its worker must go too.
        res = run_cli(address, "create", "it-up-sleep", "--image", "it-up-hello", "--", "0")
        assert res.code == 0, str(res)
        res = run_cli(address, "image", "push", "it-up-sleep", str(guests["sleep"]))
        assert res.code == 0, str(res)
        res = run_cli(address, "create", "it-up-long", "--image", "it-up-sleep", "--", "3600")
        assert res.code == 0, str(res)
        try:
            wait_for(lambda: "sleeping" in run_cli(address, "logs", "it-up-long").out,
                     "it-up-long running")
        except AssertionError as err:
            raise AssertionError(f"{err}\n{run_cli(address, 'get', 'it-up-long', '-o', 'yaml')}"
                                 f"\n{run_cli(address, 'logs', 'it-up-long')}") from None

        code, out, took = _stop(up, ours)
        assert code == 0, f"exit {code} after {took:.1f}s:\n{out}"
        assert took < EXIT_S
        assert "stopped." in out
        left = left_behind()
        assert not left, f"left behind after SIGTERM: {left}"

        # Same data dir again: the cluster remembers its images and partitions.
        up = _up(data_dir, address)
        wait_for(lambda: _ready_nodes(address, up) == 2, "2 Ready nodes after restart",
                 timeout=30, interval=0.3)
        images = json.loads(run_cli(address, "image", "ls", "-o", "json").out)
        assert {"it-up-hello", "it-up-sleep"} <= {i["name"] for i in images}
        names = {p["name"] for p in json.loads(run_cli(address, "ls", "-o", "json").out)}
        assert {"it-up-sleep", "it-up-long"} <= names
        res = run_cli(address, "run", "--image", "it-up-hello", "--", "4")
        assert res.code == 4, str(res)

        code, out, took = _stop(up, ours)
        assert code == 0, f"exit {code} after {took:.1f}s:\n{out}"
        left = left_behind()
        assert not left, f"left behind after the second SIGTERM: {left}"
    finally:
        if up.poll() is None:
            ours.add_tree(up.pid)
            up.kill()
            up.wait()
        left = left_behind()
        kill_all(left)
        if not left:
            shutil.rmtree(data_dir, ignore_errors=True)
