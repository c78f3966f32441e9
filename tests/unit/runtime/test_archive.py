"""The strict unpacker (node_agent/runtime/archive.py) and its users: the image cache, the
push check and the saved writable layer.

The hole tests at the top each failed on the code before archive.py (tarfile's data/tar
filters, a push check with its own tar logic, a root check following host symlinks)."""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import io
import lzma
import os
import shutil
import stat
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from runtime_helpers import GuestBuilder, run_machine

from controller.errors import InvalidArgument
from controller.images import CheckedImage
from controller.images import check_image as check_image_file
from node_agent.images import ImageCache, ImagePullError
from node_agent.runtime.archive import (
    ArchiveError,
    Kind,
    Limits,
    MemberChecker,
    is_regular_file,
    open_root,
    unpack,
    validate,
)
from node_agent.runtime.fs import Sandbox
from node_agent.runtime.snapfiles import read_upper, write_upper


def check_image(name: str, fmt: str, entrypoint: str, content: bytes) -> CheckedImage:
    """The push check, from a file as the controller runs it."""
    with tempfile.NamedTemporaryFile(prefix="pushed-") as f:
        f.write(content)
        f.flush()
        return check_image_file(name, fmt, entrypoint, Path(f.name))


BUSYBOX = Path("/bin/busybox")


# -- building archives --------------------------------------------------------------------
@dataclass(frozen=True)
class E:
    """One archive entry to write: kind is file, dir, symlink, hardlink, chr, blk or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    pax: tuple[tuple[str, str], ...] = ()


TYPES = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def tar_of(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.pax_headers = dict(e.pax)
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
                continue
            info.type = TYPES[e.kind]
            info.linkname = e.target
            info.devmajor, info.devminor = 1, 3       # /dev/null's numbers
            tar.addfile(info)
    return buf.getvalue()


def digest_of(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


def tree(path: Path) -> dict[str, tuple[int, int, int, int, int, bytes]]:
    """Everything under ``path`` (never following links): mode, size, inode, links, mtime,
    and content (file data or link text)."""
    found: dict[str, tuple[int, int, int, int, int, bytes]] = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                body = Path(full).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.fsencode(os.readlink(full))
            else:
                body = b""
            found[os.path.relpath(full, path)] = (st.st_mode, st.st_size, st.st_ino,
                                                  st.st_nlink, st.st_mtime_ns, body)
    return found


def make_outside(base: Path) -> Path:
    """A canary directory next to the destination: nothing may ever change in it."""
    outside = base / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "canary").write_bytes(b"canary")
    (outside / "canary").chmod(0o600)
    (outside / "sub" / "deep").write_bytes(b"deep")
    return outside


def path_max_tar(up: int, entrypoint: bytes = b"") -> bytes:
    """The CVE-2025-4517 shape: directories with 247-byte names reached through one-letter
    symlinks, so the real path of a.../p/LLL is longer than PATH_MAX and os.path.realpath
    stops resolving there; LLL points back to the root, and 'escape' goes through it and
    then ``up`` levels above the root into 'outside', where a file is then written."""
    comp, steps = "d" * 247, "abcdefghijklmnop"
    entries: list[E] = []
    prefix = ""
    for letter in steps:
        entries += [E(prefix + comp, "dir", mode=0o755), E(prefix + letter, "symlink",
                                                          target=comp)]
        prefix += letter + "/"
    back = prefix + "l" * 254
    entries += [E(back, "symlink", target="../" * len(steps)),
                E("escape", "symlink", target=back + "/" + "../" * up + "outside"),
                E("escape/planted", data=b"planted")]
    if entrypoint:
        entries.append(E("bin/app", data=entrypoint, mode=0o755))
    return tar_of(entries)


def upper_tar(entries: list[E]) -> tuple[io.BytesIO, int]:
    data = tar_of(entries)
    return io.BytesIO(data), len(data)


# -- the holes, each reproduced on the old code first ------------------------------------------
def test_path_max_symlink_chain_plants_nothing_outside(tmp_path: Path) -> None:
    outside = make_outside(tmp_path)
    before = tree(outside)
    content = path_max_tar(up=3, entrypoint=BUSYBOX.read_bytes())  # root -> .tmp -> cache
    with pytest.raises(ImagePullError, match="parent 'a' is a symlink"):
        ImageCache(tmp_path / "cache").install(digest_of(content), "tar", "/bin/app", content)
    assert tree(outside) == before
    assert sorted(os.listdir(tmp_path)) == ["cache", "outside"]
    assert os.listdir(tmp_path / "cache") == []
    with pytest.raises(InvalidArgument, match="parent 'a' is a symlink"):
        check_image("app", "tar", "/bin/app", content)


def test_the_path_max_archive_really_escapes(tmp_path: Path) -> None:
    """The test archive is a working exploit: extracted by anything that follows its links
    it plants 'planted' in the sibling 'outside' directory. On this interpreter (3.11
    before 3.11.13) tarfile's "data" filter does not stop it either."""
    content = path_max_tar(up=1)
    outside = make_outside(tmp_path)
    (tmp_path / "root").mkdir()
    with tarfile.open(fileobj=io.BytesIO(content)) as tar:
        tar.extractall(tmp_path / "root", filter="fully_trusted")
    assert (outside / "planted").read_bytes() == b"planted"
    if (3, 11) <= sys.version_info[:2] and sys.version_info < (3, 11, 13):
        shutil.rmtree(tmp_path / "root")
        (outside / "planted").unlink()
        (tmp_path / "root").mkdir()
        with tarfile.open(fileobj=io.BytesIO(content)) as tar:
            tar.extractall(tmp_path / "root", filter="data")
        assert (outside / "planted").exists()


def test_path_max_symlink_chain_direct_unpack(tmp_path: Path) -> None:
    outside = make_outside(tmp_path)
    before = tree(outside)
    (tmp_path / "root").mkdir()
    fd = open_root(tmp_path / "root")
    try:
        with pytest.raises(ArchiveError):
            unpack(io.BytesIO(path_max_tar(up=1)), fd)
    finally:
        os.close(fd)
    assert tree(outside) == before


def test_upper_layer_hard_link_to_a_host_file_is_refused(tmp_path: Path) -> None:
    outside = make_outside(tmp_path)
    before = tree(outside)
    upper = tmp_path / "upper"
    upper.mkdir()
    canary = str(outside / "canary")
    for target in (canary, "../outside/canary"):
        src, length = upper_tar([E("keep", data=b"x"), E("evil", "hardlink", target=target,
                                                          mode=0o777)])
        with pytest.raises(ArchiveError, match="evil") as err:
            read_upper(src, length, str(upper))
        assert str(tmp_path) not in str(err.value)
        assert os.listdir(upper) == []
        assert tree(outside) == before


@pytest.mark.parametrize("kind", ["chr", "blk"])
def test_upper_layer_device_nodes_are_refused(tmp_path: Path, kind: str) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    src, length = upper_tar([E("dev", "dir", mode=0o755), E("dev/null", kind, mode=0o666)])
    with pytest.raises(ArchiveError, match="dev/null"):
        read_upper(src, length, str(upper))
    assert os.listdir(upper) == []


def test_upper_layer_fifos_travel_as_fifos(tmp_path: Path) -> None:
    """A guest's mkfifo leaves a FIFO in the writable layer: a saved state carries it (the
    runtime never opens it on the host), while an image still refuses one."""
    upper = tmp_path / "upper"
    upper.mkdir()
    src, length = upper_tar([E("run", "dir", mode=0o755), E("run/ctl", "fifo", mode=0o640)])
    read_upper(src, length, str(upper))
    st = os.lstat(upper / "run" / "ctl")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640


def elf_tar(*extra: E, first: bytes | None = None) -> bytes:
    return tar_of([E("bin/app", data=first or BUSYBOX.read_bytes(), mode=0o755), *extra])


@pytest.mark.parametrize("second", [
    E("bin/app", data=b"not an ELF", mode=0o755),
    E("./bin//app", data=b"not an ELF", mode=0o755),
    E("bin/app", "symlink", target="/etc/passwd"),
    E("bin/app", "dir", mode=0o755),
    E("bin", data=b"a file over the directory"),
], ids=["same-name", "same-normalised-name", "symlink", "dir-over-file", "file-over-dir"])
def test_duplicate_entries_are_refused_at_push(second: E) -> None:
    content = elf_tar(second)
    with pytest.raises(InvalidArgument) as err:
        check_image("app", "tar", "/bin/app", content)
    message = str(err.value)
    assert "duplicate entry" in message and "\n" not in message


def test_an_explicit_directory_after_its_implicit_creation_is_accepted() -> None:
    content = tar_of([E("bin/app", data=BUSYBOX.read_bytes(), mode=0o755),
                      E("bin", "dir", mode=0o755), E("bin/other", data=b"x")])
    # 'bin' was created implicitly by bin/app; one explicit 'bin' entry may claim it (a
    # second explicit one is a duplicate: REFUSED["duplicate-dir"])
    assert check_image("app", "tar", "/bin/app", content).entrypoint == "/bin/app"


def test_absolute_symlink_entrypoint_is_accepted_at_push_and_runs(
    tmp_path: Path, guest: GuestBuilder
) -> None:
    hello = guest("hello").read_bytes()
    content = tar_of([
        E("usr/bin/hello", data=hello, mode=0o755),
        E("bin", "symlink", target="/usr/bin"),                # a directory link, absolute
        E("usr/bin/sh", "symlink", target="/usr/bin/hello"),   # a file link, absolute
    ])
    for entry in ("/bin/hello", "/bin/sh"):
        assert check_image("img", "tar", entry, content).entrypoint == entry
    cache = ImageCache(tmp_path / "cache")
    digest = digest_of(content)
    assert cache.root_for(digest, "/bin/sh") is None
    root = cache.install(digest, "tar", "/bin/sh", content)
    assert cache.root_for(digest, "/bin/sh") == root
    assert cache.root_for(digest, "/bin/hello") == root
    run = run_machine(root, "/bin/sh", ("7",))
    assert run.status.exit_code == 7, run.status.failed_reason
    assert b"argc=2" in run.stdout and b"arg1=7" in run.stdout


def test_busybox_style_root_with_sh_linked_to_busybox(tmp_path: Path) -> None:
    content = tar_of([E("bin", "dir", mode=0o755),
                      E("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
                      E("bin/sh", "symlink", target="busybox"),
                      E("usr/bin/env", "symlink", target="/bin/busybox")])
    assert check_image("bb", "tar", "/usr/bin/env", content).entrypoint == "/usr/bin/env"
    root = ImageCache(tmp_path / "cache").install(digest_of(content), "tar", "/bin/sh",
                                                  content)
    run = run_machine(root, "/bin/sh", ("-c", "echo hi-from-sh"))
    assert run.status.exit_code == 0, run.status.failed_reason
    assert b"hi-from-sh" in run.stdout


BAD_IMAGES = {
    "absolute-name": [E("/bin/app", data=b"x")],
    "dotdot": [E("bin/../../app", data=b"x")],
    "device": [E("bin/app", data=b"x"), E("dev/sda", "blk")],
    "setuid": [E("bin/app", data=b"x", mode=0o4755)],
    "missing-entrypoint": [E("bin/other", data=b"x")],
    "link-out": [E("bin/app", data=b"x"), E("lib", "hardlink", target="/etc/shadow")],
}


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_a_failed_unpack_leaves_nothing_and_names_no_host_path(
    tmp_path: Path, case: str
) -> None:
    content = tar_of(BAD_IMAGES[case])
    cache_dir = tmp_path / "cache"
    cache = ImageCache(cache_dir)
    with pytest.raises(ImagePullError) as err:
        cache.install(digest_of(content), "tar", "/bin/app", content)
    message = str(err.value)
    assert str(tmp_path) not in message and "/tmp" not in message and "\n" not in message
    assert os.listdir(cache_dir) == []
    with pytest.raises(InvalidArgument) as refused:
        check_image("app", "tar", "/bin/app", content)
    assert str(tmp_path) not in str(refused.value) and "\n" not in str(refused.value)


def test_corrupt_content_leaves_no_tmp_dir(tmp_path: Path) -> None:
    content = elf_tar()[:1500]               # truncated in the middle of the file's data
    cache = ImageCache(tmp_path / "cache")
    with pytest.raises(ImagePullError, match="not a valid tar archive"):
        cache.install(digest_of(content), "tar", "/bin/app", content)
    assert os.listdir(tmp_path / "cache") == []


def test_root_for_does_not_follow_host_symlinks(tmp_path: Path) -> None:
    hostbin = tmp_path / "hostbin"
    hostbin.mkdir()
    (hostbin / "app").write_bytes(b"\x7fELF")
    cache = ImageCache(tmp_path / "cache")
    root = tmp_path / "cache" / ("0" * 64) / "root"
    root.mkdir(parents=True)
    (root / "bin").symlink_to(hostbin)       # absolute: inside the guest, /tmp/... is absent
    assert cache.root_for("sha256:" + "0" * 64, "/bin/app") is None
    (root / "bin").unlink()
    (root / "bin").symlink_to("../../hostbin")   # relative: clamped at the guest root
    assert cache.root_for("sha256:" + "0" * 64, "/bin/app") is None


# -- the rules, one by one ------------------------------------------------------------------
LONG = "n" * 256
REFUSED: dict[str, tuple[list[E], str]] = {
    "absolute": ([E("/etc/passwd", data=b"x")], "absolute name"),
    "dotdot": ([E("a/../../b", data=b"x")], "'..' in name"),
    "dotdot-dir": ([E("..", "dir")], "'..' in name"),
    "nul": ([E("a", data=b"x", pax=(("path", "a\0b"),))], "NUL in name"),
    "component-too-long": ([E(LONG, data=b"x")], "longer than 255 bytes"),
    "path-too-long": ([E("/".join(["p" * 200] * 21), data=b"x")], "longer than 4095 bytes"),
    "chr": ([E("null", "chr")], "device nodes"),
    "blk": ([E("sda", "blk")], "device nodes"),
    "fifo": ([E("pipe", "fifo")], "FIFOs"),
    "setuid": ([E("su", data=b"x", mode=0o4755)], "setuid"),
    "setgid": ([E("d", "dir", mode=0o2775)], "setgid"),
    "hardlink-absolute": ([E("a", "hardlink", target="/etc/shadow")], "absolute name"),
    "hardlink-dotdot": ([E("a", "hardlink", target="../x")], "'..' in name"),
    "hardlink-missing": ([E("a", "hardlink", target="b")], "not an earlier regular file"),
    "hardlink-later": ([E("a", "hardlink", target="b"), E("b", data=b"x")],
                       "not an earlier regular file"),
    "hardlink-to-dir": ([E("d", "dir"), E("a", "hardlink", target="d")],
                        "not an earlier regular file"),
    "hardlink-to-symlink": ([E("s", "symlink", target="x"), E("a", "hardlink", target="s")],
                            "not an earlier regular file"),
    "hardlink-through-symlink": ([E("d/f", data=b"x"), E("s", "symlink", target="d"),
                                  E("a", "hardlink", target="s/f")],
                                 "not an earlier regular file"),
    "duplicate-file": ([E("a", data=b"1"), E("a", data=b"2")], "duplicate entry"),
    "duplicate-dir": ([E("d", "dir"), E("d/", "dir")], "duplicate entry"),
    "dir-then-file": ([E("d", "dir"), E("d", data=b"x")], "duplicate entry"),
    "file-then-dir": ([E("d", data=b"x"), E("d", "dir")], "duplicate entry"),
    "symlink-over-file": ([E("a", data=b"x"), E("a", "symlink", target="b")],
                          "duplicate entry"),
    "under-symlink": ([E("s", "symlink", target="/etc"), E("s/passwd", data=b"x")],
                      "parent 's' is a symlink"),
    "under-relative-symlink": ([E("d", "dir"), E("s", "symlink", target="d"),
                                E("s/f", data=b"x")], "parent 's' is a symlink"),
    "under-file": ([E("f", data=b"x"), E("f/g", data=b"x")], "parent 'f' is a regular file"),
    "empty-symlink": ([E("s", "symlink", target="")], "empty symlink target"),
    "long-symlink": ([E("s", "symlink", target="t" * 4096)], "longer than 4095 bytes"),
    "root-as-file": ([E(".", data=b"x")], "names the root"),
    "root-twice": ([E("./", "dir"), E(".", "dir")], "duplicate entry for the root"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_members(tmp_path: Path, case: str) -> None:
    entries, reason = REFUSED[case]
    content = tar_of(entries)
    with pytest.raises(ArchiveError, match=reason) as err:
        validate(io.BytesIO(content))
    assert "\n" not in str(err.value)
    outside = make_outside(tmp_path)
    before = tree(outside)
    (tmp_path / "root").mkdir()
    fd = open_root(tmp_path / "root")
    try:
        with pytest.raises(ArchiveError, match=reason):
            unpack(io.BytesIO(content), fd)
    finally:
        os.close(fd)
    assert tree(outside) == before


def test_member_count_and_size_are_bounded() -> None:
    many = tar_of([E(f"f{i}", data=b"x") for i in range(11)])
    validate(io.BytesIO(many), Limits(max_members=11))
    with pytest.raises(ArchiveError, match="more than 10 members"):
        validate(io.BytesIO(many), Limits(max_members=10))
    big = tar_of([E("a", data=b"x" * 3000), E("b", data=b"y" * 3000)])
    with pytest.raises(ArchiveError, match="larger than"):
        validate(io.BytesIO(big), Limits(max_bytes=5000))
    bomb = gzip.compress(tar_of([E("z", data=bytes(1 << 20))]))
    assert len(bomb) < 5000
    with pytest.raises(ArchiveError, match="larger than"):
        validate(io.BytesIO(bomb), Limits(max_bytes=1 << 19))


@pytest.mark.parametrize("content", [b"", b"garbage" * 100, b"\x1f\x8b" + b"x" * 100],
                         ids=["empty", "garbage", "bad-gzip"])
def test_not_a_tar(content: bytes) -> None:
    with pytest.raises(ArchiveError, match="not a valid tar archive"):
        validate(io.BytesIO(content))


def unpack_into(root: Path, content: bytes, **kw: object) -> None:
    root.mkdir()
    fd = open_root(root)
    try:
        unpack(io.BytesIO(content), fd, **kw)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def test_accepted_shapes_are_unpacked_without_following_anything(tmp_path: Path) -> None:
    outside = make_outside(tmp_path)
    before = tree(outside)
    content = tar_of([
        E("./", "dir", mode=0o755),
        E("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),   # parent made implicitly
        E("etc", "dir", mode=0o750),                            # then claimed once
        E("tmp", "dir", mode=0o1777),                           # sticky: dropped
        E("bin/busybox", data=b"bb", mode=0o755),
        E("bin/sh", "symlink", target="busybox"),
        E("bin/ls", "symlink", target="/bin/busybox"),
        E("escape", "symlink", target="../../outside/canary"),  # stored, never followed
        E("abs", "symlink", target=str(outside)),               # ditto
        E("bin/[", "hardlink", target="bin/busybox"),
        E("bin/[[", "hardlink", target="./bin/[", mode=0o755),  # a chain of links
        E("secret", data=b"s", mode=0o000),
        E("upper/.wh.gone", data=b""),                          # aufs whiteout
        E("upper/dir/.wh..wh..opq", data=b""),                  # opaque marker
        E("odd name\n\u00e9", data=b"odd"),
    ])
    table = validate(io.BytesIO(content))
    root = tmp_path / "root"
    unpack_into(root, content)
    assert tree(outside) == before
    assert (root / "etc/passwd").read_bytes().startswith(b"root:")
    assert stat.S_IMODE(os.lstat(root / "etc").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o777
    assert stat.S_IMODE(os.lstat(root / "secret").st_mode) == 0o600
    assert os.readlink(root / "bin/ls") == "/bin/busybox"
    assert os.readlink(root / "escape") == "../../outside/canary"
    assert os.readlink(root / "abs") == str(outside)
    inode = os.lstat(root / "bin/busybox").st_ino
    assert os.lstat(root / "bin/[").st_ino == inode == os.lstat(root / "bin/[[").st_ino
    assert (root / "upper/.wh.gone").is_file() and (root / "upper/dir/.wh..wh..opq").exists()
    assert (root / "odd name\n\u00e9").read_bytes() == b"odd"
    kinds = {m.path: m.kind for m in table.members}
    assert kinds["bin/[["] is Kind.HARDLINK and kinds["bin/ls"] is Kind.SYMLINK
    assert table.regular_file("/bin/ls") == table.regular_file("/bin/sh") == \
        table.regular_file("/bin/[[")
    assert table.regular_file("/escape") is None and table.regular_file("/abs") is None


@pytest.mark.parametrize("compress", [
    lambda data: gzip.compress(data, 1),
    lambda data: bz2.compress(data, 1),
    lambda data: lzma.compress(data, preset=0),
], ids=["gzip", "bzip2", "xz"])
def test_compressed_images(compress: Callable[[bytes], bytes]) -> None:
    content = compress(elf_tar())
    assert check_image("app", "tar", "/bin/app", content).entrypoint == "/bin/app"
    with pytest.raises(ArchiveError, match="not a valid tar archive"):
        validate(io.BytesIO(content), compressed=False)


def test_unpack_refuses_to_go_through_a_planted_link(tmp_path: Path) -> None:
    """Even if the destination already held a link (it must be empty), nothing follows it."""
    outside = make_outside(tmp_path)
    before = tree(outside)
    root = tmp_path / "root"
    root.mkdir()
    (root / "d").symlink_to(outside)
    fd = open_root(root)
    try:
        for entries in ([E("d/x", data=b"x")], [E("d", "dir")], [E("d/sub/deep", data=b"x")]):
            with pytest.raises(ArchiveError, match="cannot be written"):
                unpack(io.BytesIO(tar_of(entries)), fd)
    finally:
        os.close(fd)
    assert tree(outside) == before


RESOLUTION_ROOT = [
    E("bin/busybox", data=b"bb", mode=0o755),
    E("bin/sh", "symlink", target="busybox"),
    E("usr/bin", "symlink", target="../bin"),
    E("usr/local", "symlink", target="/usr/bin/"),
    E("loop1", "symlink", target="loop2"),
    E("loop2", "symlink", target="/loop1"),
    E("up", "symlink", target="../../../../bin/sh"),
    E("dangling", "symlink", target="/nowhere"),
    E("dir", "dir"),
    E("dir/.wh.hidden", data=b"x"),
    E("dirlink", "symlink", target="dir"),
    E("proc/self/exe", data=b"x"),
    E("exe", "symlink", target="/proc/self/exe"),
]
RESOLUTIONS = ["/bin/busybox", "/bin/sh", "/usr/bin/sh", "/usr/local/sh", "/usr/local/../sh",
               "/loop1", "/up", "/dangling", "/dir", "/dirlink/", "/dir/.wh.hidden",
               "/bin/sh/.", "/bin/./sh", "/bin/sh/", "/../../bin//sh", "/proc/self/exe",
               "/exe", "/", "/bin/busybox/x"]


def test_entrypoint_resolution_agrees_with_the_sandbox(tmp_path: Path) -> None:
    content = tar_of(RESOLUTION_ROOT)
    table = validate(io.BytesIO(content))
    root = tmp_path / "root"
    unpack_into(root, content)
    (tmp_path / "upper").mkdir()
    fd = open_root(root)
    try:
        for path in RESOLUTIONS:
            sandbox = Sandbox(root, tmp_path / "upper", path)   # as booting ``path`` does
            try:
                found = sandbox.host_path(sandbox.resolve(path, "/"))
                in_guest = found is not None and stat.S_ISREG(os.lstat(found[0]).st_mode)
            except OSError:
                in_guest = False
            assert (table.regular_file(path) is not None) == in_guest, path
            assert is_regular_file(fd, path) == in_guest, path
    finally:
        os.close(fd)


# -- the writable layer in a state file ---------------------------------------------------
def test_write_upper_round_trips_and_drops_special_bits(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "d" / "e").mkdir(parents=True)
    (upper / "d" / "file").write_bytes(b"data")
    os.chmod(upper / "d" / "file", 0o4755)             # a guest may set these bits
    os.chmod(upper / "d", 0o2755)
    os.link(upper / "d" / "file", upper / "d" / "again")
    (upper / "link").symlink_to("/d/file")
    (upper / ".wh.gone").write_bytes(b"")
    (upper / "d" / "e" / ".wh..wh..opq").write_bytes(b"")
    out = io.BytesIO()
    write_upper(str(upper), out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "stale").write_bytes(b"replaced")
    data = out.getvalue()
    read_upper(io.BytesIO(data), len(data), str(other))
    assert sorted(tree(other)) == sorted(tree(upper))
    assert stat.S_IMODE(os.lstat(other / "d" / "file").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(other / "d").st_mode) == 0o755
    assert os.lstat(other / "d" / "again").st_ino == os.lstat(other / "d" / "file").st_ino
    assert os.readlink(other / "link") == "/d/file"


def test_write_upper_refuses_what_read_upper_refuses(tmp_path: Path) -> None:
    """A path past PATH_MAX (a guest can make one, one directory at a time) cannot be read
    back: the save refuses it instead of writing a state no restore accepts."""
    upper = tmp_path / "upper"
    upper.mkdir()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(21):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    with pytest.raises(RuntimeError, match="cannot be saved: .* longer than 4095 bytes"):
        write_upper(str(upper), io.BytesIO())


# -- fuzzing: random archives never touch anything outside, and both passes agree --------------
OUT = "@OUT@"        # replaced by the outside directory's absolute host path
GOOD = ["a", "b", "c", ".wh.a", ".wh..wh..opq", "\u00e9", "\udcff", " ", "x\ny", "\\",
        "n" * 255, "outside", "canary"]
BAD = ["", ".", "..", "m" * 256]

good_names = st.lists(st.sampled_from(GOOD), min_size=1, max_size=3).map("/".join)
odd_names = st.builds(lambda lead, parts, trail: lead + "/".join(parts) + trail,
                      st.sampled_from(["", "/", "./", "../"]),
                      st.lists(st.sampled_from(GOOD + BAD), min_size=1, max_size=4),
                      st.sampled_from(["", "/", "/."]))
special_names = st.sampled_from([OUT, OUT + "/canary", OUT + "/sub/deep",
                                 "../outside/canary", "/".join(["q" * 200] * 21), "."])
names = st.one_of(good_names, good_names, good_names, good_names, odd_names, special_names)
link_texts = st.one_of(
    good_names, names,
    st.builds(lambda up, name: "../" * up + name, st.integers(1, 4), good_names),
    good_names.map(lambda n: "/" + n),
    st.sampled_from(["/", "..", "../outside", "", "/etc/passwd", OUT + "/canary"]),
)
KINDS = ["file"] * 4 + ["dir"] * 3 + ["symlink"] * 2 + ["hardlink"] * 2
MODES = [0o644, 0o755, 0o000, 0o777, 0o1777, 0o700, 0o600]
MISCHIEF = ["odd-name", "special-name", "special-type", "special-mode", "duplicate",
            "wild-hardlink", "under-non-dir"]


@st.composite
def archives(draw: st.DrawFn) -> list[E]:
    """A random plausible archive (so that the rules are reached at every position), then
    up to three pieces of mischief: odd names, names of host paths, devices and FIFOs,
    setuid/setgid, duplicates, hard links to anywhere, members under a link or a file."""
    entries: list[E] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(KINDS))
        dirs = [e.name for e in entries if e.kind == "dir"]
        name = draw(good_names) + draw(st.sampled_from(["", str(i)]))
        if dirs and draw(st.booleans()):
            name = draw(st.sampled_from(dirs)) + "/" + name
        target = ""
        files = [e.name for e in entries if e.kind in ("file", "hardlink")]
        if kind == "hardlink":
            if not files:
                kind = "file"
            else:
                target = draw(st.sampled_from(files))
        elif kind == "symlink":
            target = draw(link_texts)
        entries.append(E(name, kind, draw(st.binary(max_size=64)), target,
                         draw(st.sampled_from(MODES))))
    if draw(st.booleans()):
        return entries                       # no mischief: most of these are accepted
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(MISCHIEF))
        at = draw(st.integers(0, len(entries)))
        if what == "odd-name" and at < len(entries):
            entries[at] = dataclasses.replace(entries[at], name=draw(odd_names))
        elif what == "special-name":
            entries.insert(at, E(draw(special_names), draw(st.sampled_from(KINDS)), b"x",
                                 draw(link_texts)))
        elif what == "special-type":
            entries.insert(at, E(draw(good_names), draw(st.sampled_from(["chr", "blk",
                                                                          "fifo"]))))
        elif what == "special-mode" and at < len(entries):
            mode = draw(st.sampled_from([0o4755, 0o2755, 0o6777]))
            entries[at] = dataclasses.replace(entries[at], mode=mode)
        elif what == "duplicate":
            entries.insert(at, draw(st.sampled_from(entries)))
        elif what == "wild-hardlink":
            entries.insert(at, E(draw(good_names), "hardlink", target=draw(link_texts)))
        elif what == "under-non-dir":
            above = [e.name for e in entries if e.kind != "dir"]
            if above:
                entries.insert(at, E(draw(st.sampled_from(above)) + "/" + draw(good_names)))
    return entries


def build(entries: list[E], outside: Path) -> bytes | None:
    resolved = [E(e.name.replace(OUT, str(outside)), e.kind, e.data,
                  e.target.replace(OUT, str(outside)), e.mode) for e in entries]
    try:
        return tar_of(resolved)
    except (ValueError, UnicodeError, tarfile.TarError):
        return None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(archives())
def test_fuzz_nothing_outside_changes_and_both_passes_agree(entries: list[E]) -> None:
    base = Path(tempfile.mkdtemp(prefix="viridian-fuzz-"))
    try:
        outside = make_outside(base)
        before = tree(outside)
        content = build(entries, outside)
        if content is None:
            reject()
        try:
            table = validate(io.BytesIO(content))
            verdict: str | None = None
        except ArchiveError as err:
            verdict = str(err)
        root = base / "root"
        root.mkdir()
        fd = open_root(root)
        try:
            unpack(io.BytesIO(content), fd)
            written: str | None = None
        except ArchiveError as err:
            written = str(err)
        finally:
            os.close(fd)
        assert verdict == written, (verdict, written)
        event("accepted" if verdict is None else verdict.rpartition(": ")[2][:40])
        assert tree(outside) == before
        assert sorted(os.listdir(base)) == ["outside", "root"]
        for info in tree(root).values():
            mode = info[0]
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)
            assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
        if verdict is None:
            for member in table.members:
                st_mode = os.lstat(root / member.path).st_mode
                expected = {Kind.FILE: stat.S_ISREG, Kind.HARDLINK: stat.S_ISREG,
                            Kind.DIR: stat.S_ISDIR, Kind.SYMLINK: stat.S_ISLNK}[member.kind]
                assert expected(st_mode), member
        else:
            assert "\n" not in verdict
            if not any(OUT in e.name or OUT in e.target for e in entries):
                assert str(base) not in verdict     # only text the archive itself holds
    finally:
        shutil.rmtree(base)


def test_checker_is_what_the_cli_and_write_upper_share() -> None:
    checker = MemberChecker(Limits())
    info = tarfile.TarInfo("bin/app")
    assert checker.admit(info) is not None
    with pytest.raises(ArchiveError, match="duplicate"):
        checker.admit(tarfile.TarInfo("bin/app"))
