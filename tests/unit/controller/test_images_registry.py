"""The OCI registry blob store against a real registry (Debian's docker-registry, started
here on a free loopback port with a temporary filesystem store, delete enabled): the store
itself, then a controller replica keeping its image bytes there."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from inproc import code_of, compile_hello, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import controller_pb2 as cpb

from controller.errors import InvalidArgument, NotFound, OutOfRange
from controller.images.registry import RegistryBlobStore, tag_of

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
pytestmark = pytest.mark.skipif(not os.path.exists(REGISTRY),
                                reason="docker-registry is not installed (apt docker-registry)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (root / "registry.log").read_text()
            try:
                with urllib.request.urlopen(url + "/v2/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.05)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


async def _store_round_trip(url: str, spool_dir: Path) -> None:
    store = RegistryBlobStore(url, spool_dir, repository="test/store")
    await store.start()
    try:
        assert await store.digests() == []
        content = os.urandom((3 << 20) + 123)
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        async with await store.spool() as spool:
            for i in range(0, len(content), 1 << 20):
                await spool.write(content[i:i + (1 << 20)])
            assert await spool.commit() == digest
        assert os.listdir(spool_dir) == []
        assert await store.has(digest) and await store.size(digest) == len(content)
        assert await store.digests() == [digest]
        got = [c async for c in store.open_read(digest)]
        assert b"".join(got) == content and max(map(len, got)) <= 1 << 20
        for offset in (1, (1 << 20) + 5, len(content)):
            assert b"".join([c async for c in store.open_read(digest, offset)]) == \
                content[offset:]
        with pytest.raises(OutOfRange):
            [c async for c in store.open_read(digest, len(content) + 1)]
        with pytest.raises(NotFound):
            [c async for c in store.open_read("sha256:" + "2" * 64)]
        # a wrong announced digest: nothing stored, the spool file gone
        with pytest.raises(InvalidArgument):
            async with await store.spool() as spool:
                await spool.write(b"other")
                await spool.commit("sha256:" + "3" * 64)
        assert os.listdir(spool_dir) == [] and await store.digests() == [digest]
        # the manifest tag keeps the blob referenced for the registry's GC
        async with store.session.get(f"{store.base}/manifests/{tag_of(digest)}", headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json"}) as resp:
            assert resp.status == 200 and digest in await resp.text()
        await store.delete(digest)
        assert not await store.has(digest) and await store.digests() == []
    finally:
        await store.close()


def test_registry_store_round_trip(registry: str, tmp_path: Path) -> None:
    asyncio.run(_store_round_trip(registry, tmp_path / "spool"))


def test_a_controller_keeps_image_bytes_in_the_registry(
        registry: str, etcd_endpoint: str, prefix: str, tmp_path: Path) -> None:
    elf = compile_hello(tmp_path)
    gen = replica(etcd_endpoint, prefix, data_dir=tmp_path / "ctl", blob_registry=registry,
                  image_gc_grace_s=0.5)
    api = next(gen)
    try:
        image = push(api.stub, "hello", elf)
        store = api.replica.blobs
        assert api.run(store.has(image.digest))
        assert not (tmp_path / "ctl" / "blobs").exists()  # nothing local but the spool dir
        chunks = api.gateway.PullImage(apb.PullImageRequest(digest=image.digest, offset=10))
        assert b"".join(c.data for c in chunks) == elf[10:]
        api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello"))
        wait_for(lambda: not api.run(store.has(image.digest)), what="the registry blob GC")
        code, _ = code_of(lambda: list(api.gateway.PullImage(
            apb.PullImageRequest(digest=image.digest))))
        assert code == grpc.StatusCode.NOT_FOUND
    finally:
        next(gen, None)
