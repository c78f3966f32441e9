"""The CLI's watch, set and apply against a real controller replica (real etcd, real gRPC,
plaintext): real `viridian` processes, ended with Ctrl-C where they watch.

Each test has a replica of its own on its own key prefix, so no node or partition of one
test can be seen (or take work) in another; every wait is on a condition with a deadline."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from inproc import Api, FakeAgent, compile_hello, create, get, push, replica
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from tests.ctrl_c import popen_interruptible

ROOT = Path(__file__).parents[3]
OFF = pb.DESIRED_STATE_OFF
WAIT_S = 60.0  # generous: a CLI start (Python + grpc import) is slow on a loaded 2-core box


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def api(etcd_endpoint: str, hello: bytes) -> Iterator[Api]:
    for a in replica(etcd_endpoint):
        push(a.stub, "hello", hello)
        yield a


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "PYTHONUNBUFFERED": "1",
            "VIRIDIAN_CONFIG_DIR": str(tmp / "cfg"), "NO_COLOR": "1"}


def _cli(api: Api) -> list[str]:
    return [sys.executable, "-m", "controller.cli", "--insecure", "--controller", api.address]


def viridian(api: Api, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(api), *args], env=_env(tmp), capture_output=True,
                          text=True, timeout=WAIT_S)


class Watch:
    """A `viridian … -w` process and the words of its stdout lines."""

    def __init__(self, api: Api, tmp: Path, *args: str) -> None:
        self.proc = popen_interruptible([*_cli(api), *args], env=_env(tmp),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, match: Callable[[list[str]], bool], what: str) -> list[str]:
        """The words of the first line from now on that `match` accepts."""
        deadline = time.monotonic() + WAIT_S
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                raise AssertionError(f"no line {what} in {WAIT_S:.0f} s; "
                                     f"saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"watch ended before a line {what}; saw {self.seen}; "
                                     f"stderr: {self._stderr()}")
            self.seen.append(line)
            if match(line.split()):
                return line.split()

    def _stderr(self) -> str:
        self.proc.wait(5)
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(WAIT_S)
        return code, self._stderr()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_ls_watch_on_a_replica(api: Api, tmp_path: Path) -> None:
    create(api, "cw-a", desired_state=OFF)
    create(api, "other", desired_state=OFF)  # outside --prefix: never shown
    watch = Watch(api, tmp_path, "ls", "-w", "--prefix", "cw-")
    try:
        assert watch.until(lambda w: True, "at all")[:2] == ["NAME", "PHASE"]
        assert watch.until(lambda w: True, "after the header")[:2] == ["cw-a", "Off"]
        create(api, "cw-b", desired_state=OFF)
        assert watch.until(lambda w: w[0] == "cw-b", "for cw-b")[1] == "Off"
        api.stub.UpdatePartition(cpb.UpdatePartitionRequest(name="cw-a", vcpus=2))
        assert watch.until(lambda w: w[0] == "cw-a", "for cw-a's update")[:4] == [
            "cw-a", "Off", "-", "2"]
        api.stub.DeletePartition(cpb.DeletePartitionRequest(name="cw-b"))
        assert watch.until(lambda w: w[0] == "cw-b", "for cw-b's delete")[1] == "Deleted"
        code, err = watch.interrupt()
        assert code == 0 and "Traceback" not in err, err
        assert not any(line.startswith("other") for line in watch.seen)
    finally:
        watch.close()


def test_nodes_watch_on_a_replica(api: Api, tmp_path: Path) -> None:
    agent = FakeAgent(api, "cw-node", vcpus=2, memory=1 << 30)
    watch = Watch(api, tmp_path, "nodes", "-w")
    try:
        assert watch.until(lambda w: True, "at all")[:2] == ["NAME", "STATE"]
        watch.until(lambda w: w[:2] == ["cw-node", "Ready"], "with cw-node Ready")
        api.stub.CordonNode(cpb.CordonNodeRequest(name="cw-node"))
        watch.until(lambda w: w[0] == "cw-node" and w[5] == "yes", "with cw-node cordoned")
        code, err = watch.interrupt()
        assert code == 0 and "Traceback" not in err, err
    finally:
        watch.close()
        agent.close()


def test_set_and_apply_on_a_replica(api: Api, tmp_path: Path) -> None:
    create(api, "ca-web", desired_state=OFF, labels={"old": "1"})
    done = viridian(api, tmp_path, "set", "ca-web", "--label", "tier=db", "--remove-label",
                    "old", "--vcpus", "2", "--memory", "128M")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "partition ca-web updated"
    p = get(api, "ca-web")
    assert dict(p.spec.labels) == {"tier": "db"} and p.spec.memory_bytes == 128 << 20

    printed = viridian(api, tmp_path, "get", "ca-web", "-o", "yaml").stdout
    path = tmp_path / "web.yaml"
    path.write_text(printed)
    same = viridian(api, tmp_path, "apply", "-f", str(path))
    assert same.returncode == 0, same.stderr
    assert same.stdout.strip() == "partition ca-web unchanged"
    assert get(api, "ca-web").revision == p.revision

    doc = yaml.safe_load(printed)
    doc["spec"]["labels"]["zone"] = "a"
    doc["spec"]["vcpus"] = 3
    new = {"name": "ca-new", "spec": {"image": "hello", "desired_state": "DESIRED_STATE_OFF"}}
    path.write_text(yaml.safe_dump([doc, new]))
    applied = viridian(api, tmp_path, "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == ["partition ca-web configured",
                                           "partition ca-new created"]
    p = get(api, "ca-web")
    assert dict(p.spec.labels) == {"tier": "db", "zone": "a"} and p.spec.vcpus == 3
    assert get(api, "ca-new").spec.image_digest.startswith("sha256:")
    again = viridian(api, tmp_path, "apply", "-f", str(path))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == ["partition ca-web unchanged",
                                         "partition ca-new unchanged"]


def test_set_refuses_a_pending_partition_on_a_replica(api: Api, tmp_path: Path) -> None:
    create(api, "ca-pending", vcpus=1)  # desired Running on a replica with no node: Pending
    assert get(api, "ca-pending").status.phase == pb.PARTITION_PHASE_PENDING
    refused = viridian(api, tmp_path, "set", "ca-pending", "--vcpus", "2")
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: FAILED_PRECONDITION: "), lines
    assert "'ca-pending' is Pending" in lines[0]
    assert get(api, "ca-pending").spec.vcpus == 1
