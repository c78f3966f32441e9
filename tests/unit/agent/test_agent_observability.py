"""The agent's gRPC health (SERVING only with a session and unfenced) and its Prometheus
metrics, scraped over HTTP from a real agent running a real partition."""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.request
from pathlib import Path

import grpc
from agent_fakes import FakeController, wait_for
from agent_helpers import image_of, running_agent
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from controller.logs import ContextFilter
from node_agent.agent import Agent

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(agent: Agent, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.state_server.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


def test_health_follows_the_session_and_the_fence(tmp_path: Path) -> None:
    async def scenario() -> None:
        ctl = FakeController(register_hangs=True)
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address]) as agent:
            await wait_for(lambda: agent.health.current is not None, "a first status")
            assert await health_of(agent) == NOT_SERVING   # never registered
            ctl.register_hangs = False
            status: list[int] = []

            async def poll() -> None:
                status.append(await health_of(agent))

            async def serving() -> bool:
                await poll()
                return status[-1] == SERVING

            await wait_for_async(serving, "SERVING with a session")
            assert await health_of(agent, "viridian.v1.StateSource") == SERVING
            # The controller goes silent: the session ends and the fence falls.
            ctl.acks, ctl.register_hangs = False, True
            await wait_for(lambda: agent.fence.fenced, "the fence", timeout=10.0)
            assert await health_of(agent) == NOT_SERVING
        await ctl.stop()

    asyncio.run(scenario())


def test_fenced_with_a_session_is_not_serving(tmp_path: Path) -> None:
    """Fenced while registered (the fence fell before the session noticed): NOT_SERVING;
    SERVING again once an ack moves the contact deadline (which lifts the fence)."""
    async def scenario() -> None:
        ctl = FakeController()
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address]) as agent:
            await wait_for(lambda: agent.serving(), "a session")
            contact = agent.fence.contact
            agent.fence.contact = lambda *args: False   # type: ignore[method-assign]
            agent.fence.fenced = True                   # as Fence.check() does
            assert not agent.serving()
            await agent.health.update()
            assert await health_of(agent) == NOT_SERVING
            agent.fence.contact = contact               # type: ignore[method-assign]
            status: list[int] = []

            async def serving() -> bool:
                status.append(await health_of(agent))
                return status[-1] == SERVING

            await wait_for_async(serving, "SERVING after the next ack")
            assert not agent.fence.fenced
        await ctl.stop()

    asyncio.run(scenario())


async def wait_for_async(check: object, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    assert callable(check)
    while not await check():
        assert loop.time() < deadline, f"{what} not met in time"
        await asyncio.sleep(0.05)


def kernel_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (fields 14 and 15), read here on its own."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(agent: Agent) -> dict[str, Metric]:
    assert agent.metrics_server is not None
    with urllib.request.urlopen(agent.metrics_server.url, timeout=10) as resp:
        text = resp.read().decode()
    return {m.name: m for m in text_string_to_metric_families(text)}


def sample(families: dict[str, Metric], name: str, suffix: str = "",
           **labels: str) -> float | None:
    for s in families[name].samples:
        if s.name == name + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


def test_metrics_of_a_running_partition(tmp_path: Path, guest_bins: Path) -> None:
    async def scenario() -> None:
        image, content = image_of(guest_bins / "worker_stdin")
        ctl = FakeController(images={image.digest: content})
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address],
                                 metrics_listen="127.0.0.1:0") as agent:
            await wait_for(lambda: ctl.in_session and bool(ctl.acked), "a session")
            before = await asyncio.to_thread(scrape, agent)
            types = {n: before[n].type for n in (
                "viridian_partition_cpu_seconds", "viridian_partition_memory_bytes",
                "viridian_partition_console_bytes", "viridian_partitions_running",
                "viridian_partition_restarts", "viridian_agent_image_pull_bytes",
                "viridian_agent_image_pull_seconds", "viridian_partition_save_seconds",
                "viridian_partition_restore_seconds", "viridian_partition_syscalls")}
            assert types == {
                "viridian_partition_cpu_seconds": "counter",
                "viridian_partition_memory_bytes": "gauge",
                "viridian_partition_console_bytes": "counter",
                "viridian_partitions_running": "gauge",
                "viridian_partition_restarts": "counter",
                "viridian_agent_image_pull_bytes": "counter",
                "viridian_agent_image_pull_seconds": "histogram",
                "viridian_partition_save_seconds": "histogram",
                "viridian_partition_restore_seconds": "histogram",
                "viridian_partition_syscalls": "counter",
            }
            assert sample(before, "viridian_partitions_running") == 0
            assert sample(before, "viridian_agent_image_pull_bytes", "_total") == 0

            ctl.send(apb.ControllerMessage(assign=apb.Assignment(
                name="p", epoch=1, image=image, spec=pb.PartitionSpec(stdin=True))))
            await wait_for(lambda: any(r.phase == pb.PARTITION_PHASE_RUNNING
                                       for r in ctl.reports), "the partition to run",
                           timeout=20.0)
            handle = agent.supervisor.local["p"].handle
            assert handle is not None
            await wait_for(lambda: b"ready\n" in handle.read_console(0)[0], "the guest", 20.0)
            # The worker's CPU as the kernel counts it, just before and after the scrape: the
            # metric must lie between (it is in clock ticks: a guest that did little may
            # still be at 0, so the bracket, not a positive value, is what is asserted).
            cpu_before = kernel_cpu_seconds(handle.pid)
            running = await asyncio.to_thread(scrape, agent)
            cpu_after = kernel_cpu_seconds(handle.pid)
            assert sample(running, "viridian_partitions_running") == 1
            assert sample(running, "viridian_agent_image_pull_bytes", "_total") == len(content)
            assert sample(running, "viridian_agent_image_pull_seconds", "_count") == 1
            cpu = sample(running, "viridian_partition_cpu_seconds", "_total", partition="p")
            assert cpu is not None and cpu_before <= cpu <= cpu_after
            rss = sample(running, "viridian_partition_memory_bytes", partition="p")
            assert rss is not None and rss > 1 << 20
            console = sample(running, "viridian_partition_console_bytes", "_total",
                             partition="p")
            assert console == len(b"ready\n")

            ctl.send(apb.ControllerMessage(stdin=apb.StdinData(name="p", data=b"echo me\n")))
            await wait_for(lambda: b"echo me" in handle.read_console(0)[0], "the echo")
            echoed = await asyncio.to_thread(scrape, agent)
            assert sample(echoed, "viridian_partition_console_bytes", "_total",
                          partition="p") == len(b"ready\necho me\n")
            assert sample(echoed, "viridian_partition_cpu_seconds", "_total",
                          partition="p") >= cpu   # type: ignore[operator]
            def calls(name: str) -> float | None:
                return sample(echoed, "viridian_partition_syscalls", "_total", partition="p",
                              arch="x86_64", syscall=name)

            assert calls("write") == 2           # "ready", then the echo (counted on entry)
            assert (calls("read") or 0) >= 1
            assert len([s for s in echoed["viridian_partition_syscalls"].samples
                        if s.name.endswith("_total")]) <= 10   # the top 10 only
            assert sample(echoed, "viridian_partition_restarts", "_total", partition="p") \
                is None   # launched once

            ctl.send(apb.ControllerMessage(command=apb.PartitionCommand(
                name="p", epoch=1, kind=apb.PartitionCommand.KIND_STOP)))
            await wait_for(lambda: not agent.supervisor.local["p"].running, "the stop", 20.0)
            ctl.send(apb.ControllerMessage(assign=apb.Assignment(
                name="p", epoch=2, image=image, spec=pb.PartitionSpec(stdin=True))))
            await wait_for(lambda: any(r.epoch == 2 and r.phase == pb.PARTITION_PHASE_RUNNING
                                       for r in ctl.reports), "the restart", timeout=20.0)
            again = await asyncio.to_thread(scrape, agent)
            assert sample(again, "viridian_partition_restarts", "_total", partition="p") == 1
        await ctl.stop()

    asyncio.run(scenario())


def test_log_lines_of_a_launch_carry_partition_and_epoch(tmp_path: Path) -> None:
    lines: list[tuple[str, object, object, object]] = []   # message, node, partition, epoch

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:   # no records kept: no frames
            lines.append((record.getMessage(), getattr(record, "node", None),
                          getattr(record, "partition", None), getattr(record, "epoch", None)))

    handler = Keep(logging.INFO)
    handler.addFilter(ContextFilter({"node": "node-1"}))
    logging.getLogger().addHandler(handler)

    def failed() -> list[tuple[str, object, object, object]]:
        return [x for x in lines if "launch of nodigest failed" in x[0]]

    async def scenario() -> None:
        ctl = FakeController()
        await ctl.start()
        async with running_agent(tmp_path / "run", [ctl.address]):
            await wait_for(lambda: ctl.in_session and bool(ctl.acked), "a session")
            ctl.send(apb.ControllerMessage(assign=apb.Assignment(
                name="nodigest", epoch=9, image=pb.Image(name="missing"))))
            await wait_for(lambda: any(r.name == "nodigest" and r.phase ==
                                       pb.PARTITION_PHASE_FAILED for r in ctl.reports),
                           "the failure reported")
        await ctl.stop()

    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger().removeHandler(handler)
    assert failed()[0][1:] == ("node-1", "nodigest", 9)
