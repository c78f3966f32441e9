"""Build node_agent/runtime/_syscall_hook (the syscall fast path, issue 15) with the C compiler.

Run by the Makefile as `.venv/bin/python tools/build_syscall_hook.py` after the venv is
installed. It needs only a C compiler (cc, or $CC) and this interpreter's headers: the
module does not link libunicorn (the runtime passes it the library's function addresses).
The extension lands next to its source as `_syscall_hook<EXT_SUFFIX>` (git-ignored).
If it cannot be built, this prints one warning line and exits 0: the runtime then keeps
the ctypes syscall path (node_agent/runtime/syscall_fastpath.py says so once, when loaded).

Options: --check (exit 1 unless the built module is present and newer than its source).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "node_agent" / "runtime" / "_syscall_hook.c"
FLAGS = ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", "-std=c11",
         "-fno-strict-aliasing"]


def target() -> Path:
    """Where the built extension goes: importable as node_agent.runtime._syscall_hook."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return SOURCE.with_name("_syscall_hook" + suffix)


def up_to_date() -> bool:
    out = target()
    return out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime


def build() -> Path:
    """Compile the extension (into a temporary file, then renamed: never half-written)."""
    out = target()
    tmp = out.with_name(out.name + ".tmp")
    cc = shlex.split(os.environ.get("CC", "cc"))
    include = sysconfig.get_paths()["include"]
    cmd = [*cc, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(tmp)]
    subprocess.run(cmd, check=True)
    os.replace(tmp, out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check it is built")
    args = parser.parse_args()
    if args.check:
        return 0 if up_to_date() else 1
    try:
        out = build()
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"build_syscall_hook: WARNING: could not build the syscall fast path ({exc}); "
              "the runtime will use the slower ctypes path", file=sys.stderr, flush=True)
        return 0
    print(f"build_syscall_hook: built {out.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
