"""The sandbox resolves every guest path inside the root and layers upper over lower."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node_agent.runtime.fs import Sandbox


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
