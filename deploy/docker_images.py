"""The images deploy/docker-compose.yml runs, built on this machine without an image registry.

    deploy/docker-images [--rebuild]      # prints the image tag (viridian:<content hash>)

1. Base: viridian-base:bookworm, a Debian bookworm root made with `debootstrap
   --variant=minbase` (python3 and python3-venv included) from this machine's apt mirror and
   `docker import`ed. The root's tarball is kept in .cache/docker/ so that a later import
   needs no download.
2. Wheels: every dependency of the project as a wheel (`pip wheel`, from this machine's
   package index), with the patched unicorn wheel tools/build_unicorn.py leaves in
   .cache/wheels/ in place of PyPI's, plus setuptools and wheel to build the project. Kept in
   .cache/docker/wheels-<hash of pyproject.toml and the unicorn wheel>/.
3. The image: deploy/Dockerfile on a build context of the project's sources and those wheels
   (installed offline), tagged viridian:<hash of the context and the base image's id>. A tag
   that exists already is reused: an unchanged tree builds nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["BASE_IMAGE", "apt_mirror", "build_all", "context_files", "context_hash",
           "ensure_base", "ensure_image", "ensure_wheels"]

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "docker"
BASE_IMAGE = "viridian-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
IMAGE_REPO = "viridian"
# What of the repository goes into the build context (deploy/Dockerfile copies these).
SOURCES = ("pyproject.toml", "README.md", "controller", "node_agent", "proto")


class ImageError(RuntimeError):
    """A step failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"docker-images: {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str], timeout: float = 1800, **kw: object) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise ImageError(f"{' '.join(cmd[:4])} … failed ({proc.returncode}):\n{tail}")
    return str(proc.stdout)


def image_id(ref: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return proc.stdout.strip() if proc.returncode == 0 else None


def apt_mirror(texts: Iterable[str]) -> str:
    """The Debian archive this machine's apt uses (deb822 `URIs:` or one-line `deb` entries),
    for the main archive (not -security); DEFAULT_MIRROR when none is found."""
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"^URIs:\s*(\S+)", line) or re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)",
                                                                line)
            if m and "security" not in m.group(1) and m.group(1).startswith(("http", "file")):
                if re.search(r"/debian/?$", m.group(1)):
                    return m.group(1).rstrip("/")
    return DEFAULT_MIRROR


def _sources_texts() -> list[str]:
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    out = []
    for p in paths:
        try:
            out.append(p.read_text())
        except OSError:
            continue
    return out


def ensure_base(rebuild: bool = False) -> str:
    """viridian-base:bookworm exists afterwards; returns its image id."""
    if not rebuild and (found := image_id(BASE_IMAGE)):
        return found
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"base-{SUITE}.tar"
    if rebuild or not tarball.exists():
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed (apt-get install debootstrap)")
        mirror = apt_mirror(_sources_texts())
        log(f"debootstrap {SUITE} from {mirror} (a few minutes)")
        with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
            root = Path(tmp) / "root"
            run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 SUITE, str(root), mirror])
            # apt's downloaded .debs are no use in the image.
            for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                deb.unlink()
            partial = tarball.with_suffix(".tar.part")
            run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
            partial.rename(tarball)
    log(f"docker import {tarball.name} as {BASE_IMAGE}")
    run(["docker", "import", "--change", "ENV LANG=C.UTF-8", str(tarball), BASE_IMAGE])
    found = image_id(BASE_IMAGE)
    if not found:
        raise ImageError(f"{BASE_IMAGE} missing after docker import")
    return found


def _patched_unicorn_wheel() -> Path | None:
    """The wheel tools/build_unicorn.py built for the current patches, if it is cached."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import build_unicorn
    finally:
        sys.path.pop(0)
    wheels = sorted((REPO / ".cache" / "wheels" / build_unicorn.patches_sha256()[:16])
                    .glob("unicorn-*.whl"))
    return wheels[-1] if wheels else None


def ensure_wheels() -> Path:
    """A directory of wheels: everything the project needs, installable with --no-index."""
    unicorn = _patched_unicorn_wheel()
    h = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    h.update(unicorn.read_bytes() if unicorn else b"stock unicorn")
    h.update(sys.version.split()[0].rsplit(".", 1)[0].encode())
    out = CACHE / f"wheels-{h.hexdigest()[:16]}"
    if (out / ".complete").exists():
        return out
    if unicorn is None:
        log("WARNING: no patched unicorn wheel in .cache/wheels (run `make venv`): "
            "the image gets PyPI's stock unicorn")
    log(f"pip wheel: the project's dependencies into {out.name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(REPO),
         "setuptools>=68", "wheel"], cwd=str(REPO))
    for whl in out.glob("viridian-*.whl"):
        whl.unlink()  # the image builds the project from its sources
    if unicorn is not None:
        for whl in out.glob("unicorn-*.whl"):
            whl.unlink()
        shutil.copy2(unicorn, out / unicorn.name)
    (out / ".complete").write_text("")
    return out


def context_files(wheels: Path) -> list[tuple[str, Path]]:
    """(path in the build context, file here) for every file of the context, sorted."""
    files: list[tuple[str, Path]] = [("deploy/Dockerfile", REPO / "deploy" / "Dockerfile")]
    for src in SOURCES:
        path = REPO / src
        if path.is_file():
            files.append((src, path))
            continue
        for f in path.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                files.append((f.relative_to(REPO).as_posix(), f))
    files += [(f"deploy/wheels/{w.name}", w) for w in wheels.glob("*.whl")]
    return sorted(files)


def context_hash(files: Sequence[tuple[str, Path]], base_id: str) -> str:
    h = hashlib.sha256(base_id.encode())
    for rel, path in files:
        h.update(rel.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def ensure_image(base_id: str, wheels: Path) -> str:
    """viridian:<hash> built from the current tree (or reused); returns the tag."""
    files = context_files(wheels)
    tag = f"{IMAGE_REPO}:{context_hash(files, base_id)[:16]}"
    if image_id(tag):
        return tag
    log(f"docker build {tag}")
    with tempfile.TemporaryDirectory(prefix="viridian-ctx-") as tmp:
        ctx = Path(tmp)
        for rel, path in files:
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, ctx / rel)
        (ctx / "deploy" / "wheels").mkdir(parents=True, exist_ok=True)
        run(["docker", "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}",
             "-f", str(ctx / "deploy" / "Dockerfile"), "-t", tag, str(ctx)],
            env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


def build_all(rebuild: bool = False) -> str:
    """Base, wheels and image; returns the image's tag."""
    base_id = ensure_base(rebuild)
    return ensure_image(base_id, ensure_wheels())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/docker-images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true",
                        help="debootstrap the base again even if it exists")
    parser.add_argument("--tag-latest", action="store_true",
                        help=f"also tag the image {IMAGE_REPO}:latest (the compose default)")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        print("error: docker is not installed", file=sys.stderr)
        return 1
    try:
        tag = build_all(args.rebuild)
        if args.tag_latest:
            run(["docker", "tag", tag, f"{IMAGE_REPO}:latest"])
    except (ImageError, subprocess.TimeoutExpired, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
