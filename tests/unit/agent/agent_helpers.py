"""Helpers for the node agent tests: an image for a guest binary, a real Supervisor with
collected reports (Node), and a running Agent."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent_fakes import wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.agent import Agent, AgentConfig
from node_agent.clock import Clock
from node_agent.images import DEFAULT_LIMIT_BYTES, ImageCache
from node_agent.states import StateReceiver
from node_agent.supervisor import Supervisor


def image_of(path: Path) -> tuple[pb.Image, bytes]:
    content = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    return pb.Image(name=path.name, digest=digest, entrypoint=f"/{path.name}",
                    format="elf", size_bytes=len(content)), content


class Node:
    """A real Supervisor on a run dir; pulls serve the guest binaries; reports collected."""

    def __init__(self, run_dir: Path, bins: Path,
                 cache_limit: int = DEFAULT_LIMIT_BYTES) -> None:
        self.run_dir = run_dir
        self.bins = bins
        self.images = ImageCache(run_dir / "images", cache_limit)
        self.blobs: dict[str, bytes] = {}   # content served by digest (else the guest file)
        self.pulls: list[str] = []          # digests pulled, in order
        self.sup = Supervisor(run_dir, self.images, self._pull, self._pull_state, "node-1")
        self.sent: list[apb.AgentMessage] = []
        self.sup.send = self.sent.append

    async def _pull(self, image: pb.Image, dest: Path) -> None:
        self.pulls.append(image.digest)
        content = self.blobs.get(image.digest)
        if content is None:
            content = (self.bins / image.entrypoint.lstrip("/")).read_bytes()
        dest.write_bytes(content)

    async def _pull_state(self, name: str, ref: pb.StateRef, rx: StateReceiver) -> None:
        raise AssertionError("no state pulls in these tests")

    def reports(self, name: str | None = None) -> list[apb.PartitionReport]:
        return [m.report for m in self.sent if m.HasField("report")
                and (name is None or m.report.name == name)]

    def assign(self, name: str, guest: str, epoch: int = 1, stdin: bool = True) -> None:
        image, _ = image_of(self.bins / guest)
        self.sup.assign(apb.Assignment(name=name, epoch=epoch, image=image,
                                       spec=pb.PartitionSpec(image=image.name, stdin=stdin)))

    def command(self, name: str, kind: apb.PartitionCommand.Kind.ValueType, epoch: int = 1,
                checkpoint: str = "", purge: bool = False) -> None:
        self.sup.command(apb.PartitionCommand(name=name, epoch=epoch, kind=kind,
                                              checkpoint=checkpoint, purge=purge))

    async def close(self) -> None:
        await self.sup.close()
        for handle in self.sup.workers.adopt():
            if handle.poll() is None:
                await asyncio.to_thread(handle.stop, 2.0)


def last(node: Node, name: str) -> apb.PartitionReport:
    reports = node.reports(name)
    assert reports, f"no report for {name}"
    return reports[-1]


async def running(node: Node, name: str, guest: str = "worker_stdin", epoch: int = 1) -> None:
    """Assigned, reported Running, and the guest started (its control socket is up: the
    worker answers lifecycle requests only from then on)."""
    node.assign(name, guest, epoch)
    await wait_for(lambda: bool(node.reports(name)) and last(node, name).phase ==
                   pb.PARTITION_PHASE_RUNNING, f"{name} to run", timeout=20.0)
    handle = node.sup.local[name].handle
    assert handle is not None
    await wait_for(lambda: b"ready\n" in handle.read_console(0)[0], f"{name}'s guest", 20.0)


@asynccontextmanager
async def running_agent(run_dir: Path, addresses: list[str],
                        clock: Clock | None = None, **settings: Any) -> AsyncIterator[Agent]:
    """The real Agent (real Supervisor, no partitions) talking to `addresses` (settings:
    more AgentConfig fields)."""
    config = AgentConfig(controllers=addresses, name="node-1", vcpus=1,
                         memory_bytes=1 << 30, run_dir=run_dir, **settings)
    agent = Agent(config, ["x86_64"], clock=clock) if clock else Agent(config, ["x86_64"])
    task = asyncio.create_task(agent.run(), name="agent")
    try:
        yield agent
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15.0)
