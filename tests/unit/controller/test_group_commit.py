"""Group commit against a real etcd: concurrent transactions share proposals, each keeps its
own compares and outcome, and writes to one key keep their order."""

from __future__ import annotations

import asyncio
from typing import Any

from controller.errors import StoreFull, StoreUnavailable
from controller.store import EtcdStore
from controller.store._group_commit import GroupCommit
from controller.store.etcd import Compare, Op


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_transactions_share_revisions_and_keep_their_own_outcomes(
        etcd_endpoint: str, prefix: str) -> None:
    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        taken = f"{prefix}/taken"
        await store.put(taken, b"first")
        names = [f"{prefix}/p{i}" for i in range(200)]
        # 200 creates of fresh keys, and 20 that compare on a key that exists (must fail).
        results = await asyncio.gather(
            *(store.txn([Compare(k, 0)], [Op.put(k, b"v")]) for k in names),
            *(store.txn([Compare(taken, 0)], [Op.put(f"{prefix}/never{i}", b"x")])
              for i in range(20)))
        created, refused = results[:200], results[200:]
        assert all(r.succeeded for r in created)
        assert not any(r.succeeded for r in refused)
        for k, r in zip(names, created, strict=True):
            kv = await store.get(k)
            assert kv is not None and kv.mod_revision == r.revision
        kvs, _ = await store.get_prefix(f"{prefix}/never")
        assert kvs == []
        group = store.group_commit()
        # Far fewer proposals than transactions: the writes shared revisions.
        assert len({r.revision for r in created}) < 50
        assert group.carried >= 221 and group.batches < 60
        store.close()

    run(scenario())


def test_writes_to_one_key_keep_their_order_and_never_share_a_batch(
        etcd_endpoint: str, prefix: str) -> None:
    """Increments of one counter, each compared on the revision it read: with the reads all
    done first, exactly one of each round's writers may win, and whatever won, the key's
    final value is the last winner's (never a lost update)."""

    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        key = f"{prefix}/counter"
        await store.put(key, b"0")
        other = [f"{prefix}/o{i}" for i in range(50)]

        async def bump() -> bool:
            for _ in range(200):
                kv = await store.get(key)
                assert kv is not None
                res = await store.txn([Compare(key, kv.mod_revision)],
                                      [Op.put(key, str(int(kv.value) + 1).encode())])
                if res.succeeded:
                    return True
            return False

        got = await asyncio.gather(*(bump() for _ in range(30)),
                                   *(store.put(k, b"x") for k in other))
        assert all(got[:30])
        kv = await store.get(key)
        assert kv is not None and int(kv.value) == 30
        store.close()

    run(scenario())


def test_a_transaction_that_reads_what_another_writes_waits_for_the_next_batch() -> None:
    """Unit level, with a fake etcd: no batch ever holds a writer of a key beside another
    transaction that reads or writes it, and the waiting one keeps its place."""

    sent: list[list[tuple[set[str], set[str]]]] = []
    release = asyncio.Event()

    async def send(req: Any) -> Any:
        from pyetcd import etcdrpc
        nested = [op.request_txn for op in req.success] if req.success and \
            req.success[0].HasField("request_txn") else [req]
        sent.append([({c.key.decode() for c in t.compare},
                      {o.request_put.key.decode() for o in t.success}) for t in nested])
        await release.wait()
        resp = etcdrpc.TxnResponse(succeeded=True)
        resp.header.revision = len(sent)
        if len(nested) > 1 or req.success and req.success[0].HasField("request_txn"):
            for _ in nested:
                resp.responses.add().response_txn.succeeded = True
        return resp

    async def scenario() -> None:
        group = GroupCommit(send)
        group.MAX_BATCHES = 1
        first = asyncio.ensure_future(group.txn([], [Op.put("a", b"1")]))
        await asyncio.sleep(0)
        calls = [
            group.txn([Compare("k", 1)], [Op.put("k", b"2")]),   # writes k
            group.txn([Compare("k", 1)], [Op.put("m", b"2")]),   # reads k: next batch
            group.txn([], [Op.put("n", b"2")]),                  # independent: joins
            group.txn([], [Op.put("k", b"3")]),                  # writes k again: waits
        ]
        rest = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(first, *rest)
        assert sent[0] == [(set(), {"a"})]
        assert sent[1] == [({"k"}, {"k"}), (set(), {"n"})]
        # The reader of k and the second writer of k conflict too: one batch each, in order.
        assert sent[2] == [({"k"}, {"m"})]
        assert sent[3] == [(set(), {"k"})]

    run(scenario())


def test_a_refused_batch_is_asked_again_one_by_one() -> None:
    """etcd full refuses a batch with any put in it, though a delete alone would pass:
    each transaction then gets its own answer."""

    async def send(req: Any) -> Any:
        from pyetcd import etcdrpc
        nested = [op.request_txn for op in req.success if op.HasField("request_txn")]
        if nested or any(op.HasField("request_put") for op in req.success):
            raise StoreFull("etcd is full")
        resp = etcdrpc.TxnResponse(succeeded=True)
        resp.header.revision = 7
        return resp

    async def scenario() -> None:
        group = GroupCommit(send)
        group.MAX_BATCHES = 1
        blocker = asyncio.ensure_future(group.txn([], [Op.delete("z")]))
        await asyncio.sleep(0)
        put = asyncio.ensure_future(group.txn([], [Op.put("a", b"1")]))
        delete = asyncio.ensure_future(group.txn([], [Op.delete("b")]))
        assert (await blocker).succeeded
        assert (await delete).revision == 7
        try:
            await put
        except StoreFull:
            pass
        else:
            raise AssertionError("the put should have been refused")

    run(scenario())


def test_an_unreachable_etcd_fails_the_whole_batch_as_maybe_applied() -> None:
    calls = 0

    async def send(req: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise StoreUnavailable("etcd down")

    async def scenario() -> None:
        group = GroupCommit(send)
        group.MAX_BATCHES = 1
        got = await asyncio.gather(*(group.txn([], [Op.put(f"k{i}", b"v")]) for i in range(10)),
                                   return_exceptions=True)
        assert all(isinstance(g, StoreUnavailable) for g in got)
        assert calls == 2  # one alone, then the nine together: never sent twice

    run(scenario())


def test_a_put_on_an_expired_lease_fails_alone_not_its_whole_batch(
        etcd_endpoint: str, prefix: str) -> None:
    """etcd refuses a whole request when one put names a lease that is gone; the others
    batched with it must still be applied (each is then sent on its own)."""

    async def scenario() -> None:
        store = EtcdStore([etcd_endpoint])
        lease = await store.grant_lease(60)
        await store.revoke_lease(lease)
        group = store.group_commit()
        group.MAX_BATCHES = 1
        blocker = asyncio.ensure_future(store.put(f"{prefix}/first", b"x"))
        await asyncio.sleep(0)
        got = await asyncio.gather(
            *(store.txn([Compare(f"{prefix}/k{i}", 0)], [Op.put(f"{prefix}/k{i}", b"v")])
              for i in range(5)),
            store.put(f"{prefix}/leased", b"x", lease=lease),
            return_exceptions=True)
        await blocker
        assert all(not isinstance(g, BaseException) and g.succeeded for g in got[:5]), got
        assert isinstance(got[5], StoreUnavailable) and "lease not found" in str(got[5])
        for i in range(5):
            assert await store.get(f"{prefix}/k{i}") is not None
        assert await store.get(f"{prefix}/leased") is None
        store.close()

    run(scenario())
