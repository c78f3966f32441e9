"""Images off etcd, through in-process controller replicas on a real etcd over real gRPC:
tags and references, paged lists, rm (refused in use unless forced), garbage collection of
records and blobs, pushes that fail leaving nothing, pulls from an offset, and replication
of the local blob store between two replicas."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from inproc import Api, FakeAgent, code_of, compile_hello, create, push, replica, wait_for
from viridian.v1 import agent_pb2 as apb
from viridian.v1 import agent_pb2_grpc, controller_pb2_grpc
from viridian.v1 import controller_pb2 as cpb
from viridian.v1 import types_pb2 as pb

from controller.store.keys import Keys

GRACE_S = 0.5


@contextmanager
def running(etcd_endpoint: str, prefix: str, data_dir: Path, grace_s: float = GRACE_S,
            **settings: object) -> Iterator[Api]:
    gen = replica(etcd_endpoint, prefix, data_dir=data_dir, image_gc_grace_s=grace_s,
                  identity=f"replica-{data_dir.name}", **settings)
    api = next(gen)
    try:
        yield api
    finally:
        next(gen, None)


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_hello(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def api(etcd_endpoint: str, prefix: str, tmp_path: Path) -> Iterator[Api]:
    with running(etcd_endpoint, prefix, tmp_path / "ctl") as a:
        yield a


def blob_files(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "blobs" / "sha256"))


def uploads(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "blobs" / "uploads"))


def etcd_keys(api: Api, kind: str) -> list[str]:
    store = api.replica.store
    kvs, _ = api.run(store.etcd.get_prefix(store.keys.kind(kind)))
    return [Keys.name_of(kv.key) for kv in kvs]


def listing(api: Api, page_size: int = 0) -> list[pb.Image]:
    out: list[pb.Image] = []
    token = ""
    while True:
        resp = api.stub.ListImages(cpb.ListImagesRequest(page_size=page_size,
                                                         page_token=token))
        out.extend(resp.images)
        token = resp.next_page_token
        if not token:
            return out


def tar_of(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o755
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def push_tar(api: Api, ref_name: str, content: bytes, tag: str = "", **config: object
             ) -> pb.Image:
    def messages() -> Iterator[cpb.PushImageRequest]:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(
            name=ref_name, tag=tag, format="tar", entrypoint="/bin/app",
            size_bytes=len(content), **config))  # type: ignore[arg-type]
        for i in range(0, len(content), 1 << 20):
            yield cpb.PushImageRequest(chunk=content[i:i + (1 << 20)])

    return api.stub.PushImage(messages())


def pull(api: Api, digest: str, offset: int = 0, local_only: bool = False) -> list[bytes]:
    return [c.data for c in api.gateway.PullImage(
        apb.PullImageRequest(digest=digest, offset=offset, local_only=local_only))]


def test_tags_list_pages_and_used_by(api: Api, elf: bytes) -> None:
    first = push(api.stub, "hello", elf)
    assert first.tag == "latest" and first.source == "elf"
    tagged = api.stub.TagImage(cpb.TagImageRequest(source="hello", target="hello:v1"))
    assert (tagged.name, tagged.tag, tagged.digest) == ("hello", "v1", first.digest)
    api.stub.TagImage(cpb.TagImageRequest(source=f"hello@{first.digest}", target="other"))
    app = push_tar(api, "app", tar_of(("bin/app", elf)), tag="1.0",
                   entry_args=["--flag"], cmd=["x"], env=["A=1"], workdir="/srv")
    assert (app.tag, list(app.entry_args), list(app.cmd), list(app.env), app.workdir) == \
        ("1.0", ["--flag"], ["x"], ["A=1"], "/srv")
    whole = [(i.name, i.tag) for i in listing(api)]
    assert whole == [("app", "1.0"), ("hello", "latest"), ("hello", "v1"), ("other", "latest")]
    assert [(i.name, i.tag) for i in listing(api, page_size=1)] == whole
    assert etcd_keys(api, "images") == ["app:1.0", "hello:latest", "hello:v1", "other:latest"]
    assert sorted(etcd_keys(api, "contents")) == sorted({first.digest, app.digest})

    p = create(api, "user", image="hello:v1", desired_state=pb.DESIRED_STATE_OFF)
    assert p.spec.image_digest == first.digest
    used = {(i.name, i.tag): list(i.used_by) for i in listing(api)}
    assert used[("hello", "latest")] == ["user"] and used[("app", "1.0")] == []

    for bad, needle in (("Hello", "DNS label"), ("hello:-x", "invalid image tag"),
                        ("hello@sha256:12", "digest")):
        code, msg = code_of(lambda b=bad: create(api, "bad", image=b))  # type: ignore[misc]
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg, msg
    code, msg = code_of(lambda: create(api, "bad", image="hello:nope"))
    assert code == grpc.StatusCode.NOT_FOUND and "'hello:nope'" in msg
    code, msg = code_of(lambda: api.stub.TagImage(
        cpb.TagImageRequest(source="ghost", target="x")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: api.stub.ListImages(cpb.ListImagesRequest(page_token="!!")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_retagging_never_changes_what_a_partition_runs(api: Api, elf: bytes) -> None:
    old = push(api.stub, "hello", elf)
    agent = FakeAgent(api, "n1", vcpus=4, memory=1 << 30)
    try:
        create(api, "pinned")
        (assign,) = wait_for(lambda: agent.assignments("pinned"), what="assignment")
        assert assign.image.digest == old.digest and assign.image.entrypoint == "/bin/hello"
        new = push(api.stub, "hello", elf + b"\0" * 16)  # new content under hello:latest
        assert new.digest != old.digest
        assert api.stub.GetPartition(cpb.GetPartitionRequest(name="pinned")
                                     ).spec.image_digest == old.digest
        # the node may pull exactly what it runs, not what the tag names now
        assert b"".join(pull(api, old.digest)) == elf
    finally:
        agent.close()


def test_rm_refuses_in_use_unless_forced_and_gc_frees_records_and_blobs(
        api: Api, elf: bytes, tmp_path: Path) -> None:
    data = tmp_path / "ctl"
    image = push(api.stub, "hello", elf)
    api.stub.TagImage(cpb.TagImageRequest(source="hello", target="hello:v2"))
    keep = push_tar(api, "keep", tar_of(("bin/app", elf)))
    create(api, "user", image="hello:v2", desired_state=pb.DESIRED_STATE_OFF)
    # another tag keeps the content: removing one tag is fine
    api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello:latest"))
    code, msg = code_of(lambda: api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello:v2")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "user" in msg and "--force" in msg
    assert image.digest[7:] in blob_files(data)
    api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello:v2", force=True))
    assert [(i.name, i.tag) for i in listing(api)] == [("keep", "latest")]
    # after the grace: the content record, then the blob, are gone; the kept one stays
    wait_for(lambda: etcd_keys(api, "contents") == [keep.digest], what="content collected")
    wait_for(lambda: blob_files(data) == [keep.digest[7:]], what="blob swept")
    code, msg = code_of(lambda: api.stub.StartPartition(cpb.StartPartitionRequest(name="user")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "image rm --force" in msg
    code, msg = code_of(lambda: pull(api, image.digest))
    assert code == grpc.StatusCode.NOT_FOUND and "deleted" in msg
    code, _ = code_of(lambda: api.stub.DeleteImage(cpb.DeleteImageRequest(name="hello")))
    assert code == grpc.StatusCode.NOT_FOUND
    # by digest: every tag of that name with the content
    api.stub.TagImage(cpb.TagImageRequest(source="keep", target="keep:b"))
    api.stub.DeleteImage(cpb.DeleteImageRequest(name=f"keep@{keep.digest}"))
    assert listing(api) == []


def test_a_failed_or_interrupted_push_leaves_nothing(api: Api, elf: bytes,
                                                     tmp_path: Path) -> None:
    data = tmp_path / "ctl"
    code, msg = code_of(lambda: push(api.stub, "junk", b"#!/bin/sh\necho hi\n"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not an x86 ELF" in msg

    def announced_wrong() -> Iterator[cpb.PushImageRequest]:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(
            name="wrong", digest="sha256:" + "0" * 64))
        yield cpb.PushImageRequest(chunk=elf)

    code, msg = code_of(lambda: api.stub.PushImage(announced_wrong()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not match" in msg

    sent = threading.Event()
    release = threading.Event()

    def interrupted() -> Iterator[cpb.PushImageRequest]:
        yield cpb.PushImageRequest(header=cpb.ImageHeader(name="cut", size_bytes=64 << 20))
        for _ in range(4):
            yield cpb.PushImageRequest(chunk=os.urandom(1 << 20))
        sent.set()
        release.wait(30)

    future = api.stub.PushImage.future(interrupted())
    assert sent.wait(30)
    wait_for(lambda: uploads(data), what="the push spooling")
    future.cancel()
    release.set()
    wait_for(lambda: not uploads(data), what="the spool removed")
    assert blob_files(data) == [] and listing(api) == []
    assert etcd_keys(api, "images") == [] and etcd_keys(api, "contents") == []


def test_pull_from_an_offset_in_1mib_chunks(api: Api, elf: bytes) -> None:
    big = os.urandom(8 << 20)
    content = tar_of(("bin/app", elf), ("data/big", big))
    image = push_tar(api, "big", content)
    assert image.size_bytes == len(content)
    chunks = pull(api, image.digest)
    assert max(len(c) for c in chunks) == 1 << 20
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == image.digest[7:]
    for offset in (1, (1 << 20) + 7, len(content) - 1):
        assert b"".join(pull(api, image.digest, offset)) == content[offset:]
    assert pull(api, image.digest, len(content)) == []
    code, _ = code_of(lambda: pull(api, image.digest, len(content) + 1))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    code, _ = code_of(lambda: pull(api, "sha256:xyz"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: pull(api, "sha256:" + "1" * 64))
    assert code == grpc.StatusCode.NOT_FOUND


def test_replicas_copy_blobs_and_a_replica_without_one_fetches_it(
        etcd_endpoint: str, prefix: str, tmp_path: Path, elf: bytes) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    with running(etcd_endpoint, prefix, a_dir) as a, running(etcd_endpoint, prefix, b_dir) as b:
        wait_for(lambda: len(a.replica.cache.replicas) == 2, what="both replicas known")
        wait_for(lambda: len(b.replica.cache.replicas) == 2, what="both replicas known")
        content = tar_of(("bin/app", elf), ("data/x", os.urandom(3 << 20)))
        image = push_tar(a, "app", content)
        hexd = image.digest[7:]
        assert hexd in blob_files(a_dir) and hexd in blob_files(b_dir)  # copied at push
        # B loses its copy: a local-only pull says so, a node's pull fetches it from A (B's
        # background catch-up held off meanwhile)
        b.run(b.replica.image_gc.stop())
        (b_dir / "blobs" / "sha256" / hexd).unlink()
        code, _ = code_of(lambda: pull(b, image.digest, local_only=True))
        assert code == grpc.StatusCode.NOT_FOUND
        assert b"".join(pull(b, image.digest, offset=5)) == content[5:]
        assert hexd in blob_files(b_dir)
        # lost again, and asked for by three nodes at once: one copy from A serves them all
        served: list[bool] = []
        backend = a.replica.images
        real_read = backend.read

        def counting(digest: str, offset: int, local_only: bool):  # type: ignore[no-untyped-def]
            served.append(local_only)
            return real_read(digest, offset, local_only)

        backend.read = counting  # type: ignore[method-assign]
        (b_dir / "blobs" / "sha256" / hexd).unlink()
        results: list[bytes] = []
        threads = [threading.Thread(target=lambda: results.append(b"".join(pull(b, image.digest))))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        backend.read = real_read  # type: ignore[method-assign]
        assert results == [content] * 3 and served == [True]
        # lost again: the background catch-up restores it without being asked
        b.loop.call_soon_threadsafe(b.replica.image_gc.start)
        (b_dir / "blobs" / "sha256" / hexd).unlink()
        wait_for(lambda: hexd in blob_files(b_dir), what="catch-up from the peer")
    with running(etcd_endpoint, prefix, a_dir) as a:
        # B is down: nothing to replicate to, no warning; B catches up when it is back
        later = push(a.stub, "hello", elf)
        assert later.digest[7:] not in blob_files(b_dir)
        with running(etcd_endpoint, prefix, b_dir):
            wait_for(lambda: later.digest[7:] in blob_files(b_dir), what="B catching up")
        # a replica that is registered but does not answer: the push still succeeds, with
        # a warning event, and that replica would catch up later
        store = a.replica.store
        a.run(store.etcd.put(store.keys.replica("ghost"), b"127.0.0.1:1"))
        wait_for(lambda: "ghost" in a.replica.cache.replicas, what="the ghost replica")
        push(a.stub, "hello2", elf + b"\0")
        events = a.stub.ListEvents(cpb.ListEventsRequest(object="hello2:latest")).events
        assert [e.reason for e in events] == ["ReplicationDelayed", "Pushed"]
        assert events[0].type == "Warning" and "127.0.0.1:1" in events[0].message


def test_replication_over_mutual_tls_and_only_for_controllers(
        etcd_endpoint: str, prefix: str, tmp_path: Path, elf: bytes) -> None:
    from controller.embedded import open_channel
    from controller.security.files import ClusterPki
    from controller.security.tls import controller_options

    pki = ClusterPki(tmp_path / "pki")
    _, admin = pki.admin()
    dirs = {"a": tmp_path / "a", "b": tmp_path / "b"}
    certs = {k: pki.controller(f"ctl-{k}", []) for k in dirs}
    pki.write_bootstrap(certs["a"], [(admin, "admin")])
    pki.write_bootstrap(certs["b"], [(admin, "admin")])

    def secure(k: str) -> dict[str, object]:
        return {"tls": certs[k].tls(), "ca": certs[k].ca_keypair(),
                "bootstrap_tokens": certs[k].bootstrap_tokens()}

    with running(etcd_endpoint, prefix, dirs["a"], **secure("a")) as a, \
            running(etcd_endpoint, prefix, dirs["b"], **secure("b")) as b:
        wait_for(lambda: len(a.replica.cache.replicas) == 2, what="both replicas known")
        stub = controller_pb2_grpc.ControllerStub(
            open_channel(a.address, pki.ca().cert_pem, admin))
        image = push(stub, "hello", elf)
        assert image.digest[7:] in blob_files(dirs["b"])  # copied over mutual TLS
        node = agent_pb2_grpc.AgentGatewayStub(grpc.secure_channel(
            b.replica.agent_address, pki.node("n1").tls().channel_credentials(),
            options=controller_options()))
        code, _ = code_of(lambda: node.ReplicateBlob(apb.ReplicateBlobRequest(
            digest=image.digest, source=a.replica.agent_advertise)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = code_of(lambda: list(node.PullImage(apb.PullImageRequest(
            digest=image.digest, local_only=True))))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_the_size_limit_is_the_replicas_and_refused_early(
        etcd_endpoint: str, prefix: str, tmp_path: Path, elf: bytes) -> None:
    data = tmp_path / "small"
    with running(etcd_endpoint, prefix, data, max_image_bytes=len(elf) + 10) as api:
        def announced() -> Iterator[cpb.PushImageRequest]:
            yield cpb.PushImageRequest(header=cpb.ImageHeader(name="big", size_bytes=8 << 30))

        code, msg = code_of(lambda: api.stub.PushImage(announced()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in msg
        code, msg = code_of(lambda: push(api.stub, "big", elf + b"\0" * 11))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in msg
        assert push(api.stub, "fits", elf).size_bytes == len(elf)
        assert uploads(data) == [] and len(blob_files(data)) == 1


def test_content_a_partition_is_pinned_to_outlives_its_tag(api: Api, elf: bytes,
                                                           tmp_path: Path) -> None:
    data = tmp_path / "ctl"
    old = push(api.stub, "hello", elf)
    create(api, "pinned", desired_state=pb.DESIRED_STATE_OFF)
    new = push(api.stub, "hello", elf + b"\0" * 8)  # the tag moves to new content
    # a GC pass after the grace: an unused image pushed later is collected by then
    probe = push(api.stub, "probe", elf + b"\0" * 4)
    api.stub.DeleteImage(cpb.DeleteImageRequest(name="probe"))
    wait_for(lambda: probe.digest not in etcd_keys(api, "contents"), what="probe collected")
    assert set(etcd_keys(api, "contents")) == {old.digest, new.digest}
    assert old.digest[7:] in blob_files(data)
    assert b"".join(pull(api, old.digest)) == elf  # a restart elsewhere can still pull it
    api.stub.DeletePartition(cpb.DeletePartitionRequest(name="pinned"))
    wait_for(lambda: etcd_keys(api, "contents") == [new.digest], what="old content collected")
    wait_for(lambda: blob_files(data) == [new.digest[7:]], what="old blob swept")


class FlakyPeer(agent_pb2_grpc.AgentGatewayServicer):
    """A peer replica whose first PullImage stream breaks after `cut` bytes."""

    def __init__(self, content: bytes, cut: int) -> None:
        self.content, self.cut = content, cut
        self.offsets: list[int] = []

    def PullImage(self, request: apb.PullImageRequest, context: grpc.ServicerContext
                  ) -> Iterator[apb.ImageChunk]:
        self.offsets.append(request.offset)
        first = len(self.offsets) == 1
        for at in range(request.offset, len(self.content), 1 << 20):
            if first and at >= self.cut:
                context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
            yield apb.ImageChunk(data=self.content[at:at + (1 << 20)])


def test_a_copy_from_a_peer_resumes_where_it_broke(etcd_endpoint: str, prefix: str,
                                                   tmp_path: Path) -> None:
    """(A long GC grace: the copied blob has no content record, the sweep must not race.)"""
    from concurrent.futures import ThreadPoolExecutor

    content = os.urandom((5 << 20) + 3)
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    peer = FlakyPeer(content, 2 << 20)
    server = grpc.server(ThreadPoolExecutor(2))
    agent_pb2_grpc.add_AgentGatewayServicer_to_server(peer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with running(etcd_endpoint, prefix, tmp_path / "ctl", grace_s=600) as api:
            _copy_twice(api, tmp_path, peer, port, content, digest)
    finally:
        server.stop(None)


def _copy_twice(api: Api, tmp_path: Path, peer: FlakyPeer, port: int, content: bytes,
                digest: str) -> None:
    reply = api.gateway.ReplicateBlob(apb.ReplicateBlobRequest(
        digest=digest, source=f"127.0.0.1:{port}", size_bytes=len(content)))
    assert reply.present and peer.offsets == [0, 2 << 20]
    assert (tmp_path / "ctl" / "blobs" / "sha256" / digest[7:]).read_bytes() == content
    # a peer sending other bytes than the digest says: refused, nothing kept
    bad = "sha256:" + hashlib.sha256(b"x").hexdigest()
    code, msg = code_of(lambda: api.gateway.ReplicateBlob(apb.ReplicateBlobRequest(
        digest=bad, source=f"127.0.0.1:{port}")))
    assert code == grpc.StatusCode.NOT_FOUND and "does not match" in msg
    assert blob_files(tmp_path / "ctl") == [digest[7:]] and uploads(tmp_path / "ctl") == []
