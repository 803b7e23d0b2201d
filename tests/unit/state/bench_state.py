"""Micro-benchmark of the state stores (not collected by pytest).

Run: ``python tests/unit/state/bench_state.py``; numbers are quoted in ``docs/state.md``.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from processors.state import MemoryStore, RocksDBStore, Store, StorePartition

VALUE = b"v" * 100
KEYS = 200_000
TRANSACTIONS = 100_000
SCANS = 5_000


def key(i: int) -> bytes:
    return b"key-%012d" % i  # 16 bytes


def timed(label: str, count: int, unit: str, fn: Callable[[], object]) -> None:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    print(f"  {label:<44} {count / elapsed:>12,.0f} {unit}/s   ({count:,} in {elapsed:.3f} s)")


def bench(store: Store) -> None:
    partition = store.open_partition(0)
    offset = [0]

    def commits(puts_per_tx: int, transactions: int, first: int) -> Callable[[], None]:
        def run() -> None:
            n = first
            for _ in range(transactions):
                tx = partition.begin()
                for _ in range(puts_per_tx):
                    tx.put(key(n), VALUE)
                    n += 1
                tx.prepare()
                offset[0] += puts_per_tx
                tx.on_committed(offset[0])

        return run

    timed("put+commit, 1 put per transaction", TRANSACTIONS, "tx", commits(1, TRANSACTIONS, 0))
    timed("put+commit, 100 puts per transaction (puts)", KEYS, "puts", commits(100, KEYS // 100, 0))

    def gets(hit: bool) -> Callable[[], None]:
        def run() -> None:
            get = partition.get
            for i in range(KEYS):
                get(key(i) if hit else b"missing-%08d" % i)

        return run

    timed("get, present key", KEYS, "gets", gets(True))
    timed("get, absent key", KEYS, "gets", gets(False))
    timed("full scan (items)", KEYS, "items", lambda: sum(1 for _ in partition.iter_range()))

    def short_scans(reader: StorePartition | object) -> Callable[[], None]:
        def run() -> None:
            for i in range(SCANS):
                lower = key(i * 37)
                for _ in reader.iter_range(lower, key(i * 37 + 100)):  # type: ignore[attr-defined]
                    pass

        return run

    timed("range scan of 100 keys (scans)", SCANS, "scans", short_scans(partition))
    tx = partition.begin()
    for i in range(0, KEYS, 10):
        tx.put(key(i), b"new")
    timed("range scan of 100 keys, 10% buffered (scans)", SCANS, "scans", short_scans(tx))
    tx.abort()

    records = [(key(i), VALUE, offset[0] + 1 + i) for i in range(KEYS)]
    timed("restore, batches of 1000 (records)", KEYS, "records", lambda: partition.restore(records))


def main() -> None:
    print(f"python {platform.python_version()}, rocksdict {version('rocksdict')}, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        print("rocksdb (defaults: 16 MiB memtable, lz4, bloom 10, WAL on, no fsync)")
        with RocksDBStore("bench", "store", Path(tmp)) as store:
            bench(store)
    print("memory")
    with MemoryStore("bench", "store") as store:
        bench(store)


if __name__ == "__main__":
    main()
