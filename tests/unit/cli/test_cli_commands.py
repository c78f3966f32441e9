"""Commands end to end against the in-process fake controller (real sockets, real gRPC)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from cli_fake import FakeController, make_partition
from click.testing import CliRunner
from conftest import Invoke
from viridian.v1 import types_pb2

from controller.cli import cli
from controller.cli.images import CHUNK_SIZE

Phase = types_pb2.PartitionPhase


def test_create_get_ls_json(invoke: Invoke, fake: FakeController) -> None:
    result = invoke("create", "web", "--image", "hello", "--vcpus", "2", "--memory", "128Mi",
                    "--env", "A=1", "--label", "app=web", "--restart", "always", "--ha",
                    "--disk", "2Gi", "--max-processes", "64", "--", "-v", "--port", "80")
    assert result.exit_code == 0, result.stderr
    assert "web created" in result.stdout
    spec = fake.partitions["web"].spec
    assert spec.disk_bytes == 2 << 30 and spec.max_processes == 64
    assert list(spec.args) == ["-v", "--port", "80"]
    assert spec.memory_bytes == 128 << 20 and spec.vcpus == 2 and spec.ha
    assert spec.restart_policy == types_pb2.RESTART_POLICY_ALWAYS

    got = invoke("get", "web")
    assert got.exit_code == 0
    assert "Phase:" in got.stdout and "Running" in got.stdout
    assert "Disk:" in got.stdout and "2Gi" in got.stdout
    assert "Max processes:" in got.stdout and "64" in got.stdout

    listed = invoke("ls", "-o", "json")
    data = json.loads(listed.stdout)
    assert [p["name"] for p in data] == ["web"]
    assert data[0]["spec"]["labels"] == {"app": "web"}
    assert data[0]["spec"]["restart_policy"] == "RESTART_POLICY_ALWAYS"

    assert json.loads(invoke("ls", "-l", "app=db", "-o", "json").stdout) == []
    table = invoke("ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODE", "VCPUS", "MEMORY", "IMAGE", "AGE"]
    assert table[1].split()[:6] == ["web", "Running", "node-1", "2", "128Mi", "hello"]
    assert yaml.safe_load(invoke("get", "web", "-o", "yaml").stdout)["name"] == "web"


def test_create_no_start(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello", "--no-start").exit_code == 0
    assert fake.partitions["w"].spec.desired_state == types_pb2.DESIRED_STATE_OFF


def test_unknown_output_format_lists_the_formats(invoke: Invoke) -> None:
    result = invoke("ls", "-o", "xml")
    assert result.exit_code == 2
    for fmt in ("table", "wide", "json", "yaml"):
        assert fmt in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "w", "--image", "hello", "--memory", "12Q"],
         "invalid size '12Q': use bytes, Ki/Mi/Gi/Ti"),
        (["create", "w", "--image", "hello", "--env", "NOVALUE"], "use KEY=VALUE"),
        (["create", "w", "--image", "hello", "--max-per-node", "2"],
         "--max-per-node needs --anti-affinity"),
        (["explain", "web", "--dry-run"], "either NAME or --dry-run"),
        (["explain"], "give a partition NAME"),
        (["explain", "web", "--vcpus", "2"], "--vcpus only makes sense with --dry-run"),
        (["explain", "--dry-run"], "--dry-run needs --image"),
        (["start", "web", "--timeout", "5s"], "--timeout only makes sense with --wait"),
        (["node", "drain", "node-1", "--deadline", "soon"], "invalid duration"),
    ],
    ids=["size", "pair", "max-per-node", "explain-both", "explain-none", "explain-flag",
         "dry-run-image", "timeout-without-wait", "deadline"],
)
def test_flag_validation_is_a_usage_error(invoke: Invoke, args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_grpc_errors_are_one_line(invoke: Invoke) -> None:
    result = invoke("get", "nope")
    assert result.exit_code == 1
    assert result.stderr == "error: NOT_FOUND: partition 'nope' not found\n"
    dup = invoke("create", "x", "--image", "missing")
    assert dup.stderr == "error: NOT_FOUND: image 'missing' not found\n"


def test_unreachable_controller(closed_address: str) -> None:
    result = CliRunner().invoke(cli, ["--controller", closed_address, "ls"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach the controller at {closed_address}")
    assert len(result.stderr.splitlines()) == 1


def test_failover_uses_the_first_address_that_answers(
    fake: FakeController, closed_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRIDIAN_CONTROLLER", f"{closed_address},{fake.address}")  # type: ignore[attr-defined]
    result = CliRunner().invoke(cli, ["nodes", "-o", "json"])
    assert result.exit_code == 0, result.stderr
    assert [n["name"] for n in json.loads(result.stdout)] == ["node-1", "node-2"]


def test_image_push_elf_streams_exact_bytes(
    invoke: Invoke, fake: FakeController, tmp_path: Path
) -> None:
    content = b"\x7fELF" + bytes(range(256)) * (CHUNK_SIZE // 256 * 2 + 7)  # > 2 chunks
    path = tmp_path / "hello"
    path.write_bytes(content)
    result = invoke("image", "push", "big", str(path))
    assert result.exit_code == 0, result.stderr
    header = fake.pushed[0].header
    chunks = [r.chunk for r in fake.pushed[1:]]
    assert (header.name, header.format, header.size_bytes) == ("big", "elf", len(content))
    assert header.digest == "sha256:" + hashlib.sha256(content).hexdigest()
    assert len(chunks) == 3 and all(len(c) <= CHUNK_SIZE for c in chunks)
    assert b"".join(chunks) == content
    assert "image big:latest pushed" in result.stdout


def test_image_push_directory_is_tarred(
    invoke: Invoke, fake: FakeController, tmp_path: Path
) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "app").write_bytes(b"\x7fELF...")
    refused = invoke("image", "push", "root", str(tmp_path))
    assert refused.exit_code == 2 and "--entrypoint" in refused.stderr
    result = invoke("image", "push", "root", str(tmp_path), "--entrypoint", "/bin/app")
    assert result.exit_code == 0, result.stderr
    assert fake.pushed[0].header.format == "tar"
    assert fake.pushed[0].header.entrypoint == "/bin/app"
    data = b"".join(r.chunk for r in fake.pushed[1:])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("bin/app").read() == b"\x7fELF..."  # type: ignore[union-attr]


def test_image_push_directory_emits_only_what_the_server_accepts(
    invoke: Invoke, fake: FakeController, tmp_path: Path
) -> None:
    import os

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "app").write_bytes(b"\x7fELF...")
    (tmp_path / "bin" / "app").chmod(0o4755)            # setuid: dropped, not pushed
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o1777)
    result = invoke("image", "push", "root", str(tmp_path), "--entrypoint", "/bin/app")
    assert result.exit_code == 0, result.stderr
    data = b"".join(r.chunk for r in fake.pushed[1:])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        modes = {m.name: (m.mode, m.uid, m.uname) for m in tar.getmembers()}
    assert modes["bin/app"] == (0o755, 0, "") and modes["tmp"] == (0o777, 0, "")
    os.mkfifo(tmp_path / "tmp" / "pipe")
    refused = invoke("image", "push", "root", str(tmp_path), "--entrypoint", "/bin/app")
    assert refused.exit_code == 1
    assert "member 'tmp/pipe': FIFOs are not allowed" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_image_push_rejects_other_files(invoke: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    result = invoke("image", "push", "x", str(path))
    assert result.exit_code == 1
    assert "is not an ELF file, a .tar file or a directory" in result.stderr


def test_image_ls_and_rm(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("image", "ls").stdout.splitlines()[1].split()[:4] == [
        "hello", "latest", "x86_64", "12.05Ki"]
    assert invoke("create", "w", "--image", "hello").exit_code == 0
    busy = invoke("image", "rm", "hello")
    assert busy.exit_code == 1 and "FAILED_PRECONDITION" in busy.stderr
    assert invoke("delete", "w").exit_code == 0
    assert invoke("image", "rm", "hello").exit_code == 0
    assert "hello:latest" not in fake.images


def test_run_streams_output_and_exits_with_guest_code(
    invoke: Invoke, fake: FakeController
) -> None:
    fake.exit_code = 7
    result = invoke("run", "job", "--image", "hello", "--", "arg1")
    assert result.stdout == "hello\nworld\n"
    assert result.exit_code == 7
    assert fake.partitions["job"].status.exit_code == 7
    assert list(fake.partitions["job"].spec.args) == ["arg1"]


@pytest.mark.parametrize(("pending_s", "said"), [(0.1, 0), (2.5, 1)],
                         ids=["placed-quickly-quiet", "stays-pending-said-once"])
def test_run_rm_generated_name_and_pending_reason(
    invoke: Invoke, fake: FakeController, monkeypatch: pytest.MonkeyPatch,
    pending_s: float, said: int,
) -> None:
    from controller.cli import run as run_module

    monkeypatch.setattr(run_module, "PENDING_QUIET_S", 0.2)
    fake.start_phase = Phase.PARTITION_PHASE_PENDING
    fake.start_reason = "0/2 nodes available: insufficient memory"

    def schedule_soon() -> None:
        import threading
        import time

        def later() -> None:
            time.sleep(pending_s)
            for part in list(fake.partitions.values()):
                part.status.phase = Phase.PARTITION_PHASE_RUNNING
                fake._put(part)

        threading.Thread(target=later, daemon=True).start()

    schedule_soon()
    result = invoke("run", "--rm", "--image", "hello")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("Pending: 0/2 nodes available") == said
    assert len(fake.deleted) == 1 and fake.deleted[0].startswith("hello-")
    assert len(fake.deleted[0]) == len("hello-") + 5
    assert fake.partitions == {}


def test_run_interactive_sends_stdin(invoke: Invoke, fake: FakeController) -> None:
    result = invoke("run", "cat", "-i", "--image", "hello", input=b"typed input")
    assert result.exit_code == 0, result.stderr
    assert fake.partitions["cat"].spec.stdin
    import time

    deadline = time.monotonic() + 2
    while bytes(fake.stdin) != b"typed input" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bytes(fake.stdin) == b"typed input"


def test_run_failed_partition(invoke: Invoke, fake: FakeController) -> None:
    fake.start_phase = Phase.PARTITION_PHASE_FAILED
    fake.start_reason = "bad image: not a static ELF"
    result = invoke("run", "bad", "--image", "hello")
    assert result.exit_code == 1
    assert "error: bad failed: bad image: not a static ELF" in result.stderr


def test_start_stop_wait(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello", "--no-start").exit_code == 0
    started = invoke("start", "w", "--wait", "--timeout", "5s")
    assert started.exit_code == 0, started.stderr
    assert "Running" in started.stdout
    stopped = invoke("stop", "w", "--wait")
    assert stopped.exit_code == 0 and "Off" in stopped.stdout


def test_start_wait_times_out_saying_where_it_is_stuck(
    invoke: Invoke, fake: FakeController
) -> None:
    assert invoke("create", "w", "--image", "hello", "--no-start").exit_code == 0
    fake.start_phase = Phase.PARTITION_PHASE_PENDING
    fake.start_reason = "no node has 8Gi free"
    result = invoke("start", "w", "--wait", "--timeout", "0.3")
    assert result.exit_code == 1
    assert "still Pending (no node has 8Gi free)" in result.stderr


def test_delete_wait(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello").exit_code == 0
    result = invoke("delete", "w", "--force", "--wait")
    assert result.exit_code == 0 and "deleted" in result.stdout
    assert invoke("delete", "w").exit_code == 1


def test_logs(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello").exit_code == 0
    assert invoke("logs", "w").stdout == "hello\nworld\n"


def test_nodes_and_node_commands(invoke: Invoke, fake: FakeController) -> None:
    wide = invoke("nodes", "-o", "wide").stdout.splitlines()
    assert "LABELS" in wide[0] and "zone=a" in wide[1]
    assert invoke("node", "cordon", "node-1").exit_code == 0
    assert fake.nodes["node-1"].spec.cordoned
    assert "yes" in invoke("nodes").stdout.splitlines()[1]
    assert invoke("node", "uncordon", "node-1").exit_code == 0
    assert not fake.nodes["node-1"].spec.cordoned
    assert json.loads(invoke("node", "get", "node-2", "-o", "json").stdout)["name"] == "node-2"


def test_drain(invoke: Invoke, fake: FakeController) -> None:
    ok = invoke("node", "drain", "node-1", "--deadline", "10m")
    assert ok.exit_code == 0
    assert ok.stdout.splitlines() == ["[2 left] cordoned; moving 2 partitions",
                                      "[1 left] web stopped", "[0 left] node is empty",
                                      "node node-1 drained"]
    fake.drain_fails = True
    failed = invoke("node", "drain", "node-1")
    assert failed.exit_code == 1
    assert "drain of node-1 failed: deadline passed: db still bound" in failed.stderr
    assert "db: could not move: 0/2 nodes available" in failed.stderr


def test_node_rm(invoke: Invoke, fake: FakeController) -> None:
    alive = invoke("node", "rm", "node-1")
    assert alive.exit_code == 1 and "is alive" in alive.stderr
    assert "Traceback" not in alive.stderr and len(alive.stderr.strip().splitlines()) == 1
    fake.nodes["node-1"].status.state = types_pb2.NODE_STATE_NOT_READY
    fake._put(make_partition("web"))  # bound to node-1
    holding = invoke("node", "rm", "node-1")
    assert holding.exit_code == 1 and "still holds" in holding.stderr
    forced = invoke("node", "rm", "node-1", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert forced.stdout.splitlines() == ["evicted web", "node node-1 removed"]
    assert "node-1" not in fake.nodes


def test_events_and_watch(invoke: Invoke, fake: FakeController) -> None:
    fake.end_watches()  # the watch ends once it sent what it has
    listed = invoke("events", "--object", "web", "-o", "json")
    assert [e["reason"] for e in json.loads(listed.stdout)] == ["Scheduled"]
    watched = invoke("events", "-w", "-o", "json")
    reasons = [json.loads(line)["reason"] for line in watched.stdout.splitlines()]
    assert reasons == ["Scheduled", "NodeLost"]  # the replayed one is not printed twice
    table = invoke("events", "-w").stdout.splitlines()
    assert table[0].split() == ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert len(table) == 3


def test_explain(invoke: Invoke, fake: FakeController) -> None:
    assert invoke("create", "web", "--image", "hello").exit_code == 0
    text = invoke("explain", "web").stdout
    assert "* node-2" in text and "InsufficientMemory" in text
    data = json.loads(invoke("explain", "web", "-o", "json").stdout)
    assert data["chosen_node"] == "node-2" and len(data["verdicts"]) == 2
    dry = invoke("explain", "--dry-run", "--image", "hello", "--memory", "8Gi",
                 "--node-selector", "zone=a", "--anti-affinity", "g")
    assert dry.exit_code == 0, dry.stderr
    spec = fake.explain_requests[-1].dry_run
    assert (spec.memory_bytes, dict(spec.node_selector), spec.anti_affinity_group) == (
        8 << 30, {"zone": "a"}, "g")


def test_audit_records_are_apart_from_events(invoke: Invoke, fake: FakeController) -> None:
    fake.events.append(types_pb2.Event(id="9", kind="Audit", object="web", reason="StopPartition",
                                       message="token:abc123(operator) from ipv4:10.0.0.9:5: "
                                               "StopPartition web -> ok"))
    plain = invoke("events")
    assert plain.exit_code == 0 and "StopPartition" not in plain.stdout
    audit = invoke("events", "--audit")
    assert audit.exit_code == 0
    assert "StopPartition" in audit.stdout and "abc123" in audit.stdout
    assert "Scheduled" not in audit.stdout and "web" in audit.stdout
