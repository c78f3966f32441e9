"""--log-format json: one JSON object a line with the structured fields; the real controller
and agent processes log that way (and the controller serves /metrics from --metrics-listen)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import pytest
from inproc import replica, wait_for
from prometheus_client.parser import text_string_to_metric_families
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller import logs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_context(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("agent/n1", "json", "debug", stream=out, node="n1")
    log = logging.getLogger("viridian.test")

    async def work() -> None:
        with logs.log_context(partition="web", epoch=7, request_id="r-1"):
            await asyncio.create_task(asyncio.sleep(0))   # a child task inherits it
            log.info("saved %s", "web")
        log.debug("outside")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    asyncio.run(work())
    lines = [x for x in map(json.loads, out.getvalue().splitlines())
             if x["logger"] == "viridian.test"]   # asyncio logs at debug too
    assert [x["message"] for x in lines] == ["saved web", "outside", "failed"]
    first = lines[0]
    assert (first["node"], first["partition"], first["epoch"], first["request_id"]) == \
        ("n1", "web", 7, "r-1")
    assert first["level"] == "INFO" and first["component"] == "agent/n1"
    assert first["logger"] == "viridian.test" and first["time"].endswith("Z")
    assert "partition" not in lines[1] and lines[1]["node"] == "n1"
    assert "ValueError: boom" in lines[2]["exception"]


def test_text_lines_append_the_fields(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("controller", "text", "info", stream=out)
    with logs.log_context(node="n2", partition="db"):
        logging.getLogger("x").warning("lost")
    logging.getLogger("x").debug("hidden")
    text = out.getvalue()
    assert text.count("\n") == 1
    assert " controller WARNING x: lost [node=n2 partition=db]" in text


def test_levels_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRIDIAN_LOG", "warn")
    assert logs.resolve_level(None) == "WARNING"
    assert logs.resolve_level("debug") == "DEBUG"
    monkeypatch.delenv("VIRIDIAN_LOG")
    assert logs.resolve_level(None) == "INFO"
    with pytest.raises(ValueError, match="VIRIDIAN_LOG"):
        logs.resolve_level("verbose")


def _lines_until(stream: IO[bytes], want: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """JSON lines read from a process until one satisfies `want`."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    os.set_blocking(stream.fileno(), False)
    buf = b""
    while time.monotonic() < deadline:
        chunk = stream.read()
        if chunk:
            buf += chunk
            *done, buf = buf.split(b"\n")
            for raw in done:
                seen.append(json.loads(raw))   # every line must be JSON
                if want(seen[-1]):
                    return seen
        else:
            time.sleep(0.05)
    raise AssertionError(f"no wanted line in time; got {seen}")


def _cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'proto'}"}
    env.pop("VIRIDIAN_LOG", None)
    return subprocess.Popen([sys.executable, "-m", "controller.cli", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_a_controller_process_logs_json_and_serves_metrics(etcd_endpoint: str, prefix: str,
                                                           tmp_path: Path) -> None:
    proc = _cli("controller", "--listen", "127.0.0.1:0", "--etcd", etcd_endpoint,
                "--prefix", prefix, "--insecure", "--data-dir", str(tmp_path),
                "--log-format", "json", "--metrics-listen", "127.0.0.1:0")
    try:
        assert proc.stderr is not None
        lines = _lines_until(proc.stderr, lambda x: x["message"].startswith("metrics at "))
        assert all(x["component"] == "controller" for x in lines)
        url = lines[-1]["message"].removeprefix("metrics at ")
        with urllib.request.urlopen(url, timeout=10) as resp:
            names = {m.name for m in text_string_to_metric_families(resp.read().decode())}
        assert {"viridian_etcd_txn_seconds", "viridian_partitions"} <= names
    finally:
        _stop(proc)


def test_an_agent_process_logs_its_node_in_json(tmp_path: Path) -> None:
    proc = _cli("agent", "--controller", "127.0.0.1:1", "--name", "json-node", "--insecure",
                "--run-dir", str(tmp_path), "--log-format", "json", "--log-level", "info")
    try:
        assert proc.stderr is not None
        lines = _lines_until(proc.stderr, lambda x: "no session" in x["message"])
        assert lines[-1]["node"] == "json-node" and lines[-1]["level"] == "WARNING"
        assert lines[-1]["component"] == "agent/json-node"
    finally:
        _stop(proc)


def test_api_calls_log_with_their_request_id(etcd_endpoint: str, prefix: str,
                                             restore_logging: None) -> None:
    """The audit line of a mutating call carries the caller's x-request-id (or a fresh id)."""
    out = io.StringIO()
    logs.configure("controller", "json", "info", stream=out)
    gen = replica(etcd_endpoint, prefix)
    api = next(gen)
    try:
        for name, metadata in (("given", [("x-request-id", "req-42")]),
                               ("fresh", []), ("bad", [("x-request-id", "x" * 65)])):
            with pytest.raises(grpc.RpcError):   # no such image: refused, audited all the same
                api.stub.CreatePartition(cpb.CreatePartitionRequest(
                    name=name, spec=pb.PartitionSpec(image="none")), metadata=metadata)

        def audits() -> dict[str, dict[str, Any]]:
            lines = [json.loads(x) for x in out.getvalue().splitlines()]
            return {x["message"].split("CreatePartition ")[1].split(" ")[0]: x for x in lines
                    if x["logger"] == "viridian.audit" and "CreatePartition" in x["message"]}

        found = wait_for(lambda: len(audits()) == 3 and audits(), what="three audit lines")
    finally:
        next(gen, None)
    assert found["given"]["request_id"] == "req-42"
    assert re.fullmatch(r"[0-9a-f]{16}", found["fresh"]["request_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", found["bad"]["request_id"])


def test_text_lines_of_an_agent_do_not_repeat_its_node(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("agent/n1", "text", "info", stream=out, node="n1")
    logging.getLogger("y").warning("plain")
    with logs.log_context(partition="p"):
        logging.getLogger("y").warning("about p")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" agent/n1 WARNING y: plain")
    assert second.endswith(" agent/n1 WARNING y: about p [partition=p]")
