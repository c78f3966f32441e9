"""Run one static ELF directly: ``python -m node_agent.runtime [options] IMAGE -- ARGS...``."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .console import TerminalConsole
from .machine import Machine
from .spec import PartitionSpec

_UNITS = {"": 1, "k": 1 << 10, "ki": 1 << 10, "m": 1 << 20, "mi": 1 << 20, "g": 1 << 30,
          "gi": 1 << 30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([a-zA-Z]*)", text.strip())
    if not match or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 256Mi, 1Gi)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node_agent.runtime")
    parser.add_argument("--vcpus", type=int, default=1)
    parser.add_argument("--memory", type=parse_size, default=256 << 20)
    parser.add_argument("--root", type=Path, help="guest root dir; IMAGE is then a guest path")
    parser.add_argument("--env", action="append", default=[], metavar="K=V")
    parser.add_argument("image")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    env = tuple((k, v) for k, _, v in (e.partition("=") for e in ns.env) if k)
    tmp: str | None = None
    if ns.root is None:
        tmp = tempfile.mkdtemp(prefix="viridian-root-")
        entry = "/" + os.path.basename(ns.image)
        shutil.copy(ns.image, tmp + entry)
        root = Path(tmp)
    else:
        root, entry = ns.root, ns.image
    try:
        spec = PartitionSpec(name="debug", root=root, entrypoint=entry, args=tuple(args),
                             env=env, vcpus=ns.vcpus, memory_bytes=ns.memory)

        def on_event(reason: str, message: str) -> None:
            print(f"[{reason}] {message}", file=sys.stderr)

        status = Machine(spec, TerminalConsole(), on_event).run()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if status.failed_reason is not None:
        print(f"partition failed: {status.failed_reason}", file=sys.stderr)
        return 255
    return status.exit_code if status.exit_code is not None else 255


if __name__ == "__main__":
    sys.exit(main())
