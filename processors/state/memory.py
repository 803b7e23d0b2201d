"""In-memory state store with the same semantics as the RocksDB one, for tests.

Responsibilities:

- :class:`MemoryStore`: keeps every partition's data for the life of the store object, so closing
  and reopening a partition (a rebalance in a test) finds its data and checkpoint again.
- :class:`MemoryStorePartition`: a sorted key list (``bisect``) plus a dict; scans read a copy of
  the range taken when the scan starts, like a RocksDB iterator's implicit snapshot.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from processors.errors import StateError
from processors.state.base import Store, StorePartition, Write


@dataclass
class _PartitionData:
    keys: list[bytes] = field(default_factory=list)
    values: dict[bytes, bytes] = field(default_factory=dict)
    checkpoint: int | None = None


class MemoryStore(Store):
    """A store whose partitions live in process memory.

    Args:
        processor: The owning processor's name.
        name: The store's name.
    """

    def __init__(self, processor: str, name: str) -> None:
        super().__init__(processor, name)
        self._data: dict[int, _PartitionData] = {}

    def _open_partition(self, partition: int) -> MemoryStorePartition:
        data = self._data.setdefault(partition, _PartitionData())
        return MemoryStorePartition(self.name, partition, data)

    def _wipe_closed_partition(self, partition: int) -> None:
        self._data.pop(partition, None)


class MemoryStorePartition(StorePartition):
    """One in-memory partition.

    Args:
        store_name: The store's name.
        partition: The partition number.
        data: The partition's data, owned by the :class:`MemoryStore`.
    """

    def __init__(self, store_name: str, partition: int, data: _PartitionData) -> None:
        super().__init__(store_name, partition, data.checkpoint)
        self._data = data

    def get(self, key: bytes) -> bytes | None:
        """Returns the committed value of a key, ``None`` if it has none.

        Raises:
            StateError: The partition is closed.
        """
        self._raise_if_closed()
        return self._data.values.get(key)

    def iter_range(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterates committed items with ``lower <= key < upper`` ascending.

        Raises:
            StateError: The partition is closed, also while the iterator is in use.
        """
        self._raise_if_closed()
        keys = self._data.keys
        start = 0 if lower is None else bisect_left(keys, lower)
        stop = len(keys) if upper is None else bisect_left(keys, upper)
        values = self._data.values
        return self._iterate([(key, values[key]) for key in keys[start:stop]])

    def _iterate(self, items: list[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for item in items:
            if self._closed:
                raise StateError("closed during a scan", store=self.store_name, partition=self.partition)
            yield item

    def _apply(self, writes: Iterable[Write], changelog_offset: int | None) -> None:
        # Materialized first so that a failing iterable leaves the partition untouched (atomicity).
        writes = list(writes)
        keys = self._data.keys
        values = self._data.values
        for key, value in writes:
            if value is None:
                if values.pop(key, None) is not None:
                    del keys[bisect_left(keys, key)]
            else:
                if key not in values:
                    insort(keys, key)
                values[key] = value
        if changelog_offset is not None:
            self._data.checkpoint = changelog_offset

    def _wipe(self) -> None:
        self._data.keys.clear()
        self._data.values.clear()
        self._data.checkpoint = None

    def _close(self) -> None:
        # The data stays with the MemoryStore so that reopening the partition finds it.
        pass
