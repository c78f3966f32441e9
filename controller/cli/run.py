"""`viridian run`: create, start, stream the console, exit with the guest's exit code."""

from __future__ import annotations

import re
import secrets
import string
import sys
import threading
import time
from collections.abc import Iterator

import click
import grpc
from viridian.v1 import controller_pb2, controller_pb2_grpc, types_pb2

from controller.cli._spec import GuestArgsCommand, build_spec, spec_options
from controller.cli._wait import wait_for
from controller.cli.app import get_client
from controller.cli.errors import CliError
from controller.cli.partitions import follow_logs

__all__ = ["COMMANDS", "generated_name"]

Phase = types_pb2.PartitionPhase
P = types_pb2.Partition

# Phases in which the guest has run (or cannot run): the console is worth reading.
_STARTED = {
    Phase.PARTITION_PHASE_RUNNING,
    Phase.PARTITION_PHASE_PAUSED,
    Phase.PARTITION_PHASE_STOPPING,
    Phase.PARTITION_PHASE_OFF,
    Phase.PARTITION_PHASE_FAILED,
    Phase.PARTITION_PHASE_LOST,
}
_ENDED = {Phase.PARTITION_PHASE_OFF, Phase.PARTITION_PHASE_FAILED, Phase.PARTITION_PHASE_LOST}


def generated_name(image: str) -> str:
    """"My_Image:v1" -> "my-image-k3x9q": a DNS label from the image's name (its tag or
    digest dropped) and 5 random chars."""
    image = image.partition("@")[0].partition(":")[0]
    base = re.sub(r"[^a-z0-9-]+", "-", image.lower()).strip("-")[:56] or "run"
    alphabet = string.ascii_lowercase + string.digits
    return f"{base}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


def _stdin_chunks(name: str) -> Iterator[controller_pb2.StdinChunk]:
    source = sys.stdin.buffer
    yield controller_pb2.StdinChunk(name=name)
    while True:
        data = source.read1(64 * 1024) if hasattr(source, "read1") else source.read(64 * 1024)
        if not data:
            break
        yield controller_pb2.StdinChunk(data=data)
    yield controller_pb2.StdinChunk(close=True)


def _attach_stdin(stub: controller_pb2_grpc.ControllerStub, name: str) -> threading.Thread:
    def send() -> None:
        try:
            stub.SendStdin(_stdin_chunks(name))
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code != grpc.StatusCode.CANCELLED:
                detail = err.details() if isinstance(err, grpc.Call) else str(err)
                click.echo(f"warning: stdin: {detail}", err=True)

    thread = threading.Thread(target=send, name="stdin", daemon=True)
    thread.start()
    return thread


PENDING_QUIET_S = 1.0


def _wait_started(stub: controller_pb2_grpc.ControllerStub, name: str) -> P:
    said_pending = False
    since = time.monotonic()

    def report(p: P) -> None:
        # Only a partition that stays Pending is worth a word (placement takes milliseconds);
        # the reason then says why, e.g. "0/2 nodes available: 2 not enough memory".
        nonlocal said_pending
        pending = p.status.phase == Phase.PARTITION_PHASE_PENDING
        if pending and not said_pending and time.monotonic() - since > PENDING_QUIET_S:
            said_pending = True
            click.echo(f"{name} is Pending: {p.status.reason or 'waiting for a node'}", err=True)

    def done(p: P | None) -> bool:
        if p is None:
            raise CliError(f"partition {name} was deleted")
        return p.status.phase in _STARTED

    found = wait_for(stub, name, done, timeout=None, on_update=report)
    assert found is not None
    return found


def _wait_ended(stub: controller_pb2_grpc.ControllerStub, name: str) -> P:
    def done(p: P | None) -> bool:
        if p is None:
            raise CliError(f"partition {name} was deleted")
        s = p.status
        return s.phase in (Phase.PARTITION_PHASE_FAILED, Phase.PARTITION_PHASE_LOST) or (
            s.phase == Phase.PARTITION_PHASE_OFF and s.has_exit_code
        )

    found = wait_for(stub, name, done, timeout=None)
    assert found is not None
    return found


def _outcome(p: P) -> int:
    s = p.status
    if s.phase == Phase.PARTITION_PHASE_FAILED:
        click.echo(f"error: {p.name} failed: {s.reason or 'no reason given'}", err=True)
        return 1
    if s.phase == Phase.PARTITION_PHASE_LOST:
        click.echo(f"error: {p.name} is Lost: {s.reason or 'its node is gone'}", err=True)
        return 1
    return s.exit_code


@click.command("run", cls=GuestArgsCommand)
@click.argument("name", required=False)
@spec_options(image_required=True)
@click.option("--rm", "remove", is_flag=True, help="Delete the partition when it ends.")
@click.option("-i", "--interactive", is_flag=True, help="Attach this terminal's stdin.")
@click.argument("args", nargs=-1)
@click.pass_context
def run_cmd(ctx: click.Context, /, name: str | None, args: tuple[str, ...], remove: bool,
            interactive: bool, **flags: object) -> None:
    """Run IMAGE as a new partition, stream its output, exit with its exit code.

    Pass the guest's arguments after `--`: viridian run --image hello -- -v world
    """
    spec = build_spec(args=args, start=True, stdin=interactive, **flags)  # type: ignore[arg-type]
    name = name or generated_name(spec.image)
    stub = get_client(ctx).stub
    stub.CreatePartition(controller_pb2.CreatePartitionRequest(name=name, spec=spec))
    code = 1
    try:
        part = _wait_started(stub, name)
        if part.status.phase not in _ENDED or part.status.has_exit_code:
            if interactive:
                _attach_stdin(stub, name)
            follow_logs(ctx, name, follow=True)
        code = _outcome(_wait_ended(stub, name))
    except KeyboardInterrupt:
        click.echo("", err=True)
        code = 130
    finally:
        if remove:
            _remove(stub, name)
    sys.stdout.flush()
    ctx.exit(code)


def _remove(stub: controller_pb2_grpc.ControllerStub, name: str) -> None:
    try:
        stub.DeletePartition(controller_pb2.DeletePartitionRequest(name=name, force=True),
                             timeout=10)
    except grpc.RpcError as err:
        detail = err.details() if isinstance(err, grpc.Call) else str(err)
        click.echo(f"warning: could not delete {name}: {detail}", err=True)


COMMANDS = [run_cmd]
