"""etcd stays small: the leader's compaction, events bounded by count, NOSPACE reported with
what to do. Each test that compacts or fills etcd runs an etcd of its own (compaction and a
raised alarm are cluster-wide)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from inproc import FakeAgent, code_of, replica, wait_for
from pyetcd import etcdrpc
from viridian.v1 import controller_pb2 as cpb

from controller.embedded import Cluster, nospace_message
from controller.errors import Compacted, StoreFull
from controller.etcd_server import EtcdProcess, etcd_binary
from controller.loops.compaction import CompactionLoop, EventTrimLoop
from controller.store import EtcdStore, Store
from controller.store.etcd import Op

running = contextlib.contextmanager(replica)
RECORDS = 1000
RECORD_BYTES = 4096


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    etcd = EtcdProcess(tmp_path / "etcd")
    etcd.start()
    yield etcd
    etcd.stop()


def _db_size(endpoint: str) -> int:
    """etcd's dbSize with every write so far in it: its backend commits in batches (every
    100 ms), and a Hash request commits first."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = etcdrpc.MaintenanceStub(channel)
        stub.Hash(etcdrpc.HashRequest(), timeout=10)
        return int(stub.Status(etcdrpc.StatusRequest(), timeout=10).dbSize)


async def _write_and_delete(etcd: EtcdStore, prefix: str) -> None:
    """RECORDS records of RECORD_BYTES written (100 per transaction), then deleted."""
    for start in range(0, RECORDS, 100):
        await etcd.txn([], [Op.put(f"{prefix}/r{i:05d}", bytes([i % 251]) * RECORD_BYTES)
                            for i in range(start, start + 100)])
    assert await etcd.delete_prefix(prefix + "/") == RECORDS


def test_compaction_bounds_the_database_and_defrag_shrinks_it(
        own_etcd: EtcdProcess) -> None:
    """1000 records of 4 KiB written and deleted: etcd's file grows; the loop compacts their
    history one period later (not before); the pages compaction freed are reused, so the
    same churn again does not grow the file (without compaction it doubles); a
    defragmentation gives the space back to the file system."""
    now = [0.0]

    async def scenario() -> dict[str, int]:
        etcd = EtcdStore([own_etcd.endpoint])
        store = Store(etcd, "/upkeep")
        loop = CompactionLoop(store, every=300, clock=lambda: now[0])
        empty = (await etcd.status()).db_size
        assert _db_size(own_etcd.endpoint) == empty
        await _write_and_delete(etcd, "/upkeep/data")
        written = await etcd.revision()
        grown = _db_size(own_etcd.endpoint)
        await loop.reconcile()          # t=0: samples the revision, compacts nothing
        assert loop.compacted == 0
        now[0] = 299.0
        await loop.reconcile()          # not a whole period yet
        assert loop.compacted == 0
        old = await etcd.range_page("/upkeep/data/", revision=written - 1, limit=1)
        assert old.kvs, "the history is still there before a period has passed"
        now[0] = 300.0
        await loop.reconcile()          # compacts to the revision seen at t=0
        assert loop.compacted == written
        with pytest.raises(Compacted):
            await etcd.range_page("/upkeep/data/", revision=written - 1, limit=1)
        # Wait until the backend has dropped it: a physical compaction one revision on
        # returns once etcd's compactions so far are done.
        await etcd.compact(await etcd.put("/upkeep/mark", b"1"), physical=True)
        compacted = _db_size(own_etcd.endpoint)
        await _write_and_delete(etcd, "/upkeep/again")  # the same churn, compacted
        await etcd.compact(await etcd.put("/upkeep/mark", b"2"), physical=True)
        churned = _db_size(own_etcd.endpoint)
        await etcd.defragment()
        defragmented = (await etcd.status()).db_size
        etcd.close()
        return {"empty": empty, "grown": grown, "compacted": compacted,
                "churned_again": churned, "defragmented": defragmented}

    sizes = run(scenario())
    print("dbSize bytes:", json.dumps(sizes))
    assert sizes["grown"] > sizes["empty"] + RECORDS * RECORD_BYTES
    assert sizes["churned_again"] < sizes["grown"] * 5 // 4  # freed pages were reused
    assert sizes["defragmented"] < sizes["empty"] + RECORDS * RECORD_BYTES // 4


def test_the_leader_compacts_every_period(own_etcd: EtcdProcess) -> None:
    with running(own_etcd.endpoint, compact_every=0.5) as api:
        etcd = api.replica.store.etcd
        start = api.run(etcd.put("/leader-compacts/k", b"1"))
        api.run(etcd.put("/leader-compacts/k", b"2"))

        def compacted() -> bool:
            try:
                api.run(etcd.range_page("/leader-compacts/", revision=start, limit=1))
            except Compacted:
                return True
            return False

        wait_for(compacted, timeout=15, what="compaction by the leader")
        assert api.replica.compaction.compacted >= start
        kv = api.run(etcd.get("/leader-compacts/k"))
        assert kv is not None and kv.value == b"2"  # current values are kept


def test_a_later_page_after_compaction_is_aborted(own_etcd: EtcdProcess) -> None:
    with running(own_etcd.endpoint) as api:
        for i in range(4):
            FakeAgent(api, f"node-{i}", 2, 1 << 30).close()
        first = api.stub.ListNodes(cpb.ListNodesRequest(page_size=2))
        assert first.next_page_token
        etcd = api.replica.store.etcd
        api.run(etcd.put("/after/k", b"x"))
        api.run(etcd.compact(api.run(etcd.revision()), physical=True))
        code, msg = code_of(lambda: api.stub.ListNodes(cpb.ListNodesRequest(
            page_size=2, page_token=first.next_page_token)))
        assert code == grpc.StatusCode.ABORTED
        assert "list again from the first page" in msg
        again = api.stub.ListNodes(cpb.ListNodesRequest(page_size=10))
        assert [n.name for n in again.nodes] == [f"node-{i}" for i in range(4)]


def test_events_are_trimmed_to_the_newest(etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix)
        for i in range(25):
            await store.events.record("Partition", "trim", f"R{i:02d}", "m")
        trim = EventTrimLoop(store, keep=10)
        await trim.reconcile()
        page = await store.events.page(want=100)
        assert [e.reason for e in page.items] == [f"R{i:02d}" for i in range(15, 25)]
        await trim.reconcile()  # nothing beyond: nothing deleted
        assert await store.etcd.count_prefix(store.keys.events) == 10
        assert await store.events.trim(1) == 9
        assert [e.reason for e in (await store.events.page(want=5)).items] == ["R24"]
        store.close()

    run(scenario())


def test_the_leader_trims_events_beyond_max_events(etcd_endpoint: str, prefix: str) -> None:
    async def old_events() -> None:
        store = Store(EtcdStore([etcd_endpoint]), prefix)
        for i in range(30):
            await store.events.record("Partition", "old", f"R{i:02d}", "m")
        store.close()

    run(old_events())
    with running(etcd_endpoint, prefix, max_events=5) as api:
        def old_left() -> list[str] | None:
            reply = api.stub.ListEvents(cpb.ListEventsRequest(object="old"))
            reasons = [e.reason for e in reply.events]
            return reasons if len(reasons) <= 5 else None

        left = wait_for(old_left, timeout=15, what="trim by the leader")
        assert left == [f"R{i:02d}" for i in range(30 - len(left), 30)]  # the newest


def _etcdctl(etcd: EtcdProcess, *args: str) -> str:
    ctl = etcd_binary().parent / "etcdctl"
    done = subprocess.run([str(ctl), f"--endpoints={etcd.endpoint}", *args],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_nospace_is_resource_exhausted_with_what_to_do(tmp_path: Path) -> None:
    """A real etcd with a 2 MiB quota, filled: the store raises StoreFull, the API answers
    RESOURCE_EXHAUSTED with the way out, `up` sees the alarm; then the documented recovery
    (delete, compact, defrag, disarm with etcdctl) makes writes work again."""
    etcd = EtcdProcess(tmp_path / "etcd", quota_bytes=2 << 20)
    etcd.start()
    try:
        with running(etcd.endpoint) as api:
            agent = FakeAgent(api, "n1", 2, 1 << 30)
            store = api.replica.store.etcd

            async def fill() -> int:
                for i in range(200):
                    try:
                        await store.put(f"/fill/{i:04d}", b"x" * (64 << 10))
                    except StoreFull as err:
                        assert "etcdctl alarm disarm" in str(err)
                        return i
                raise AssertionError("a 2 MiB etcd took 12 MiB")

            filled = api.run(fill())
            assert filled > 5
            assert api.run(store.alarms()) == ["NOSPACE"]
            code, msg = code_of(lambda: api.stub.CordonNode(cpb.CordonNodeRequest(name="n1")))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            for needle in ("NOSPACE", "etcdctl compact", "etcdctl defrag",
                           "etcdctl alarm disarm", "docs/operations.md"):
                assert needle in msg
            assert "\n" not in msg
            # Reads still work, and `viridian up` sees the alarm in etcd's health.
            assert [n.name for n in api.stub.ListNodes(cpb.ListNodesRequest()).nodes] == ["n1"]
            healthy, reason = etcd.health()
            assert not healthy and "NOSPACE" in reason
            up = Cluster(tmp_path, 0, "127.0.0.1:0", etcd=etcd)
            assert "etcdctl alarm disarm" in nospace_message(up.etcd_alarm())
            assert nospace_message("") == ""
            # The recovery of docs/operations.md, with etcdctl.
            api.run(store.delete_prefix("/fill/"))
            status = json.loads(_etcdctl(etcd, "endpoint", "status", "-w", "json"))
            _etcdctl(etcd, "compact", str(status[0]["Status"]["header"]["revision"]))
            _etcdctl(etcd, "defrag")
            _etcdctl(etcd, "alarm", "disarm")
            assert api.run(store.alarms()) == []
            node = api.stub.CordonNode(cpb.CordonNodeRequest(name="n1"))
            assert node.spec.cordoned
            assert etcd.health() == (True, "") and up.etcd_alarm() == ""
            agent.close()
    finally:
        etcd.stop()


TINY_GUEST = "void _start(void) { __asm__ volatile(\"mov $60, %eax; xor %edi, %edi; syscall\"); }\n"


def _tiny_elf(tmp_path: Path) -> bytes:
    """A static x86_64 ELF of a few KiB (exit(0)): pushes are about etcd here, not bytes."""
    src = tmp_path / "tiny.c"
    src.write_text(TINY_GUEST)
    subprocess.run(["gcc", "-nostdlib", "-static", "-s", "-O1", "-o", str(tmp_path / "tiny"),
                    str(src)], check=True)
    return (tmp_path / "tiny").read_bytes()


def _push_and_remove(api: Any, elf: bytes, first: int, count: int) -> None:
    """Push `count` images of distinct content (the ELF plus a trailing counter) and delete
    each; wait until the GC has deleted their content records."""
    for i in range(first, first + count):
        content = elf + f"{i:08d}".encode()

        def messages(content: bytes = content, i: int = i) -> Iterator[cpb.PushImageRequest]:
            yield cpb.PushImageRequest(header=cpb.ImageHeader(
                name="churn", tag=f"t{i}", format="elf", size_bytes=len(content)))
            yield cpb.PushImageRequest(chunk=content)

        api.stub.PushImage(messages())
        api.stub.DeleteImage(cpb.DeleteImageRequest(name=f"churn:t{i}"))
    store = api.replica.store
    wait_for(lambda: not api.run(store.etcd.get_prefix(store.keys.kind("contents")))[0],
             timeout=30, what="the GC to delete the content records")


def test_a_thousand_pushes_and_deletes_leave_the_database_bounded(
        own_etcd: EtcdProcess, tmp_path: Path) -> None:
    """Image records are metadata only, and the history they leave is compacted: after the
    first 600 pushes and deletes (compacted), 400 more leave etcd's file about where it was.
    What compaction removes is the history: without it, every deleted record stays readable
    at its old revision (how much the file then grows depends on the free pages earlier
    compactions left, so the size is not the control: 233 KiB to 1 MiB for 600 more)."""
    elf = _tiny_elf(tmp_path)
    with running(own_etcd.endpoint, data_dir=tmp_path / "ctl", image_gc_grace_s=0.5,
                 max_events=100) as api:
        etcd = api.replica.store.etcd
        images = api.replica.store.keys.kind("images")

        def compact() -> int:
            api.run(etcd.compact(api.run(etcd.revision()), physical=True))
            return _db_size(own_etcd.endpoint)

        # The first rounds grow the file to what the churn needs; compaction frees pages
        # that later rounds reuse.
        for first in range(0, 600, 200):
            _push_and_remove(api, elf, first, 200)
            settled = compact()
        sizes = []
        for first in range(600, 1000, 200):
            _push_and_remove(api, elf, first, 200)
            sizes.append(compact())
        # The control: a round without compaction keeps its deleted records readable.
        first_push = api.run(etcd.revision()) + 1
        _push_and_remove(api, elf, 1000, 200)
        kept = api.run(etcd.range_page(images, revision=first_push + 1, limit=1))
        assert kept.kvs, "the pushed-then-deleted records are history until compacted"
        compact()
        with pytest.raises(Compacted):
            api.run(etcd.range_page(images, revision=first_push + 1, limit=1))
    print("dbSize bytes: settled", settled, "rounds", sizes)
    assert max(sizes) <= settled + 512 * 1024, (settled, sizes)
