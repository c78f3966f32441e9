"""The CLI's watch, set and apply against a real controller replica (real etcd, real gRPC,
plaintext): real `viridian` processes, ended with Ctrl-C where they watch."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from inproc import Api, FakeAgent, compile_hello, create, get, push, replica
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

ROOT = Path(__file__).parents[3]
OFF = pb.DESIRED_STATE_OFF


@pytest.fixture(scope="module")
def api(etcd_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for a in replica(etcd_endpoint):
        push(a.stub, "hello", compile_hello(tmp_path_factory.mktemp("guest")))
        yield a


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}", "PYTHONUNBUFFERED": "1",
            "VIRIDIAN_CONFIG_DIR": str(tmp / "cfg"), "NO_COLOR": "1"}


def viridian(api: Api, tmp: Path, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "--insecure", "--controller", api.address,
         *args], env=_env(tmp), capture_output=True, text=True, timeout=60, input=stdin)


def default_sigint() -> None:
    """Ctrl-C as at a terminal: a test run started in the background of a non-interactive
    shell (CI scripts, `make test &`) has SIGINT ignored, the CLI inherits that, and the
    SIGINT these tests send did nothing (4 watch tests hung in one full run)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Watch:
    """A `viridian … -w` process and its stdout lines."""

    def __init__(self, api: Api, tmp: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "--insecure", "--controller",
             api.address, *args], env=_env(tmp), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_words(self) -> list[str]:
        return self.lines.get(timeout=30).split()

    def until(self, *words: str) -> list[str]:
        """Lines up to the first starting with `words` (which is returned)."""
        while True:
            got = self.next_words()
            if got[:len(words)] == list(words):
                return got

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(30)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_ls_watch_on_a_replica(api: Api, tmp_path: Path) -> None:
    create(api, "cw-a", desired_state=OFF)
    watch = Watch(api, tmp_path, "ls", "-w", "--prefix", "cw-")
    try:
        assert watch.next_words()[:2] == ["NAME", "PHASE"]
        assert watch.next_words()[:2] == ["cw-a", "Off"]
        create(api, "cw-b", desired_state=OFF)
        assert watch.until("cw-b")[:2] == ["cw-b", "Off"]
        api.stub.UpdatePartition(cpb.UpdatePartitionRequest(name="cw-a", vcpus=2))
        assert watch.until("cw-a")[:4] == ["cw-a", "Off", "-", "2"]
        api.stub.DeletePartition(cpb.DeletePartitionRequest(name="cw-b"))
        assert watch.until("cw-b")[:2] == ["cw-b", "Deleted"]
        code, err = watch.interrupt()
        assert code == 0 and "Traceback" not in err
    finally:
        watch.close()


def test_nodes_watch_on_a_replica(api: Api, tmp_path: Path) -> None:
    agent = FakeAgent(api, "cw-node", vcpus=2, memory=1 << 30)
    watch = Watch(api, tmp_path, "nodes", "-w")
    try:
        assert watch.next_words()[:2] == ["NAME", "STATE"]
        assert watch.until("cw-node")[1] == "Ready"
        api.stub.CordonNode(cpb.CordonNodeRequest(name="cw-node"))
        assert watch.until("cw-node")[5] == "yes"
        code, err = watch.interrupt()
        assert code == 0 and "Traceback" not in err
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
    assert again.stdout.splitlines() == ["partition ca-web unchanged",
                                         "partition ca-new unchanged"]

    create(api, "ca-pending", vcpus=1)  # desired Running, no node fits: Pending
    refused = viridian(api, tmp_path, "set", "ca-pending", "--vcpus", "2")
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: FAILED_PRECONDITION: ")
    assert "'ca-pending' is Pending" in lines[0]
