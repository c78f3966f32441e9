"""Image commands against the fake controller: push with tags (streamed from a file),
import of OCI layouts and docker save archives, tag, paged ls, rm --force, and the
--workdir/--entrypoint/--image REF flags of create and run."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from cli_fake import FakeController
from click.testing import Result
from viridian.v1 import controller_pb2, types_pb2

from controller.cli.image_upload import CHUNK_SIZE, requests
from tests.oci_build import (
    Dir,
    File,
    Image,
    Symlink,
    Whiteout,
    write_docker_save,
    write_oci_archive,
    write_oci_layout,
)

Invoke = Callable[..., Result]
ELF = b"\x7fELF" + b"\0" * 60


def pushed_tar(fake: FakeController) -> dict[str, bytes | str]:
    data = b"".join(r.chunk for r in fake.pushed[1:])
    out: dict[str, bytes | str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            f = tar.extractfile(info) if info.isreg() else None
            out[info.name] = f.read() if f else ("-> " + info.linkname if info.issym()
                                                 else "dir")
    return out


def test_push_sends_the_tag_and_source(invoke: Invoke, fake: FakeController,
                                       tmp_path: Path) -> None:
    elf = tmp_path / "hello"
    elf.write_bytes(ELF)
    result = invoke("image", "push", "hello:v2", str(elf))
    assert result.exit_code == 0, result.stderr
    header = fake.pushed[0].header
    assert (header.name, header.tag, header.source, header.format) == ("hello", "v2", "elf",
                                                                        "elf")
    assert result.stdout.startswith("image hello:v2 pushed: elf")
    assert "hello:v2" in fake.images and "hello:latest" in fake.images

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "app").write_bytes(ELF)
    assert invoke("image", "push", "app", str(root), "--entrypoint", "/bin/app").exit_code == 0
    header = fake.pushed[0].header
    assert (header.tag, header.source, header.format) == ("", "directory", "tar")
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(root / "bin" / "app", arcname="bin/app")
    assert invoke("image", "push", "t:1", str(tmp_path / "t.tar"), "--entrypoint",
                  "/bin/app").exit_code == 0
    assert (fake.pushed[0].header.source, fake.pushed[0].header.tag) == ("tar", "1")


def test_push_refuses_a_digest_reference(invoke: Invoke, tmp_path: Path) -> None:
    elf = tmp_path / "hello"
    elf.write_bytes(ELF)
    result = invoke("image", "push", "hello@sha256:" + "0" * 64, str(elf))
    assert result.exit_code == 2 and "give NAME[:TAG], not a digest" in result.stderr
    result = invoke("image", "push", "hello:", str(elf))
    assert result.exit_code == 2 and "empty tag" in result.stderr


def test_push_stream_reads_the_file_as_it_goes(tmp_path: Path) -> None:
    """Chunks come from the file while the stream is consumed, never from a copy in memory:
    bytes changed on disk after the first chunk was sent show up in the second."""
    path = tmp_path / "big"
    path.write_bytes(b"a" * (CHUNK_SIZE * 2 + 5))
    stream = requests(controller_pb2.ImageHeader(name="x"), path)
    assert next(stream).HasField("header")
    assert next(stream).chunk == b"a" * CHUNK_SIZE
    with open(path, "r+b") as f:
        f.seek(CHUNK_SIZE)
        f.write(b"b" * CHUNK_SIZE)
    assert next(stream).chunk == b"b" * CHUNK_SIZE
    assert next(stream).chunk == b"a" * 5
    assert list(stream) == []


def _layers() -> list[list[object]]:
    return [[Dir("bin"), File("bin/app", ELF, 0o755), File("old", b"old")],
            [Whiteout("old"), Symlink("bin/sh", "app"), Dir("srv")]]


def test_import_oci_layout_pushes_the_root_and_config(invoke: Invoke, fake: FakeController,
                                                      tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "layout", Image(
        _layers(), entrypoint=["app", "--serve"], cmd=["8080"],  # type: ignore[arg-type]
        env=["PATH=/bin", "MODE=prod"], workdir="/srv"))
    result = invoke("image", "import", str(layout), "web:1.0")
    assert result.exit_code == 0, result.stderr
    header = fake.pushed[0].header
    assert (header.name, header.tag, header.format, header.source) == ("web", "1.0", "tar",
                                                                        "oci")
    assert header.entrypoint == "/bin/app"
    assert list(header.entry_args) == ["--serve"] and list(header.cmd) == ["8080"]
    assert list(header.env) == ["PATH=/bin", "MODE=prod"] and header.workdir == "/srv"
    assert pushed_tar(fake) == {"bin": "dir", "bin/app": ELF, "bin/sh": "-> app",
                                "srv": "dir"}
    assert header.size_bytes == sum(len(r.chunk) for r in fake.pushed[1:])
    assert "imported from oci (2 layer(s))" in result.stdout
    assert "runs /bin/app --serve 8080" in result.stdout


def test_import_docker_save_and_oci_archive(invoke: Invoke, fake: FakeController,
                                            tmp_path: Path) -> None:
    saved = write_docker_save(tmp_path / "d.tar", [
        Image(_layers(), cmd=["/bin/app", "x"], tags=["web:1"]),  # type: ignore[arg-type]
        Image([[File("other", ELF)]], cmd=["/other"], tags=["other:2"])])
    ambiguous = invoke("image", "import", str(saved), "web")
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith("error: cannot import d.tar: the archive holds 2 images")
    assert len(ambiguous.stderr.splitlines()) == 1
    result = invoke("image", "import", str(saved), "web", "--ref", "web:1")
    assert result.exit_code == 0, result.stderr
    header = fake.pushed[0].header
    assert (header.source, header.entrypoint, list(header.entry_args), list(header.cmd)) == (
        "docker", "/bin/app", [], ["x"])

    archive = write_oci_archive(tmp_path / "o.tar", Image(
        _layers(), entrypoint=["/bin/app"], cmd=["a"]), compress=True)  # type: ignore[arg-type]
    over = invoke("image", "import", str(archive), "web:sh", "--entrypoint", "sh")
    assert over.exit_code == 0, over.stderr
    header = fake.pushed[0].header
    assert (header.entrypoint, list(header.entry_args), list(header.cmd)) == ("/bin/sh", [], [])


def test_import_errors_are_one_line(invoke: Invoke, fake: FakeController,
                                    tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "l", Image([[File("data", b"x")]], cmd=["app"]))
    result = invoke("image", "import", str(layout), "web")
    assert result.exit_code == 1
    assert result.stderr == ("error: cannot import l: entrypoint 'app' is not found on the "
                             "image's PATH\n")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\0" * 100)
    result = invoke("image", "import", str(junk), "web")
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    bad_arch = invoke("image", "import", str(layout), "web", "--arch", "arm64")
    assert bad_arch.exit_code == 1 and "unsupported architecture 'arm64'" in bad_arch.stderr
    assert fake.pushed == []


def test_tag(invoke: Invoke, fake: FakeController) -> None:
    result = invoke("image", "tag", "hello", "hello:stable")
    assert result.exit_code == 0, result.stderr
    assert fake.images["hello:stable"].digest == fake.images["hello:latest"].digest
    assert "image hello:stable tagged from hello" in result.stdout
    by_digest = invoke("image", "tag", "hello@sha256:" + "ab" * 32, "copy")
    assert by_digest.exit_code == 0 and "copy:latest" in fake.images
    missing = invoke("image", "tag", "nope", "x")
    assert missing.exit_code == 1 and missing.stderr == "error: NOT_FOUND: image 'nope' not found\n"
    bad = invoke("image", "tag", "hello", "x@sha256:" + "0" * 64)
    assert bad.exit_code == 2 and "target" in bad.stderr


def test_ls_pages_through_every_image(invoke: Invoke, fake: FakeController) -> None:
    for n in range(6):
        fake.images[f"img{n}:latest"] = types_pb2.Image(
            name=f"img{n}", tag="latest", digest="sha256:" + f"{n:02d}" * 32, size_bytes=1,
            arch=types_pb2.ARCH_I386)
    fake.image_page_size = 2
    assert invoke("create", "w", "--image", "img3").exit_code == 0
    table = invoke("image", "ls")
    assert table.exit_code == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["hello"] + [f"img{n}" for n in range(6)]
    assert table.stdout.splitlines()[0].split() == ["NAME", "TAG", "ARCH", "SIZE", "DIGEST",
                                                     "USERS", "AGE"]
    assert rows[4][1:3] == ["latest", "i386"] and rows[4][4:6] == ["030303030303", "w"]
    assert [p.page_token for p in fake.image_pages] == ["", "2", "4", "6"]
    listed = json.loads(invoke("image", "ls", "-o", "json").stdout)
    assert len(listed) == 7 and listed[4]["used_by"] == ["w"]


def test_ls_stops_on_a_repeated_page_token(invoke: Invoke, fake: FakeController) -> None:
    fake.image_page_stuck = True
    result = invoke("image", "ls")
    assert result.exit_code == 1 and "repeated a page token" in result.stderr


def test_rm_refuses_an_image_in_use_unless_forced(invoke: Invoke,
                                                  fake: FakeController) -> None:
    assert invoke("create", "w", "--image", "hello:latest").exit_code == 0
    busy = invoke("image", "rm", "hello")
    assert busy.exit_code == 1 and "FAILED_PRECONDITION" in busy.stderr
    assert "hello:latest" in fake.images
    forced = invoke("image", "rm", "hello", "--force")
    assert forced.exit_code == 0 and forced.stdout == "image hello deleted\n"
    assert [r.force for r in fake.delete_image_requests] == [False, True]
    assert "hello:latest" not in fake.images
    assert invoke("image", "rm", "hello@nope").exit_code == 2


def test_create_takes_workdir_entrypoint_and_a_reference(invoke: Invoke,
                                                         fake: FakeController) -> None:
    result = invoke("create", "w", "--image", "hello:latest", "--workdir", "/srv",
                    "--entrypoint", "/bin/sh", "--", "-c", "true")
    assert result.exit_code == 0, result.stderr
    spec = fake.partitions["w"].spec
    assert (spec.image, spec.workdir, spec.entrypoint, list(spec.args)) == (
        "hello:latest", "/srv", "/bin/sh", ["-c", "true"])
    shown = invoke("get", "w").stdout
    assert "Entrypoint:" in shown and "/bin/sh" in shown and "/srv" in shown
    relative = invoke("create", "x", "--image", "hello", "--workdir", "srv")
    assert relative.exit_code == 2 and "--workdir must be an absolute" in relative.stderr
    assert "NAME@sha256" in invoke("create", "--help").stdout


def test_run_names_the_partition_without_tag_or_digest(invoke: Invoke,
                                                       fake: FakeController) -> None:
    result = invoke("run", "--image", "hello@sha256:" + "ab" * 32, "--workdir", "/")
    assert result.exit_code == 0, result.stderr
    (name,) = fake.partitions
    assert name.startswith("hello-") and len(name) == len("hello-") + 5
    assert fake.partitions[name].spec.workdir == "/"
