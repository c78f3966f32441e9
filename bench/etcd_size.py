"""etcd database size under churn, with and without the leader's compaction.

    python bench/etcd_size.py [--rounds 5] [--records 1000] [--bytes 4096] [--json PATH]

Each round writes RECORDS records of BYTES (100 per transaction) and deletes them, as a
cluster that creates and deletes objects does. Two throw-away etcd members: one never
compacted, one compacted after every round to the revision of the round before (what the
leader's CompactionLoop does with a one-period lag). dbSize is read after each round (after a
Hash request, which commits etcd's write batch), and once more after a final defragmentation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from pyetcd import etcdrpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.etcd_server import EtcdProcess  # noqa: E402
from controller.store import EtcdStore  # noqa: E402
from controller.store.etcd import Op  # noqa: E402


def db_size(endpoint: str) -> int:
    with grpc.insecure_channel(endpoint) as channel:
        stub = etcdrpc.MaintenanceStub(channel)
        stub.Hash(etcdrpc.HashRequest(), timeout=30)
        return int(stub.Status(etcdrpc.StatusRequest(), timeout=30).dbSize)


async def churn(endpoint: str, rounds: int, records: int, size: int,
                compact: bool) -> dict[str, Any]:
    etcd = EtcdStore([endpoint], timeout=30)
    sizes = [db_size(endpoint)]
    previous = 0
    for r in range(rounds):
        for start in range(0, records, 100):
            await etcd.txn([], [Op.put(f"/bench/r{r}/{i:06d}", bytes([i % 251]) * size)
                                for i in range(start, min(start + 100, records))])
        await etcd.delete_prefix(f"/bench/r{r}/")
        now = await etcd.revision()
        if compact and previous:
            await etcd.compact(previous, physical=True)
        previous = now
        sizes.append(db_size(endpoint))
    await etcd.defragment(timeout=120)
    defragmented = db_size(endpoint)
    etcd.close()
    return {"after_rounds": sizes, "defragmented": defragmented}


def mib(n: int) -> str:
    return f"{n / (1 << 20):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--bytes", type=int, default=4096)
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    result: dict[str, Any] = {"rounds": args.rounds, "records": args.records,
                              "record_bytes": args.bytes}
    for label, compact in (("never compacted", False), ("compacted (leader)", True)):
        with tempfile.TemporaryDirectory() as tmp:
            server = EtcdProcess(Path(tmp) / "etcd")
            server.start()
            try:
                result[label] = asyncio.run(churn(server.endpoint, args.rounds, args.records,
                                                  args.bytes, compact))
            finally:
                server.stop()
    print(f"dbSize in MiB; each round writes and deletes {args.records} records of "
          f"{args.bytes} bytes")
    header = ["", "start", *[f"round {i + 1}" for i in range(args.rounds)], "defragmented"]
    print(" | ".join(f"{h:>18}" for h in header))
    for label in ("never compacted", "compacted (leader)"):
        row = result[label]
        cells = [label, *[mib(s) for s in row["after_rounds"]], mib(row["defragmented"])]
        print(" | ".join(f"{c:>18}" for c in cells))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
