"""State stores of the processors: ABCs, the RocksDB backend and the in-memory backend for tests."""

from processors.state.base import (
    ChangelogRecord,
    PartitionTransaction,
    RestoreRecord,
    Store,
    StorePartition,
    TransactionStatus,
    Write,
    prefix_upper_bound,
)
from processors.state.memory import MemoryStore, MemoryStorePartition
from processors.state.rocksdb import RocksDBOptions, RocksDBStore, RocksDBStorePartition

__all__ = [
    "ChangelogRecord",
    "MemoryStore",
    "MemoryStorePartition",
    "PartitionTransaction",
    "RestoreRecord",
    "RocksDBOptions",
    "RocksDBStore",
    "RocksDBStorePartition",
    "Store",
    "StorePartition",
    "TransactionStatus",
    "Write",
    "prefix_upper_bound",
]
