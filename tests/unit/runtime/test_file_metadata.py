"""File metadata kept by the sandbox (modes, owners, times), umask, links, renameat2 and
fallocate, seen by C guests (x86_64 and i386), plus the hostile cases: a guest's setuid bit
or owner never reaches the host inode, links never leave the partition, and the guest's
metadata travels with a saved writable layer."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from runtime_helpers import Run

from node_agent.runtime.fs import Sandbox
from node_agent.runtime.metadata import META_NAME
from node_agent.runtime.snapfiles import read_upper, write_upper

O_CREAT, O_RDWR = 0o100, 2
ARCHES = ["x86_64", "i386"]


def _lines(run: Run) -> dict[str, str]:
    assert run.status.exit_code == 0, (run.status, run.stdout[-2000:])
    out: dict[str, str] = {}
    for line in run.stdout.decode().splitlines():
        key, _, value = line.partition(": ")
        out[key] = value
    return out


@pytest.mark.parametrize("arch", ARCHES)
def test_metadata_links_rename_fallocate(run_guest: Callable[..., Run], tmp_path: Path,
                                         arch: str) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    got = _lines(run_guest("fm_meta", "/w", "/data/low.txt", arch=arch, upper=upper,
                           files={"data/low.txt": b"lower"}))
    # umask 022 at start, 027 applied to creat and mkdir
    assert got["umask"] == "22"
    assert got["created"].startswith("mode=750 uid=0 gid=0")
    assert got["mkdir"].startswith("mode=750")
    assert got["after chmod"].startswith("mode=4755")
    assert got["fstat"] == "mode=4755"
    assert got["after fchmod"].startswith("mode=600")
    assert got["after chown"].startswith("mode=600 uid=1000 gid=2000")
    assert got["after fchown"].startswith("mode=600 uid=1000 gid=3000")
    assert got["suid dropped"].startswith("mode=755 uid=5 gid=3000")   # chown kills S_ISUID
    assert got["lnk"].startswith("mode=777 uid=7 gid=8")               # lchown: the link
    assert got["lnk target"].startswith("mode=755 uid=5")
    assert got["times"] == "1000000000 5 1200000000"
    assert got["omit"] == "1000000000 1300000000"
    assert got["utimes times"] == "1400000000 1500000000"
    assert got["utime times"] == "1600000000 1700000000"
    assert got["now recent"] == "1"
    assert "nlink=2" in got["nlink"]
    assert got["link exists"] == "-1 errno=17"
    assert got["link dir"] == "-1 errno=1"
    assert "nlink=3" in got["hard2"] and got["hard2"].startswith("mode=755")  # followed
    assert got["lnk2"].startswith("mode=777") and "nlink=2" in got["lnk2"]
    assert got["linkat empty"] == "0" and "nlink=4" in got["nlink4"]
    assert got["readlink"] == "/etc/../f-target"
    assert got["noreplace"] == "-1 errno=17"
    assert got["a"].endswith("size=1") and got["b"].endswith("size=3")   # exchanged
    assert got["exchange missing"] == "-1 errno=2"
    assert got["whiteout"] == "-1 errno=22"
    assert got["both flags"] == "-1 errno=22"
    assert got["c is dir"].startswith("mode=755")
    assert got["exchange into self"] == "-1 errno=22"
    assert got["fallocate"] == "0"
    assert got["fallocate blocks"] == "1"      # the host allocated them: st_blocks counts
    assert got["size"] == "100000"                    # KEEP_SIZE left it
    assert got["punched"] == "0 0 x"
    assert got["bad mode"] == "-1 errno=95"
    assert got["bad len"] == "-1 errno=22"
    assert got["read-only"] == "-1 errno=9"
    assert got["enospc"] == "-1 errno=28"             # 2 GiB: past the 1 GiB quota
    assert got["lower after"].startswith("mode=400")
    assert got["lower owner"].startswith("mode=400 uid=42 gid=43")
    # the host never got a setuid bit or a foreign owner; the lower file was copied up
    for path in (upper / "w").iterdir():
        st = path.lstat()
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), path
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), path
    low = upper / "data" / "low.txt"
    assert low.read_bytes() == b"lower" and stat.S_IMODE(low.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "root" / "data" / "low.txt").stat().st_mode) != 0o400


def _sandbox(tmp_path: Path, upper: str = "upper") -> Sandbox:
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True, exist_ok=True)
    (lower / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    (tmp_path / upper).mkdir(exist_ok=True)
    return Sandbox(lower, tmp_path / upper, "/bin/app")


def test_setuid_and_owner_never_reach_the_host(tmp_path: Path) -> None:
    sb = _sandbox(tmp_path)
    sb.open("/f", "/", O_CREAT | O_RDWR, 0o6777).close()
    sb.change_at("/f", "/", True, owner=(1234, 5678))
    sb.change_at("/f", "/", True, perm=0o7777)      # after chown: chown drops S_ISUID
    sb.mkdir("/d", 0o1777)
    sb.change_at("/d", "/", True, perm=0o3777)
    info = sb.stat_at("/f", "/")
    assert (stat.S_IMODE(info.mode), info.uid, info.gid) == (0o7777, 1234, 5678)
    assert stat.S_IMODE(sb.stat_at("/d", "/").mode) == 0o3777
    for name in ("f", "d"):
        st = (tmp_path / "upper" / name).lstat()
        assert stat.S_IMODE(st.st_mode) & 0o7000 == 0
        assert st.st_uid == os.getuid()


def test_hard_links_stay_inside(tmp_path: Path) -> None:
    sb = _sandbox(tmp_path)
    outside = tmp_path / "secret"
    outside.write_text("host")
    sb.symlink(str(outside), "/escape")
    sb.symlink("../../../../secret", "/rel")
    for src in ("/escape", "/rel", "/../secret", "/etc/../../secret"):
        with pytest.raises(OSError):
            sb.link_at(src, "/", "/got", "/", follow=True)
    # a link to the symlink itself is a link to its text, never to the host file
    sb.link_at("/escape", "/", "/same", "/", follow=False)
    assert sb.readlink("/same") == str(outside)
    assert (tmp_path / "upper" / "same").is_symlink()
    assert outside.stat().st_nlink == 1
    # a lower file is copied up before linking: the image's inode never gets a new name
    sb.link_at("/etc/passwd", "/", "/pw", "/", follow=True)
    assert (tmp_path / "lower" / "etc" / "passwd").stat().st_nlink == 1
    assert sb.stat_at("/pw", "/").nlink == 2
    # linkat(AT_EMPTY_PATH)'s check: the path must still name that inode
    with pytest.raises(FileNotFoundError):
        sb.link_at("/pw", "/", "/pw2", "/", follow=False, inode=(0, 1))
    with pytest.raises(OSError):
        sb.link_at("/proc/self/exe", "/", "/p", "/", follow=False)


def test_metadata_travels_with_a_saved_layer_and_a_restart(tmp_path: Path) -> None:
    sb = _sandbox(tmp_path)
    sb.open("/a", "/", O_CREAT | O_RDWR, 0o644).close()
    sb.mkdir("/sub", 0o755)
    sb.open("/sub/b", "/", O_CREAT | O_RDWR, 0o644).close()
    sb.change_at("/a", "/", True, owner=(10, 20))
    sb.change_at("/a", "/", True, perm=0o4711)
    sb.change_at("/sub/b", "/", True, owner=(30, 40))
    sb.link_at("/a", "/", "/sub/a2", "/", follow=False)
    sb.rename("/sub", "/moved")                # the log's hint for b is stale now
    sb.change_at("/etc/passwd", "/", True, perm=0o600)
    # the same directory again (a restart): inode numbers still hold
    again = _sandbox(tmp_path)
    assert stat.S_IMODE(again.stat_at("/a", "/").mode) == 0o4711
    assert again.stat_at("/moved/b", "/").uid == 30
    # through the state file's tar into another directory
    sb.meta.compact()
    buf = io.BytesIO()
    write_upper(str(tmp_path / "upper"), buf)
    other = tmp_path / "upper2"
    other.mkdir()
    read_upper(io.BytesIO(buf.getvalue()), len(buf.getvalue()), str(other))
    restored = _sandbox(tmp_path, "upper2")
    a = restored.stat_at("/a", "/")
    assert (stat.S_IMODE(a.mode), a.uid, a.gid, a.nlink) == (0o4711, 10, 20, 2)
    assert stat.S_IMODE(restored.stat_at("/moved/a2", "/").mode) == 0o4711
    assert (restored.stat_at("/moved/b", "/").uid, restored.stat_at("/moved/b", "/").gid) == \
        (30, 40)
    assert stat.S_IMODE(restored.stat_at("/etc/passwd", "/").mode) == 0o600
    # the table is invisible to the guest and cannot be made by it
    assert META_NAME not in [n for n, _, _ in restored.listdir("/")]
    with pytest.raises(OSError):
        restored.open("/" + META_NAME, "/", 0, 0)
    for path in other.rglob("*"):
        assert not path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)


def test_unlinked_inode_forgets_its_metadata(tmp_path: Path) -> None:
    sb = _sandbox(tmp_path)
    sb.open("/x", "/", O_CREAT | O_RDWR, 0o644).close()
    sb.change_at("/x", "/", True, perm=0o4755, owner=(9, 9))
    sb.remove("/x", False)
    assert len(sb.meta) == 0
    sb.open("/y", "/", O_CREAT | O_RDWR, 0o644).close()   # may reuse the inode number
    y = sb.stat_at("/y", "/")
    assert (stat.S_IMODE(y.mode), y.uid) == (0o644, 0)
