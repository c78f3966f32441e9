"""The sandbox resolves every guest path inside the root and layers upper over lower."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.runtime.fs import Sandbox
from node_agent.runtime.upper_quota import ENTRY_COST, UpperQuota


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    lower, upper, outside = tmp_path / "lower", tmp_path / "upper", tmp_path / "outside"
    for d in (lower / "etc", lower / "bin", upper, outside):
        d.mkdir(parents=True)
    (lower / "etc/hosts").write_text("lower hosts\n")
    (outside / "secret").write_text("host secret\n")
    (lower / "bin/abs-link").symlink_to("/etc/hosts")
    (lower / "bin/rel-link").symlink_to("../../../../etc")
    (lower / "host-link").symlink_to(outside)
    return Sandbox(lower, upper, "/bin/app")


@pytest.mark.parametrize("path, expected", [
    ("/../../..", "/"),
    ("/etc/../../etc/hosts", "/etc/hosts"),
    ("/bin/abs-link", "/etc/hosts"),
    ("/bin/rel-link/hosts", "/etc/hosts"),
    ("/proc/self/exe", "/bin/app"),
    ("hosts", "/etc/hosts"),
])
def test_resolve_stays_inside(box: Sandbox, path: str, expected: str) -> None:
    assert box.resolve(path, "/etc") == expected


def test_host_symlink_in_lower_is_interpreted_in_the_guest(box: Sandbox, tmp_path: Path) -> None:
    # /host-link points at a host directory by absolute host path; in the guest it names
    # a path under the guest root, which does not exist
    with pytest.raises(FileNotFoundError):
        box.resolve("/host-link/secret", "/")
    assert box.host_path(str(tmp_path / "outside" / "secret")) is None


def test_symlink_loop_is_eloop(box: Sandbox) -> None:
    box.symlink("/a", "/b")
    box.symlink("/b", "/a")
    with pytest.raises(OSError) as info:
        box.resolve("/a", "/")
    assert info.value.errno == 40


def test_whiteout_hides_lower_and_recreate_is_opaque(box: Sandbox, tmp_path: Path) -> None:
    box.remove("/etc/hosts", is_dir=False)
    assert not box.exists("/etc/hosts")
    assert (tmp_path / "lower/etc/hosts").exists()
    assert [e[0] for e in box.listdir("/etc")] == []
    box.remove("/etc", is_dir=True)
    box.mkdir("/etc", 0o755)
    assert box.listdir("/etc") == []
    assert box.is_dir("/etc")


def test_copy_up_leaves_lower_untouched(box: Sandbox, tmp_path: Path) -> None:
    host = box.copy_up("/etc/hosts")
    Path(host).write_text("changed\n")
    assert (tmp_path / "lower/etc/hosts").read_text() == "lower hosts\n"
    found = box.host_path("/etc/hosts")
    assert found is not None and found[1] and Path(found[0]).read_text() == "changed\n"


def test_rename_directory_from_lower(box: Sandbox) -> None:
    box.rename("/etc", "/etc2")
    assert not box.exists("/etc")
    assert sorted(e[0] for e in box.listdir("/etc2")) == ["hosts"]


def test_upper_symlink_to_host_path_is_not_followed_on_host(box: Sandbox, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", tmp_path / "upper" / "evil")
    with pytest.raises(FileNotFoundError):
        box.resolve("/evil/secret", "/")
    assert box.host_path("/evil/secret") is None


# -- host symlinks planted in the upper layer are never followed on the host -----------------
@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "canary"
    path.write_text("canary\n")
    return path


def _plant(box: Sandbox, tmp_path: Path, canary: Path) -> None:
    (tmp_path / "upper" / "w").mkdir()
    os.symlink(canary, tmp_path / "upper" / "w" / "f")           # a file-shaped trap
    os.symlink(canary.parent, tmp_path / "upper" / "w" / "d")    # a directory-shaped trap


@pytest.mark.parametrize("call, code", [
    (lambda b: b.truncate("/w/f", "/", 0), errno.ENOENT),
    (lambda b: b.open("/w/f", "/", os.O_WRONLY | os.O_TRUNC, 0), errno.ENOENT),
    (lambda b: b.open("/w/f", "/", os.O_WRONLY | os.O_NOFOLLOW, 0), errno.ELOOP),
    (lambda b: b.open("/w/d/new", "/", os.O_WRONLY | os.O_CREAT, 0o644), errno.ENOENT),
    (lambda b: b.mkdir_at("/w/d/m", "/", 0o755), errno.ENOENT),
    (lambda b: b.symlink_at("x", "/w/d/s", "/"), errno.ENOENT),
    (lambda b: b.link_at("/etc/hosts", "/", "/w/d/l", "/", False), errno.ENOENT),
    (lambda b: b.link_at("/w/f", "/", "/w/g", "/", True), errno.ENOENT),
    (lambda b: b.rename_at("/etc/hosts", "/", "/w/d/x", "/"), errno.ENOENT),
    (lambda b: b.remove_at("/w/d/canary", "/", False), errno.ENOENT),
    (lambda b: b.chdir_at("/w/d", "/"), errno.ENOENT),
])
def test_planted_host_symlinks_stay_in_the_guest(box: Sandbox, tmp_path: Path, canary: Path,
                                                 call: Callable[[Sandbox], object],
                                                 code: int) -> None:
    _plant(box, tmp_path, canary)
    before, names = os.lstat(canary), sorted(os.listdir(canary.parent))
    with pytest.raises(OSError) as info:
        call(box)
    assert info.value.errno == code
    after = os.lstat(canary)
    assert (after.st_size, after.st_mode, after.st_mtime_ns, after.st_nlink) == \
        (before.st_size, before.st_mode, before.st_mtime_ns, before.st_nlink)
    assert sorted(os.listdir(canary.parent)) == names


def test_renaming_and_linking_a_planted_symlink_moves_the_link_itself(
        box: Sandbox, tmp_path: Path, canary: Path) -> None:
    _plant(box, tmp_path, canary)
    box.rename_at("/w/f", "/", "/w/g", "/")
    box.link_at("/w/g", "/", "/w/h", "/", False)
    box.remove_at("/w/g", "/", False)
    assert os.readlink(tmp_path / "upper/w/h") == str(canary)
    assert canary.read_text() == "canary\n" and os.lstat(canary).st_nlink == 1


# -- overlay semantics of the new calls ----------------------------------------------------
def test_link_copies_up_and_shares_the_inode(box: Sandbox, tmp_path: Path) -> None:
    box.link_at("/etc/hosts", "/", "/etc/hosts2", "/", False)
    a, b = os.lstat(tmp_path / "upper/etc/hosts"), os.lstat(tmp_path / "upper/etc/hosts2")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (tmp_path / "lower/etc/hosts").stat().st_nlink == 1


def test_rename_of_a_merged_directory_keeps_both_layers(box: Sandbox) -> None:
    file = box.open("/etc/new", "/", os.O_WRONLY | os.O_CREAT, 0o644)
    file.close()
    box.rename_at("/etc", "/", "/etc2", "/")
    assert not box.exists("/etc")
    assert sorted(e[0] for e in box.listdir("/etc2")) == ["hosts", "new"]


def test_rename_noreplace(box: Sandbox) -> None:
    box.mkdir("/x", 0o755)
    with pytest.raises(OSError) as info:
        box.rename_at("/x", "/", "/etc", "/", flags=1)
    assert info.value.errno == errno.EEXIST


def test_dir_over_a_whiteout_hides_the_lower_one_after_a_rename(box: Sandbox) -> None:
    box.mkdir("/fresh", 0o755)
    box.remove("/etc/hosts", is_dir=False)
    box.remove("/etc", is_dir=True)
    box.rename("/fresh", "/etc")
    assert box.listdir("/etc") == []


# -- the writable layer's quota ----------------------------------------------------------------
def _fresh_tally(box: Sandbox) -> int:
    fd = os.open(box.upper, os.O_PATH | os.O_DIRECTORY)
    try:
        return UpperQuota(fd).used()
    finally:
        os.close(fd)


def test_quota_counts_what_the_layer_already_holds(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    lower.mkdir()
    (upper / "d/a").write_bytes(b"x" * 1000)
    os.link(upper / "d/a", upper / "d/b")                 # one inode, two names
    os.symlink("xyz", upper / "s")
    box = Sandbox(lower, upper, "/app", disk_bytes=1 << 20)
    assert box.quota.used() == 4 * ENTRY_COST + 1000 + 3


def test_quota_counts_a_layer_unpacked_after_the_sandbox_was_made(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    box = Sandbox(lower, upper, "/app", disk_bytes=8000)   # a restore makes it, then unpacks
    (upper / "restored").write_bytes(b"y" * 5000)
    file = box.open("/more", "/", os.O_WRONLY | os.O_CREAT, 0o644)
    assert file.write(b"z" * 4000) == 8000 - 5000 - 2 * ENTRY_COST   # what fits
    with pytest.raises(OSError) as info:
        file.write(b"z")
    assert info.value.errno == errno.ENOSPC
    file.close()


def test_copy_up_past_the_quota_is_enospc(box: Sandbox, tmp_path: Path) -> None:
    box.quota.limit = 2 * ENTRY_COST + 5
    with pytest.raises(OSError) as info:
        box.copy_up("/etc/hosts")
    assert info.value.errno == errno.ENOSPC
    assert not (tmp_path / "upper/etc/hosts").exists()
    assert box.quota.used() == _fresh_tally(box)


def test_unlinked_open_file_keeps_its_bytes_until_closed(box: Sandbox) -> None:
    file = box.open("/tmpfile", "/", os.O_RDWR | os.O_CREAT, 0o600)
    assert file.write(b"q" * 3000) == 3000
    box.remove("/tmpfile", is_dir=False)
    assert box.quota.used() == 3000
    file.close()
    assert box.quota.used() == 0


def test_quota_stays_equal_to_a_fresh_count(box: Sandbox) -> None:
    box.mkdir("/a", 0o755)
    f = box.open("/a/one", "/", os.O_WRONLY | os.O_CREAT, 0o644)
    f.write(b"1" * 700)
    f.pwrite(b"2" * 10, 5000)
    f.truncate(4000)
    f.close()
    box.link_at("/a/one", "/", "/a/two", "/", False)
    box.symlink("/etc/hosts", "/a/link")
    box.rename("/a/one", "/a/three")
    box.rename("/etc/hosts", "/a/two")                      # replaces a hard link
    box.truncate("/a/three", "/", 100)
    box.open("/etc", "/", os.O_RDONLY, 0).close()
    box.remove("/a/link", is_dir=False)
    box.remove("/bin/abs-link", is_dir=False)               # a whiteout
    box.mkdir("/gone", 0o755)
    box.remove("/gone", is_dir=True)
    assert box.quota.used() == _fresh_tally(box)


def test_a_guest_cannot_leave_setuid_files_on_the_host(box: Sandbox, tmp_path: Path) -> None:
    """The agent runs as root: a setuid or setgid file it writes for a guest would be a
    root-owned setuid binary on the host. Special bits are never stored."""
    f = box.open("/made", "/", os.O_CREAT | os.O_WRONLY, 0o6755)
    f.close()
    box.mkdir_at("/dir", "/", 0o3777)
    for name in ("made", "dir"):
        mode = os.lstat(tmp_path / "upper" / name).st_mode
        assert mode & 0o7000 == 0, (name, oct(mode))
