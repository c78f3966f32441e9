"""The node's images: streamed, resumable pulls from a real gRPC gateway (image_pull.py),
the cache by digest with its size limit and LRU eviction (images.py), and a launch applying
the image's config (image_config.py) to a real guest."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from agent_fakes import FakeController, wait_for
from agent_helpers import Node, image_of, last, running_agent
from image_fakes import BlobGateway, GatewayClient
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import types_pb2 as pb

from node_agent.image_config import ImageConfigError, guest_command
from node_agent.image_pull import BlobPuller
from node_agent.images import Blob, ImageCache, ImagePullError, cache_key

MiB = 1 << 20
GUESTS = Path(__file__).resolve().parents[2] / "guests"
P = pb


def write_blob(path: Path, size: int, seed: int = 0) -> str:
    """``size`` bytes that differ from MiB to MiB (and from seed to seed); their digest."""
    block = hashlib.sha256(f"seed{seed}".encode()).digest() * (MiB // 32)
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for i in range(0, size, MiB):
            piece = (i.to_bytes(8, "little") + block[8:])[: min(MiB, size - i)]
            out.write(piece)
            digest.update(piece)
    return "sha256:" + digest.hexdigest()


async def serving(body: Callable[[BlobGateway, GatewayClient], Awaitable[None]],
                  chunk: int = 256 << 10) -> None:
    gw = BlobGateway(chunk)
    await gw.start()
    client = GatewayClient(gw.address)
    try:
        await body(gw, client)
    finally:
        await client.close()
        await gw.stop()


# -- pulls ------------------------------------------------------------------------------------
def test_a_broken_stream_resumes_where_the_partial_file_ends(tmp_path: Path) -> None:
    size = 8 * MiB
    src = tmp_path / "blob"
    digest = write_blob(src, size)

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = src
        gw.break_after = 3 * MiB
        puller = BlobPuller(client)
        dest = tmp_path / "dest"
        await puller.pull(digest, size, dest, "img")
        assert dest.read_bytes() == src.read_bytes()
        assert gw.calls == [0, 3 * MiB]
        assert (gw.sent, puller.received) == (size, size)   # nothing fetched twice

    asyncio.run(serving(body))


def test_a_controller_that_goes_away_mid_pull_is_resumed_when_it_is_back(
        tmp_path: Path) -> None:
    """The whole server stops during the stream (every connection drops) and comes back on
    its port: the pull resumes from its partial file."""
    size = 16 * MiB
    src = tmp_path / "blob"
    digest = write_blob(src, size)

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = src
        restarts: list[asyncio.Task[None]] = []

        def once(sent: int) -> None:
            if sent >= 5 * MiB and not restarts:
                restarts.append(asyncio.create_task(gw.restart()))

        gw.on_sent = once
        puller = BlobPuller(client)
        dest = tmp_path / "dest"
        await puller.pull(digest, size, dest, "img")
        assert restarts and restarts[0].done()
        assert dest.read_bytes() == src.read_bytes()
        assert len(gw.calls) >= 2 and gw.calls[0] == 0 and gw.calls[-1] > 0
        assert puller.received == size
        assert gw.sent < size + 8 * MiB   # at most what was in flight when it broke

    asyncio.run(serving(body))


def test_no_progress_fails_with_the_reason_and_keeps_the_prefix_for_the_next_pull(
        tmp_path: Path) -> None:
    size = 4 * MiB
    src = tmp_path / "blob"
    digest = write_blob(src, size)

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = src
        gw.stall_after = 1 * MiB
        puller = BlobPuller(client, no_progress_s=0.5)
        dest = tmp_path / "dest"
        with pytest.raises(ImagePullError, match=r"no progress for 0.5s at 1048576 of "
                           r"4194304 bytes \(the stream stalled\)"):
            await puller.pull(digest, size, dest, "img")
        assert dest.stat().st_size == MiB
        await puller.pull(digest, size, dest, "img")
        assert gw.calls == [0, MiB]
        assert dest.read_bytes() == src.read_bytes()
        assert puller.received == size

    asyncio.run(serving(body))


def test_no_controller_fails_after_the_no_progress_limit(tmp_path: Path) -> None:
    async def main() -> None:
        puller = BlobPuller(lambda: None, no_progress_s=0.3)
        with pytest.raises(ImagePullError, match=r"no progress .* \(not connected"):
            await puller.pull("sha256:" + "1" * 64, 10, tmp_path / "dest", "img")

    asyncio.run(main())


def test_refusals_are_not_retried(tmp_path: Path) -> None:
    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        with pytest.raises(ImagePullError, match="pull of img failed: no blob"):
            await BlobPuller(client).pull("sha256:" + "2" * 64, 10, tmp_path / "d", "img")
        assert gw.calls == [0]
        with pytest.raises(ImagePullError, match="invalid image digest"):
            await BlobPuller(client).pull("md5:00", 10, tmp_path / "d", "img")

    asyncio.run(serving(body))


@pytest.mark.parametrize("case", ["other-bytes", "longer", "shorter"])
def test_wrong_content_is_rejected_and_nothing_is_left(tmp_path: Path, case: str) -> None:
    size = 2 * MiB
    good = tmp_path / "good"
    digest = write_blob(good, size)
    bad = tmp_path / "bad"
    write_blob(bad, {"other-bytes": size, "longer": size + 1, "shorter": size - 1}[case],
               seed=0 if case != "other-bytes" else 1)
    expected = {"other-bytes": "the content has digest sha256:",
                "longer": "the content is longer than its recorded size",
                "shorter": "the content ended at 2097151 of 2097152 bytes"}[case]

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = bad
        cache = ImageCache(tmp_path / "cache")
        puller = BlobPuller(client)
        blob = Blob(digest, size, "elf", "/bin/app")

        async def download(dest: Path) -> None:
            await puller.pull(digest, size, dest, "img")

        with pytest.raises(ImagePullError, match=expected):
            await cache.ensure(blob, download, set)
        assert cache.entries() == {}
        assert os.listdir(tmp_path / "cache") == ["partial"]
        assert os.listdir(tmp_path / "cache" / "partial") == []
        gw.blobs[digest] = good            # the controller serves the right bytes again
        root = await cache.ensure(blob, download, set)
        assert (root / "bin" / "app").read_bytes() == good.read_bytes()

    asyncio.run(serving(body))


def test_concurrent_pulls_of_one_image_share_one_download(tmp_path: Path) -> None:
    size = 3 * MiB
    src = tmp_path / "blob"
    digest = write_blob(src, size)

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = src
        gw.gate = asyncio.Event()
        cache = ImageCache(tmp_path / "cache")
        puller = BlobPuller(client)
        blob = Blob(digest, size, "elf", "/bin/app")

        async def download(dest: Path) -> None:
            await puller.pull(digest, size, dest, "img")

        waiters = [asyncio.create_task(cache.ensure(blob, download, set)) for _ in range(3)]
        await wait_for(lambda: len(gw.calls) == 1, "the download to start")
        assert not any(w.done() for w in waiters)
        gw.gate.set()
        roots = await asyncio.gather(*waiters)
        assert len(set(roots)) == 1
        assert (gw.calls, gw.sent, cache.downloads) == ([0], size, 1)
        assert await cache.ensure(blob, download, set) == roots[0]   # cached: no pull
        assert gw.calls == [0]

    asyncio.run(serving(body))


class BreakingController(FakeController):
    """The fake controller, serving images in 64 KiB chunks; its first stream breaks half
    way through."""

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(images=images)
        self.offsets: list[int] = []

    async def PullImage(self, request: apb.PullImageRequest,
                        context: Any) -> Any:
        self.offsets.append(request.offset)
        content = self.images[request.digest]
        for at in range(request.offset, len(content), 64 << 10):
            if len(self.offsets) == 1 and at >= len(content) // 2:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "gone")
            yield apb.ImageChunk(data=content[at:at + (64 << 10)])


def test_the_agent_resumes_a_broken_pull_through_its_session(
        tmp_path: Path, guest_bins: Path) -> None:
    """The real Agent: its pull goes through the current session's gateway and resumes."""
    image, content = image_of(guest_bins / "worker_hello")

    async def main() -> None:
        ctl = BreakingController({image.digest: content})
        await ctl.start()
        try:
            async with running_agent(tmp_path / "run", [ctl.address]):
                await wait_for(lambda: ctl.in_session and bool(ctl.acked), "a session")
                ctl.send(apb.ControllerMessage(assign=apb.Assignment(
                    name="p", epoch=1, image=image, spec=pb.PartitionSpec())))
                await wait_for(lambda: any(r.phase == P.PARTITION_PHASE_OFF
                                           for r in ctl.reports), "the guest to run", 30.0)
        finally:
            await ctl.stop()
        half = len(content) // 2
        assert ctl.offsets == [0, (half + (64 << 10) - 1) // (64 << 10) * (64 << 10)]
        assert [r.exit_code for r in ctl.reports if r.phase == P.PARTITION_PHASE_OFF] == [3]

    asyncio.run(main())


def test_an_eviction_spares_an_entry_used_after_it_began(tmp_path: Path) -> None:
    """A launch that finds its image while an eviction is deciding keeps it; one that looks
    after the eviction took it sees it gone (and pulls again)."""
    async def main() -> None:
        blobs = Blobs()
        a, b = blobs.blob(1), blobs.blob(2)
        cache = ImageCache(tmp_path / "cache", limit_bytes=3 * MiB)
        for blob in (a, b):
            await cache.ensure(blob, blobs.download(blob), set)
        since = cache.use_count()          # the eviction's snapshot: nothing in use
        assert cache.touch(a.key)          # a launch finds a meanwhile
        # Room for 2 MiB needs both gone; a stays, used after the snapshot.
        assert cache.make_room(2 * MiB, set(), since) == [b.key]
        assert not cache.touch(b.key)
        await cache.ensure(b, blobs.download(b), set)
        assert blobs.pulled == [a.digest, b.digest, b.digest]

    asyncio.run(main())


# -- the cache --------------------------------------------------------------------------------
class Blobs:
    """Distinct 1 MiB "elf" blobs served from memory (the cache does not check ELF)."""

    def __init__(self) -> None:
        self.content: dict[str, bytes] = {}
        self.pulled: list[str] = []

    def blob(self, seed: int, size: int = MiB) -> Blob:
        data = (hashlib.sha256(f"b{seed}".encode()).digest() * (size // 32 + 1))[:size]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.content[digest] = data
        return Blob(digest, size, "elf", "/bin/app")

    def download(self, blob: Blob) -> Callable[[Path], Awaitable[None]]:
        async def fetch(dest: Path) -> None:
            self.pulled.append(blob.digest)
            dest.write_bytes(self.content[blob.digest])

        return fetch


def test_lru_eviction_keeps_the_limit_and_skips_what_partitions_use(tmp_path: Path) -> None:
    async def main() -> None:
        blobs = Blobs()
        a, b, c, d, e, f = (blobs.blob(i) for i in range(6))
        cache = ImageCache(tmp_path / "cache", limit_bytes=int(3.5 * MiB))
        in_use: set[str] = set()

        async def ensure(blob: Blob) -> None:
            await cache.ensure(blob, blobs.download(blob), lambda: set(in_use))

        for blob in (a, b, c):
            await ensure(blob)
        assert set(cache.entries()) == {a.key, b.key, c.key}
        await ensure(a)                                 # a used again: b is now the oldest
        assert blobs.pulled.count(a.digest) == 1
        await ensure(d)
        assert set(cache.entries()) == {a.key, c.key, d.key}
        assert cache.total_bytes() <= cache.limit_bytes
        assert not (tmp_path / "cache" / b.key).exists()
        in_use.add(c.key)                               # c is the oldest, but in use
        await ensure(e)
        assert set(cache.entries()) == {c.key, d.key, e.key}
        assert cache.total_bytes() <= cache.limit_bytes
        in_use.update({d.key, e.key})                   # nothing may go: over the limit
        await ensure(f)
        assert set(cache.entries()) == {c.key, d.key, e.key, f.key}
        assert cache.total_bytes() > cache.limit_bytes
        in_use.clear()                                  # the next pull brings it back under
        await ensure(a)
        assert set(cache.entries()) == {e.key, f.key, a.key}
        assert cache.total_bytes() <= cache.limit_bytes
        too_big = blobs.blob(9, size=4 * MiB)
        with pytest.raises(ImagePullError, match=r"larger than this node's image cache "
                           r"\(3670016 bytes, agent --image-cache-size\)"):
            await ensure(too_big)
        assert too_big.digest not in blobs.pulled

    asyncio.run(main())


def test_a_restart_cleans_partials_and_keeps_entries_with_their_last_use(
        tmp_path: Path) -> None:
    async def main() -> None:
        blobs = Blobs()
        a, b = blobs.blob(1), blobs.blob(2)
        root = tmp_path / "cache"
        cache = ImageCache(root)
        for blob in (b, a):
            await cache.ensure(blob, blobs.download(blob), set)
        cache.touch(b.key)                              # a is now the least recently used
        sizes = cache.entries()
        (root / "partial" / a.key).write_bytes(b"half")
        (root / f"{a.key}.tmp" / "root").mkdir(parents=True)
        (root / f"{b.key}.evict.tmp").mkdir()

        again = ImageCache(root, limit_bytes=sizes[a.key] + sizes[b.key] - 1)
        assert sorted(os.listdir(root)) == sorted([a.key, b.key])
        assert again.entries() == sizes
        assert again.make_room(0, set()) == [a.key]     # the older stamp went first
        assert again.root_for(b.digest, "/bin/app", "elf") is not None

    asyncio.run(main())


def test_a_256_mib_image_is_pulled_and_unpacked_with_flat_memory(tmp_path: Path) -> None:
    """A tar image of 256 MiB through the real gateway and the cache: the unpacked file is
    the pushed one byte for byte, and the process's peak RSS grew far less than the image
    (VmHWM is reset through /proc/self/clear_refs first)."""
    data = tmp_path / "big"
    data_digest = write_blob(data, 256 * MiB, seed=7)
    tar_path = tmp_path / "image.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("bin/app")
        info.size, info.mode = 4, 0o755
        tar.addfile(info, io.BytesIO(b"\x7fELF"))
        tar.add(data, arcname="data/big")
    data.unlink()
    size = tar_path.stat().st_size
    hasher = hashlib.sha256()
    with tar_path.open("rb") as f:
        while piece := f.read(4 * MiB):
            hasher.update(piece)
    digest = "sha256:" + hasher.hexdigest()

    async def body(gw: BlobGateway, client: GatewayClient) -> None:
        gw.blobs[digest] = tar_path
        cache = ImageCache(tmp_path / "cache")
        puller = BlobPuller(client)
        blob = Blob(digest, size, "tar", "/bin/app")

        async def download(dest: Path) -> None:
            await puller.pull(digest, size, dest, "big")

        # A small image first: what the first pull and unpack allocate once (gRPC's
        # buffers, the thread pool) is not what this test measures.
        small = _tar([("bin", None, ""), ("bin/app", b"\x7fELF" * MiB, "")])
        small_path = tmp_path / "small.tar"
        small_path.write_bytes(small)
        small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
        gw.blobs[small_digest] = small_path

        async def warm_up(dest: Path) -> None:
            await puller.pull(small_digest, len(small), dest, "small")

        await cache.ensure(Blob(small_digest, len(small), "tar", "/bin/app"), warm_up, set)
        base = _reset_peak_rss()
        root = await cache.ensure(blob, download, set)
        growth = _peak_rss() - base
        # Holding the image would grow it by 256 MiB; streaming measured 21-34 MiB (the
        # 34 on a loaded machine: gRPC and allocator buffers), so the bound is a quarter.
        assert growth < size // 4, f"peak RSS grew {growth / MiB:.0f} MiB"
        assert os.listdir(tmp_path / "cache" / "partial") == []
        unpacked = hashlib.sha256()
        with (root / "data" / "big").open("rb") as f:
            while piece := f.read(4 * MiB):
                unpacked.update(piece)
        assert "sha256:" + unpacked.hexdigest() == data_digest

    asyncio.run(serving(body, chunk=MiB))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as err:
        pytest.skip(f"cannot reset the peak RSS: {err}")
    base = _status_kib("VmRSS")
    assert _status_kib("VmHWM") - base < 8 * MiB, "the peak RSS was not reset"
    return base


def _peak_rss() -> int:
    return _status_kib("VmHWM")


# -- the image's config at launch ---------------------------------------------------------------
@pytest.fixture(scope="session")
def config_guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build guests")
    out = tmp_path_factory.mktemp("img-guest") / "img_config"
    subprocess.run(["gcc", "-O1", "-static", "-o", str(out), str(GUESTS / "img_config.c")],
                   check=True)
    return out


def _tar(entries: list[tuple[str, bytes | None, str]]) -> bytes:
    """(name, data or None for a directory, symlink target or "") -> tar bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, target in entries:
            info = tarfile.TarInfo(name)
            if target:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o755
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _config_image(node: Node, guest: Path) -> pb.Image:
    content = _tar([("bin", None, ""), ("bin/show", guest.read_bytes(), ""),
                    ("bin/show2", None, "show"), ("marker", b"at-root\n", ""),
                    ("work/dir/marker", b"in-workdir\n", ""), ("lnk", None, "work/dir")])
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    node.blobs[digest] = content
    return pb.Image(name="show", digest=digest, size_bytes=len(content), format="tar",
                    entrypoint="/bin/show", entry_args=["--entry"], cmd=["default", "cmd"],
                    env=["A=1", "B=image", "PATH=/bin"], workdir="/work/dir")


def _ended(node: Node, name: str) -> Callable[[], bool]:
    return lambda: bool(node.reports(name)) and last(node, name).phase in (
        P.PARTITION_PHASE_OFF, P.PARTITION_PHASE_FAILED)


async def _run_to_end(node: Node, name: str, image: pb.Image,
                      spec: pb.PartitionSpec) -> tuple[apb.PartitionReport, list[str]]:
    spec.image = image.name
    node.sup.assign(apb.Assignment(name=name, epoch=1, image=image, spec=spec))
    await wait_for(_ended(node, name), f"{name} to end", 30.0)
    report = last(node, name)
    handle = node.sup.local[name].handle
    out = handle.read_console(0)[0].decode() if handle is not None else ""
    return report, out.splitlines()


def _run_node(node: Node, body: Callable[[Node], Awaitable[None]]) -> None:
    async def main() -> None:
        await node.sup.start()
        try:
            await body(node)
        finally:
            await node.close()

    asyncio.run(main())


def test_launch_applies_the_image_config_and_the_partition_overrides(
        tmp_path: Path, guest_bins: Path, config_guest: Path) -> None:
    async def body(node: Node) -> None:
        image = _config_image(node, config_guest)

        report, out = await _run_to_end(node, "defaults", image, pb.PartitionSpec(
            env={"B": "spec", "C": "3"}))
        assert (report.phase, report.exit_code) == (P.PARTITION_PHASE_OFF, 0), report.reason
        assert [line for line in out if line.startswith("argv")] == [
            "argv[0]=/bin/show", "argv[1]=--entry", "argv[2]=default", "argv[3]=cmd"]
        assert [line for line in out if line.startswith("env:")] == [
            "env:A=1", "env:B=spec", "env:PATH=/bin", "env:C=3"]
        assert out[-2:] == ["cwd=/work/dir", "marker=in-workdir"]

        _, out = await _run_to_end(node, "args", image, pb.PartitionSpec(args=["x", "y"]))
        assert [line for line in out if line.startswith("argv")] == [
            "argv[0]=/bin/show", "argv[1]=--entry", "argv[2]=x", "argv[3]=y"]

        _, out = await _run_to_end(node, "entry", image, pb.PartitionSpec(
            entrypoint="/bin/show2", workdir="/"))
        assert [line for line in out if line.startswith("argv")] == ["argv[0]=/bin/show2"]
        assert out[-2:] == ["cwd=/", "marker=at-root"]

        _, out = await _run_to_end(node, "entry-args", image, pb.PartitionSpec(
            entrypoint="/bin/show2", args=["z"], workdir="/lnk"))
        assert [line for line in out if line.startswith("argv")] == [
            "argv[0]=/bin/show2", "argv[1]=z"]
        assert out[-2:] == ["cwd=/work/dir", "marker=in-workdir"]

        for name, workdir in (("no-dir", "/nope"), ("file-dir", "/marker")):
            report, _ = await _run_to_end(node, name, image, pb.PartitionSpec(workdir=workdir))
            assert (report.phase, report.cause) == (P.PARTITION_PHASE_FAILED,
                                                    apb.REPORT_CAUSE_FAILED)
            assert f"working directory '{workdir}' is not a directory in the image" in \
                report.reason

        report, _ = await _run_to_end(node, "bad-entry", image, pb.PartitionSpec(
            entrypoint="/bin/nothing"))
        assert report.phase == P.PARTITION_PHASE_FAILED
        assert report.reason == ("could not start: entrypoint '/bin/nothing' is not a file "
                                 "in image 'show'")
        assert node.pulls == [image.digest]     # one pull for every partition

    _run_node(Node(tmp_path / "node", guest_bins), body)


def test_guest_command_rules() -> None:
    image = pb.Image(name="i", entrypoint="/e", entry_args=["-a"], cmd=["c"],
                     env=["K=V=W", "E="], workdir="/w")
    cmd = guest_command(image, pb.PartitionSpec())
    assert (cmd.entrypoint, cmd.args, cmd.env, cmd.workdir) == (
        "/e", ("-a", "c"), (("K", "V=W"), ("E", "")), "/w")
    assert guest_command(pb.Image(entrypoint="/e"), pb.PartitionSpec()).workdir == "/"
    for bad, match in (
            (pb.Image(name="i", entrypoint="/e", env=["NOEQUALS"]), "not KEY=VALUE"),
            (pb.Image(name="i", entrypoint="/e", env=["=v"]), "not KEY=VALUE"),
            (pb.Image(name="i", entrypoint="/e", workdir="rel"), "absolute guest path"),
            (pb.Image(name="i", entrypoint="e"), "absolute guest path")):
        with pytest.raises(ImageConfigError, match=match):
            guest_command(bad, pb.PartitionSpec())
    with pytest.raises(ImageConfigError, match="working directory must be an absolute guest path"):
        guest_command(image, pb.PartitionSpec(workdir="x"))
    with pytest.raises(ImagePullError, match="unknown image format 'zip'"):
        cache_key("sha256:" + "0" * 64, "zip", "/e")


def test_eviction_never_removes_an_image_a_partition_on_the_node_uses(
        tmp_path: Path, guest_bins: Path, config_guest: Path) -> None:
    """Real workers, a cache that holds one image: a running partition's image and an ended
    (not forgotten) one's stay while others are pulled; once forgotten, it is evicted."""
    stdin_img, stdin_bytes = image_of(guest_bins / "worker_stdin")
    hello_img, hello_bytes = image_of(guest_bins / "worker_hello")
    show = config_guest.read_bytes()
    digest = "sha256:" + hashlib.sha256(show).hexdigest()
    show_img = pb.Image(name="show", digest=digest, size_bytes=len(show), format="elf",
                        entrypoint="/bin/show")
    other_img = pb.Image(name="other", digest=digest, size_bytes=len(show), format="elf",
                         entrypoint="/bin/other")   # the same blob at another path
    limit = max(len(stdin_bytes), len(hello_bytes), len(show)) + 64 * 1024
    keys = {i.name: cache_key(i.digest, i.format, i.entrypoint)
            for i in (stdin_img, hello_img, show_img, other_img)}

    async def body(node: Node) -> None:
        node.blobs[digest] = show
        node.sup.assign(apb.Assignment(name="p", epoch=1, image=stdin_img,
                                       spec=pb.PartitionSpec(image="worker_stdin", stdin=True)))
        await wait_for(lambda: bool(node.reports("p")) and last(node, "p").phase ==
                       P.PARTITION_PHASE_RUNNING, "p to run", 20.0)
        report, _ = await _run_to_end(node, "q", hello_img, pb.PartitionSpec())
        assert report.phase == P.PARTITION_PHASE_OFF, report.reason
        assert set(node.images.entries()) == {keys["worker_stdin"], keys["worker_hello"]}
        report, out = await _run_to_end(node, "r", show_img, pb.PartitionSpec())
        assert report.phase == P.PARTITION_PHASE_OFF and "argv[0]=/bin/show" in out
        assert set(node.images.entries()) == {keys["worker_stdin"], keys["worker_hello"],
                                              keys["show"]}
        node.command("q", apb.PartitionCommand.KIND_FORGET)
        await wait_for(lambda: "q" not in node.sup.local and
                       not (node.run_dir / "layers" / "q").exists(), "q to be forgotten")
        report, out = await _run_to_end(node, "s", other_img, pb.PartitionSpec())
        assert report.phase == P.PARTITION_PHASE_OFF and "argv[0]=/bin/other" in out
        assert set(node.images.entries()) == {keys["worker_stdin"], keys["show"],
                                              keys["other"]}
        assert len(node.pulls) == 4

    _run_node(Node(tmp_path / "node", guest_bins, cache_limit=limit), body)
