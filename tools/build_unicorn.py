"""Install a patched unicorn 2.1.4 (x86 only) into the running virtualenv.

Run by the Makefile as `.venv/bin/python tools/build_unicorn.py`, before `pip install -e`.

1. If the installed unicorn already carries our marker for this patch: nothing to do.
2. If .cache/wheels/<patch sha256[:16]>/ holds a wheel: force-reinstall it (no build).
3. Else download the sdist into .cache/ (reused if present), unpack it, apply
   tools/patches/unicorn-2.1.4-notdirty.patch, then unicorn-2.1.4-asyncstop.patch,
   unicorn-2.1.4-tlbsize.patch, unicorn-2.1.4-atomic.patch, unicorn-2.1.4-fpexcept.patch and
   unicorn-2.1.4-x87precise.patch, build libunicorn for x86 only with cmake + ninja
   (installed from PyPI into the venv when missing), drop the library into the sdist's
   prebuilt/ directory (its setup.py then packs it instead of building all
   architectures), add the marker file
   `unicorn/_viridian_patched`, build a wheel, cache it and force-reinstall it.
Any failure installs the stock wheel and prints one loud warning line.

Options: --force (rebuild even if cached), --stock (install the stock wheel, for
measurements). docs/unicorn-patch.md explains the patch and how to drop it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "2.1.4"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
PATCHES = [ROOT / "tools" / "patches" / f"unicorn-{VERSION}-{name}.patch"
           for name in ("notdirty", "asyncstop", "tlbsize", "atomic", "fpexcept",
                        "x87precise")]
PATCH = PATCHES[0]
SDIST = CACHE / f"unicorn-{VERSION}.tar.gz"
MARKER = "_viridian_patched"
LIB = "libunicorn.so.2"
PIP = [sys.executable, "-m", "pip"]
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def log(msg: str) -> None:
    print(f"build_unicorn: {msg}", flush=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def patches_sha256() -> str:
    """One digest over every patch (in order): the wheel cache key and the marker's."""
    if len(PATCHES) == 1:
        return sha256(PATCH)
    return hashlib.sha256(b"".join(sha256(p).encode() for p in PATCHES)).hexdigest()


def installed_marker() -> dict[str, str] | None:
    """The marker of the unicorn installed in this interpreter, found without importing it."""
    spec = importlib.util.find_spec("unicorn")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = Path(next(iter(spec.submodule_search_locations)))
    try:
        marker: dict[str, str] = json.loads((pkg / MARKER).read_text())
        if sha256(pkg / "lib" / LIB) != marker.get("lib_sha256"):
            return None
        return marker
    except (OSError, ValueError):
        return None


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run quietly; on failure raise with the tail of the output, which is all one needs."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-15:])
        raise RuntimeError(f"{Path(cmd[0]).name} ... exited {proc.returncode}:\n{tail}")


def pip_install_wheel(wheel: Path) -> None:
    run([*PIP, "install", "-q", "--force-reinstall", "--no-deps", str(wheel)])


def apply_patch(patch_text: str, root: Path) -> None:
    """Apply a unified diff (-p1) under root; hunks must match exactly (offsets allowed)."""
    files: list[tuple[str, list[tuple[int, list[str], list[str]]]]] = []
    lines = patch_text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            files.append((line[4:].split("\t")[0].strip().split("/", 1)[1], []))
        elif (m := HUNK.match(line)) is not None:
            old: list[str] = []
            new: list[str] = []
            n_old, n_new = int(m.group(2) or 1), int(m.group(3) or 1)
            i += 1
            while i < len(lines) and (len(old) < n_old or len(new) < n_new):
                body = lines[i]
                if body[:1] in (" ", "-", "\n"):
                    old.append(body[1:] or "\n")
                if body[:1] in (" ", "+", "\n"):
                    new.append(body[1:] or "\n")
                i += 1
            files[-1][1].append((int(m.group(1)) - 1, old, new))
            continue
        i += 1
    if not files:
        raise ValueError("patch contains no file")
    for rel, hunks in files:
        path = root / rel
        text = path.read_text().splitlines(keepends=True)
        shift = 0
        for start, old, new in hunks:
            want = start + shift
            hits = [p for p in range(len(text) - len(old) + 1) if text[p : p + len(old)] == old]
            if not hits:
                raise ValueError(f"hunk at line {start + 1} of {rel} does not apply")
            pos = min(hits, key=lambda p: abs(p - want))
            text[pos : pos + len(old)] = new
            shift += len(new) - len(old)
        path.write_text("".join(text))


def tool(name: str) -> str:
    """Path of cmake/ninja: the venv's, the system's, or installed from PyPI into the venv."""
    venv_bin = Path(sys.executable).parent
    for candidate in (venv_bin / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    log(f"{name} not found: installing it from PyPI into the virtualenv")
    run([*PIP, "install", "-q", name])
    return str(venv_bin / name)


def build_wheel(patch_sha: str, out_dir: Path) -> Path:
    CACHE.mkdir(exist_ok=True)
    if not SDIST.exists():
        log(f"downloading the unicorn {VERSION} sdist")
        run([*PIP, "download", "-q", "--no-deps", "--no-binary", ":all:",
             f"unicorn=={VERSION}", "-d", str(CACHE)])
    work = Path(tempfile.mkdtemp(prefix="unicorn-build-", dir=CACHE))
    try:
        with tarfile.open(SDIST) as tar:
            tar.extractall(work, filter="data")
        src = work / f"unicorn-{VERSION}"
        for patch in PATCHES:
            apply_patch(patch.read_text(), src)
        cmake, ninja = tool("cmake"), tool("ninja")
        build = src / "src" / "build_viridian"
        log("building libunicorn (x86 only)")
        run([cmake, "-S", str(src / "src"), "-B", str(build), "-G", "Ninja",
             f"-DCMAKE_MAKE_PROGRAM={ninja}", "-DCMAKE_BUILD_TYPE=Release",
             "-DUNICORN_ARCH=x86", "-DUNICORN_BUILD_TESTS=off"])
        run([cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)])
        # a library that does not load (e.g. an undefined symbol) must fall back too
        run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(build / LIB)!r})"])
        shutil.copy2(build / LIB, src / "prebuilt" / LIB)
        marker = {"unicorn": VERSION, "patch": ",".join(p.name for p in PATCHES),
                  "patch_sha256": patch_sha,
                  "lib_sha256": sha256(build / LIB), "archs": "x86"}
        (src / "unicorn" / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        with open(src / "MANIFEST.in", "a") as manifest:
            manifest.write(f"\ninclude unicorn/{MARKER}\n")
        shutil.rmtree(build)
        log("building the wheel")
        env = dict(os.environ, SETUPTOOLS_SCM_PRETEND_VERSION=VERSION)
        dist = work / "dist"
        run([*PIP, "wheel", "-q", "--no-deps", "-w", str(dist), str(src)], env=env)
        (wheel,) = dist.glob("unicorn-*.whl")
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / (wheel.name + ".part")
        shutil.copy2(wheel, tmp)
        tmp.rename(out_dir / wheel.name)
        return out_dir / wheel.name
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install_stock(reason: str) -> None:
    print(f"!!!!! WARNING: patched unicorn NOT installed ({reason}); using the stock "
          f"{VERSION} wheel: guests will run ~10x slower !!!!!", file=sys.stderr, flush=True)
    run([*PIP, "install", "-q", "--force-reinstall", "--no-deps", "--only-binary", ":all:",
         f"unicorn=={VERSION}"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--stock", action="store_true", help="install the stock wheel")
    args = parser.parse_args(argv)
    if args.stock:
        run([*PIP, "install", "-q", "--force-reinstall", "--no-deps", "--only-binary",
             ":all:", f"unicorn=={VERSION}"])
        log("stock unicorn installed")
        return 0
    patch_sha = patches_sha256()
    marker = installed_marker()
    if not args.force and marker and marker.get("patch_sha256") == patch_sha:
        log("patched unicorn already installed")
        return 0
    wheel_dir = CACHE / "wheels" / patch_sha[:16]
    wheels = [] if args.force else sorted(wheel_dir.glob("unicorn-*.whl"))
    try:
        wheel = wheels[0] if wheels else build_wheel(patch_sha, wheel_dir)
        pip_install_wheel(wheel)
        log(f"installed {wheel.name} (patch {patch_sha[:12]})")
    except Exception as exc:  # noqa: BLE001 - any failure falls back to the stock wheel
        install_stock(f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
