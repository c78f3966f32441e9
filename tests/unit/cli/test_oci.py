"""controller.cli.oci: OCI layouts (directory, tar, gzip tar), docker save archives, layers
applied in order with whiteouts and opaque directories, and hostile inputs refused."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from controller.cli.oci import ImportLimits, OciError, import_image
from node_agent.runtime.archive import Limits, validate
from tests.oci_build import (
    Device,
    Dir,
    Entry,
    Fifo,
    File,
    Hardlink,
    Image,
    Opaque,
    Raw,
    Symlink,
    Whiteout,
    write_docker_save,
    write_oci_archive,
    write_oci_layout,
)

BASE = [Dir("bin"), File("bin/app", b"\x7fELF app", 0o755), Dir("etc"),
        File("etc/keep", b"keep"), File("etc/gone", b"gone"), Dir("var"), Dir("var/cache"),
        File("var/cache/a", b"a"), Dir("var/cache/sub"), File("var/cache/sub/b", b"b")]
TOP = [Whiteout("etc/gone"), Opaque("var/cache"), File("var/cache/new", b"new"),
       Symlink("bin/sh", "app"), File("etc/keep", b"changed", 0o600)]


def tree(tar_path: Path) -> dict[str, str | bytes]:
    """name -> content (files), "dir", "-> target" (symlinks) or "link target"."""
    out: dict[str, str | bytes] = {}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            if info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
            elif info.isdir():
                out[info.name] = "dir"
            elif info.issym():
                out[info.name] = "-> " + info.linkname
            elif info.islnk():
                out[info.name] = "link " + info.linkname
    return out


def expected_merge() -> dict[str, str | bytes]:
    return {"bin": "dir", "bin/app": b"\x7fELF app", "bin/sh": "-> app", "etc": "dir",
            "etc/keep": b"changed", "var": "dir", "var/cache": "dir", "var/cache/new": b"new"}


def image(**kw: object) -> Image:
    return Image([BASE, TOP], entrypoint=["/bin/app", "-v"], cmd=["serve"],
                 env=["PATH=/bin", "A=1"], workdir="/var", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("form", ["dir", "archive", "gzip-archive", "docker", "uncompressed"])
def test_layers_apply_in_order_with_whiteouts(tmp_path: Path, form: str) -> None:
    src = tmp_path / "src"
    if form == "dir":
        write_oci_layout(src, image())
    elif form == "archive":
        write_oci_archive(src, image())
    elif form == "gzip-archive":
        write_oci_archive(src, image(), compress=True)
    elif form == "uncompressed":
        write_oci_layout(src, image(gzip=False))
    else:
        write_docker_save(src, image())
    out = tmp_path / "root.tar"
    got = import_image(src, out, arch=None, ref=None)
    assert tree(out) == expected_merge()
    assert got.source == ("docker" if form == "docker" else "oci")
    assert (got.arch, got.entrypoint, got.cmd, got.env, got.working_dir) == (
        "x86_64", ["/bin/app", "-v"], ["serve"], ["PATH=/bin", "A=1"], "/var")
    assert (got.argv, got.program, got.entry_args, got.default_args) == (
        ["/bin/app", "-v", "serve"], "/bin/app", ["-v"], ["serve"])
    assert got.size_bytes == out.stat().st_size
    with open(out, "rb") as f:           # what the push checker accepts
        validate(f, Limits(max_bytes=1 << 30))


def test_one_image_gives_the_same_tar_from_every_form(tmp_path: Path) -> None:
    """Timestamps come from the layers, not the import: the same image imported twice, or
    from a layout, an archive and a docker save, is the same content (one digest)."""
    outs = []
    for n, write in enumerate((write_oci_layout, write_oci_archive, write_docker_save,
                               write_oci_layout)):
        src = write(tmp_path / f"src{n}", image())
        out = tmp_path / f"out{n}.tar"
        import_image(src, out, arch=None, ref=None)
        outs.append(out.read_bytes())
    assert outs[1:] == outs[:1] * 3
    stamped = _raw("stamped", data=b"s")
    stamped.info.mtime = 1_700_000_000
    write_oci_layout(tmp_path / "t", Image([[stamped]], cmd=["/stamped"]))
    import_image(tmp_path / "t", tmp_path / "t.tar", arch=None, ref=None)
    with tarfile.open(tmp_path / "t.tar") as tar:
        assert tar.getmember("stamped").mtime == 1_700_000_000


def test_opaque_keeps_what_the_same_layer_writes_before_it(tmp_path: Path) -> None:
    top = [Dir("var/cache"), Dir("var/cache/sub"), File("var/cache/sub/c", b"c"),
           Opaque("var/cache")]
    write_oci_layout(tmp_path / "l", Image([BASE, top], entrypoint=["/bin/app"]))
    out = tmp_path / "o.tar"
    import_image(tmp_path / "l", out, arch=None, ref=None)
    names = {n for n in tree(out) if n.startswith("var/cache")}
    assert names == {"var/cache", "var/cache/sub", "var/cache/sub/c"}


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whiteout_hides_the_lower_directory_whatever_the_order(
        tmp_path: Path, whiteout_first: bool) -> None:
    """.wh.etc with etc/new in the same layer: etc holds only what this layer writes, whether
    the whiteout comes before or after it in the archive."""
    mine: list[Entry] = [Dir("etc"), File("etc/new", b"n")]
    top = [Whiteout("etc"), *mine] if whiteout_first else [*mine, Whiteout("etc")]
    write_oci_layout(tmp_path / "l", Image([BASE, top], entrypoint=["/bin/app"]))
    out = tmp_path / "o.tar"
    import_image(tmp_path / "l", out, arch=None, ref=None)
    assert {n for n in tree(out) if n.startswith("etc")} == {"etc", "etc/new"}


def test_entry_replaces_lower_kinds_and_hardlinks_cross_layers(tmp_path: Path) -> None:
    lower = [Dir("a"), File("a/f", b"f"), File("b", b"file"), File("data", b"shared")]
    upper = [File("a", b"now a file"), Dir("b"), File("b/x", b"x"),
             Hardlink("same", "data")]
    write_oci_layout(tmp_path / "l", Image([lower, upper], cmd=["/a"]))
    out = tmp_path / "o.tar"
    got = import_image(tmp_path / "l", out, arch=None, ref=None)
    t = tree(out)
    assert t["a"] == b"now a file" and "a/f" not in t
    assert t["b"] == "dir" and t["b/x"] == b"x"
    assert {t["data"], t["same"]} == {b"shared", "link data"}
    assert (got.program, got.entry_args, got.default_args) == ("/a", [], [])


def test_bare_entrypoint_is_found_on_the_image_path(tmp_path: Path) -> None:
    layer = [Dir("usr"), Dir("usr/bin"), File("usr/bin/tool", b"t", 0o755),
             Symlink("bin", "usr/bin")]
    write_oci_layout(tmp_path / "l", Image([layer], cmd=["tool", "x"],
                                           env=["PATH=/nope:/bin"]))
    got = import_image(tmp_path / "l", tmp_path / "o.tar", arch=None, ref=None)
    assert (got.program, got.entry_args, got.default_args) == ("/bin/tool", [], ["x"])
    missing = tmp_path / "m"
    write_oci_layout(missing, Image([layer], cmd=["nothere"]))
    with pytest.raises(OciError, match="'nothere' is not found on the image's PATH"):
        import_image(missing, tmp_path / "o2.tar", arch=None, ref=None)
    with pytest.raises(OciError, match="neither absolute"):
        import_image(missing, tmp_path / "o3.tar", arch=None, ref=None, entrypoint="usr/bin/x")
    over = import_image(missing, tmp_path / "o4.tar", arch=None, ref=None,
                        entrypoint="/usr/bin/tool")
    assert (over.program, over.default_args) == ("/usr/bin/tool", [])
    nothing = tmp_path / "n"
    write_oci_layout(nothing, Image([layer]))
    with pytest.raises(OciError, match="neither Entrypoint nor Cmd"):
        import_image(nothing, tmp_path / "o5.tar", arch=None, ref=None)


def test_arch_and_ref_pick_the_manifest(tmp_path: Path) -> None:
    amd = Image([[File("which", b"amd64")]], cmd=["/which"], tags=["multi:latest"])
    i386 = Image([[File("which", b"386")]], cmd=["/which"], architecture="386",
                 tags=["multi:latest"])
    arm = Image([[File("which", b"arm")]], cmd=["/which"], architecture="arm64",
                tags=["multi:latest"])
    layout = write_oci_layout(tmp_path / "l", [amd, i386, arm], nested_index=True)
    out = tmp_path / "o.tar"
    got = import_image(layout, out, arch="386", ref="multi")
    assert got.arch == "i386" and tree(out)["which"] == b"386"
    got = import_image(layout, out, arch=None, ref=None)
    assert got.arch == "x86_64" and tree(out)["which"] == b"amd64"
    assert any("--arch" in n for n in got.notes)
    with pytest.raises(OciError, match="no image named 'other'"):
        import_image(layout, out, arch=None, ref="other")
    only_arm = write_oci_layout(tmp_path / "arm", arm)
    with pytest.raises(OciError, match=r"no linux/amd64 or linux/386 image .*linux/arm64"):
        import_image(only_arm, out, arch=None, ref=None)

    two = write_docker_save(tmp_path / "two.tar", [
        Image([[File("v", b"1")]], cmd=["/v"], tags=["app:1"]),
        Image([[File("v", b"2")]], cmd=["/v"], tags=["app:2", "app:latest"])])
    with pytest.raises(OciError, match=r"2 images: choose one with --ref \(app:1, app:2"):
        import_image(two, out, arch=None, ref=None)
    import_image(two, out, arch=None, ref="app")
    assert tree(out)["v"] == b"2"
    import_image(two, out, arch=None, ref="docker.io/library/app:1")
    assert tree(out)["v"] == b"1"
    with pytest.raises(OciError, match="the image is x86_64, not i386"):
        import_image(two, out, arch="i386", ref="app:1")


def test_devices_fifos_and_setuid_are_dropped_with_notes(tmp_path: Path) -> None:
    layer = [Dir("dev"), Device("dev/null"), Fifo("pipe"), File("su", b"su", 0o4755),
             File("app", b"a", 0o755)]
    write_oci_layout(tmp_path / "l", Image([layer], cmd=["/app"]))
    out = tmp_path / "o.tar"
    got = import_image(tmp_path / "l", out, arch=None, ref=None)
    assert set(tree(out)) == {"dev", "su", "app"}
    with tarfile.open(out) as tar:
        assert tar.getmember("su").mode & 0o7777 == 0o755
    assert len(got.notes) == 3


def _raw(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x"
         ) -> Raw:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return Raw(info, data)


@pytest.mark.parametrize(("layers", "message"), [
    ([[_raw("../evil")]], "'..' in name"),
    ([[_raw("/abs")]], "absolute name"),
    # (relative targets that would reach tmp_path/etc from the scratch root if followed)
    ([[Symlink("lnk", "../../etc")], [_raw("lnk/passwd")]],
     "parent 'lnk' is a symlink in a lower layer"),
    ([[File("f", b"f")], [_raw("f/under")]], "parent 'f' is a file in a lower layer"),
    ([[Symlink("lnk", "../..")], [Whiteout("lnk/etc")]], None),  # ignored, nothing removed
    ([[_raw("hl", tarfile.LNKTYPE, "nothere")]], "hard link target 'nothere'"),
    ([[_raw("hl", tarfile.LNKTYPE, "../../etc/passwd")]], "'..' in name"),
    ([[Symlink("s", "/etc/passwd"), _raw("hl", tarfile.LNKTYPE, "s")]],
     "hard link target 's'"),
    ([[File("a", b"1"), File("a", b"2")]], "duplicate entry"),
])
def test_hostile_layers_are_refused(tmp_path: Path, layers: list[list[object]],
                                    message: str | None) -> None:
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "canary").write_text("x")
    layout = write_oci_layout(tmp_path / "l", Image(layers, entrypoint=["/x"]))  # type: ignore[arg-type]
    out = tmp_path / "o.tar"
    with pytest.raises(OciError) as err:
        import_image(layout, out, arch=None, ref=None)
    if message is not None:
        assert message in str(err.value)
        assert str(err.value).startswith("layer ")
    assert "\n" not in str(err.value)
    assert not out.exists() and not (tmp_path / "evil").exists()
    assert [p.name for p in outside.iterdir()] == ["canary"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".viridian")] == []


def _first_layer_blob(layout: Path) -> Path:
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / mdigest).read_text())
    return layout / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]


def test_digest_mismatches_are_refused(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image([[File("a", b"a" * 100)]], cmd=["/a"]))
    blob = _first_layer_blob(layout)
    good = blob.read_bytes()
    replacement = gzip.compress(gzip.decompress(good).replace(b"a" * 100, b"b" * 100))
    blob.write_bytes(replacement[: len(good)].ljust(len(good), b"\0"))
    with pytest.raises(OciError, match="layer 1: "):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None)
    blob.write_bytes(good)
    config = next(p for p in (layout / "blobs/sha256").iterdir()
                  if p.read_bytes().startswith(b'{"architecture"'))
    config.write_bytes(config.read_bytes().replace(b'"amd64"', b'"386"  '))
    with pytest.raises(OciError, match="image config: digest mismatch"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None)

    bad_diff = write_docker_save(tmp_path / "d.tar", Image(
        [[File("a", b"a")]], cmd=["/a"], diff_ids=["sha256:" + "0" * 64]))
    with pytest.raises(OciError, match="does not match the config's diff_id"):
        import_image(bad_diff, tmp_path / "o.tar", arch=None, ref=None)


def test_a_blob_whose_content_does_not_match_its_digest(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image([[File("a", b"a" * 100)]], cmd=["/a"],
                                                    gzip=False))
    blob = _first_layer_blob(layout)
    data = blob.read_bytes()
    blob.write_bytes(data.replace(b"a" * 100, b"c" * 100))   # same size, a valid tar
    with pytest.raises(OciError, match="layer 1: digest mismatch"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None)
    assert not (tmp_path / "o.tar").exists()


def test_size_and_count_limits(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image(
        [[File("a", b"a" * 4096)], [File("b", b"b" * 4096)]], cmd=["/a"]))
    with pytest.raises(OciError, match="more than 6000 bytes of files"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None,
                     limits=ImportLimits(max_bytes=6000))
    with pytest.raises(OciError, match="more than 1 entries"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None,
                     limits=ImportLimits(max_members=1))
    deep = write_oci_layout(tmp_path / "deep", Image(
        [[File("/".join(["d"] * 2000) + "/f", b"x")]], cmd=["/f"]))
    with pytest.raises(OciError, match="deeper than 128 directories"):
        import_image(deep, tmp_path / "o.tar", arch=None, ref=None)
    with pytest.raises(OciError, match="more than 1 layers"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None,
                     limits=ImportLimits(max_layers=1))
    # A gzip bomb: a small blob inflating past the bound is cut off while it is read.
    bomb = write_oci_layout(tmp_path / "bomb", Image([[File("z", b"z")]], cmd=["/z"],
                                                     padding=64 << 20))
    assert _first_layer_blob(bomb).stat().st_size < 1 << 20
    with pytest.raises(OciError, match=r"layer 1 \(uncompressed\) is larger than 4194304"):
        import_image(bomb, tmp_path / "o.tar", arch=None, ref=None,
                     limits=ImportLimits(max_layer_bytes=4 << 20))
    import_image(bomb, tmp_path / "o.tar", arch=None, ref=None)   # within the defaults


def test_layout_files_may_not_point_outside(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image([[File("a")]], cmd=["/a"]))
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (layout / "index.json").unlink()
    os.symlink(secret, layout / "index.json")
    with pytest.raises(OciError, match="points outside the image"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None)
    (layout / "index.json").unlink()
    (layout / "index.json").write_text(json.dumps({"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:../../secret", "size": 2}]}))
    with pytest.raises(OciError, match="unsupported digest"):
        import_image(layout, tmp_path / "o.tar", arch=None, ref=None)


@pytest.mark.parametrize("content", [b"", b"not a tar at all", b"\x1f\x8b garbage"])
def test_garbage_inputs_give_one_line(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "in.tar"
    src.write_bytes(content)
    with pytest.raises(OciError) as err:
        import_image(src, tmp_path / "o.tar", arch=None, ref=None)
    assert "\n" not in str(err.value)


def test_whiteout_names_never_reach_the_root(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image(
        [[File("a", b"a"), Dir("d"), File("d/.wh.ghost", b"")],
         [File(".wh..wh.aufs", b""), Dir(".wh..wh.plnk"), Whiteout("d/nothing")]],
        cmd=["/a"]))
    import_image(layout, tmp_path / "o.tar", arch=None, ref=None)
    assert set(tree(tmp_path / "o.tar")) == {"a", "d"}


def test_zstd_layer_without_the_library_is_a_clear_error(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image([[File("a")]], cmd=["/a"], gzip=False))
    blob = _first_layer_blob(layout)
    fake = b"\x28\xb5\x2f\xfd" + blob.read_bytes()[4:]
    blob.write_bytes(fake)
    try:
        import zstandard  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(OciError, match="zstd-compressed"):
            import_image(layout, tmp_path / "o.tar", arch=None, ref=None)
    else:
        with pytest.raises(OciError, match="layer 1"):
            import_image(layout, tmp_path / "o.tar", arch=None, ref=None)


def _archive(dest: Path, members: list[tuple[str, bytes | str]]) -> Path:
    """A tar of (name, content) - bytes: a file, str: a symlink to that text."""
    with tarfile.open(dest, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return dest


def test_archive_members_may_not_point_outside(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("[]")
    escaping = _archive(tmp_path / "a.tar", [("index.json", "../secret")])
    with pytest.raises(OciError, match="points outside the image"):
        import_image(escaping, tmp_path / "o.tar", arch=None, ref=None)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"diff_ids": ["sha256:" + "0" * 64]}}).encode()
    traversal = _archive(tmp_path / "d.tar", [
        ("manifest.json", json.dumps([{"Config": "c.json",
                                       "Layers": ["../../secret"]}]).encode()),
        ("c.json", config)])
    with pytest.raises(OciError, match="'..' in name"):
        import_image(traversal, tmp_path / "o.tar", arch=None, ref=None)
    absolute = _archive(tmp_path / "e.tar", [
        ("manifest.json", json.dumps([{"Config": "/etc/passwd", "Layers": []}]).encode())])
    with pytest.raises(OciError, match="absolute name"):
        import_image(absolute, tmp_path / "o.tar", arch=None, ref=None)


def test_malformed_documents_are_one_line_errors(tmp_path: Path) -> None:
    cases: list[bytes] = [b"[", b"[]", b'{"manifests": 5}', b'{"manifests": [{"digest": 1}]}',
                          b'{"manifests": [{"digest": "sha256:' + b"a" * 64
                          + b'", "size": -1}]}']
    for n, doc in enumerate(cases):
        src = _archive(tmp_path / f"{n}.tar", [("index.json", doc)])
        with pytest.raises(OciError) as err:
            import_image(src, tmp_path / "o.tar", arch=None, ref=None)
        assert "\n" not in str(err.value)


def test_odd_platforms_and_tags_do_not_crash(tmp_path: Path) -> None:
    index = {"manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "sha256:" + "a" * 64, "size": 1,
                            "platform": {"os": ["linux"], "architecture": {"x": 1}}}]}
    src = _archive(tmp_path / "p.tar", [("index.json", json.dumps(index).encode())])
    with pytest.raises(OciError, match="no linux/amd64 or linux/386 image"):
        import_image(src, tmp_path / "o.tar", arch=None, ref=None)
    docker = _archive(tmp_path / "d.tar", [("manifest.json", json.dumps(
        [{"Config": 5, "RepoTags": "x", "Layers": None}]).encode())])
    with pytest.raises(OciError, match="RepoTags is not a list"):
        import_image(docker, tmp_path / "o.tar", arch=None, ref=None)


def test_names_from_the_image_reach_messages_escaped(tmp_path: Path) -> None:
    saved = write_docker_save(tmp_path / "d.tar", [
        Image([[File("a")]], cmd=["/a"], tags=["evil\x1b[2J:1"]),
        Image([[File("a")]], cmd=["/a"], tags=["ok:1"])])
    with pytest.raises(OciError) as err:
        import_image(saved, tmp_path / "o.tar", arch=None, ref=None)
    assert "\x1b" not in str(err.value) and "'evil\\x1b[2J:1', ok:1" in str(err.value)
