"""State store ABCs and the per-Kafka-transaction write buffer.

Responsibilities:

- :class:`Store`: a named store of one processor; opens, closes and wipes its partitions (one per
  assigned input partition).
- :class:`StorePartition`: one partition's committed data (bytes keys and values, ascending order),
  the changelog offset it reflects (the checkpoint), atomic application of writes together with the
  checkpoint, and restore from changelog records.
- :class:`PartitionTransaction`: the in-memory write buffer of one partition for one Kafka
  transaction, with read-your-writes and ordered scans that merge buffered writes over stored data.

Keys and values are ``bytes``; codecs live with the processors. The backends are
:mod:`processors.state.rocksdb` (production) and :mod:`processors.state.memory` (tests).
"""

from __future__ import annotations

import enum
import logging
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType, TracebackType

from processors.errors import StateError
from streams.errors import UsageError

logger = logging.getLogger(__name__)

#: One buffered write: ``(key, value)``, where a ``None`` value deletes the key.
Write = tuple[bytes, bytes | None]
#: One record for the store's compacted changelog: ``(key, value)``; ``None`` is a tombstone.
ChangelogRecord = tuple[bytes, bytes | None]
#: One record read back from the changelog during restore: ``(key, value or None, offset)``.
RestoreRecord = tuple[bytes, bytes | None, int]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_RESTORE_BATCH_SIZE = 1000


def prefix_upper_bound(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key that starts with ``prefix``.

    Args:
        prefix: A key prefix.

    Returns:
        The exclusive upper bound for a prefix scan, or ``None`` when there is none (an empty
        prefix, or one made only of ``0xff`` bytes): scan to the end.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def raise_for_invalid_name(kind: str, name: str) -> None:
    """Raises if a processor or store name cannot be used as one directory name.

    Raises:
        UsageError: The name is empty, too long, or has characters other than letters, digits,
            ``.``, ``_`` and ``-`` (or starts with ``.``, ``_`` or ``-``).
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(
            f"{kind} name {name!r} must be 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


class Store(ABC):
    """A named state store of one processor, split into partitions like the processor's input.

    The store owns its open partitions; a partition is opened when its input partition is assigned
    (then restored from the changelog) and closed when it is revoked.

    Args:
        processor: The owning processor's name (a directory name).
        name: The store's name (a directory name; also names the ``<name>-changelog`` topic).
    """

    def __init__(self, processor: str, name: str) -> None:
        raise_for_invalid_name("processor", processor)
        raise_for_invalid_name("store", name)
        self._processor = processor
        self._name = name
        self._partitions: dict[int, StorePartition] = {}

    @property
    def processor(self) -> str:
        """The owning processor's name."""
        return self._processor

    @property
    def name(self) -> str:
        """The store's name."""
        return self._name

    @property
    def partitions(self) -> Mapping[int, StorePartition]:
        """The open partitions by number (read-only view)."""
        return MappingProxyType(self._partitions)

    def open_partition(self, partition: int) -> StorePartition:
        """Opens one partition, creating it empty if it does not exist.

        Args:
            partition: The partition number.

        Returns:
            The open partition; restore it from the changelog before processing.

        Raises:
            StateError: The partition is already open, or cannot be opened (e.g. locked).
            StoreCorruptedError: The partition's files are unreadable; call
                :meth:`wipe_partition`, open it again and restore it from the first offset.
        """
        if not isinstance(partition, int) or partition < 0:
            raise StateError(f"invalid partition number {partition!r}", store=self._name)
        if partition in self._partitions:
            raise StateError("is already open", store=self._name, partition=partition)
        opened = self._open_partition(partition)
        self._partitions[partition] = opened
        logger.debug(
            "opened store partition",
            extra={"store": self._name, "partition": partition, "checkpoint": opened.checkpoint()},
        )
        return opened

    def partition(self, partition: int) -> StorePartition:
        """Returns an open partition.

        Raises:
            StateError: The partition is not open.
        """
        try:
            return self._partitions[partition]
        except KeyError:
            raise StateError("is not open", store=self._name, partition=partition) from None

    def close_partition(self, partition: int) -> None:
        """Closes an open partition; an unfinished transaction on it is aborted.

        Raises:
            StateError: The partition is not open.
        """
        opened = self.partition(partition)
        try:
            opened.close()
        finally:
            del self._partitions[partition]

    def wipe_partition(self, partition: int) -> None:
        """Deletes a partition's data and checkpoint, whether it is open or not.

        An open partition stays open and empty; a closed one is removed from disk, which also works
        when it cannot be opened (:class:`StoreCorruptedError`).

        Raises:
            StateError: The partition is open with an unfinished transaction.
        """
        if partition in self._partitions:
            self._partitions[partition].wipe()
        else:
            self._wipe_closed_partition(partition)
        logger.info("wiped store partition", extra={"store": self._name, "partition": partition})

    def close(self) -> None:
        """Closes every open partition."""
        for number in list(self._partitions):
            self.close_partition(number)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def _open_partition(self, partition: int) -> StorePartition:
        """Opens (creating if needed) one partition's storage."""

    @abstractmethod
    def _wipe_closed_partition(self, partition: int) -> None:
        """Deletes the storage of a partition that is not open."""


class StorePartition(ABC):
    """One partition of a store: committed data plus the changelog offset it reflects.

    Data changes only through :meth:`apply` (used by :meth:`PartitionTransaction.on_committed` and
    :meth:`restore`) and :meth:`wipe`, and every change carries the checkpoint with it, so the data
    and the checkpoint are always consistent with each other.

    The checkpoint is the offset of the last changelog record whose write the partition holds;
    restore resumes at :meth:`next_changelog_offset`.

    Args:
        store_name: The store's name (for errors and logs).
        partition: The partition number.
        checkpoint: The checkpoint read from storage when opening, ``None`` if there is none.
    """

    def __init__(self, store_name: str, partition: int, checkpoint: int | None) -> None:
        self._store_name = store_name
        self._partition = partition
        self._checkpoint = checkpoint
        self._transaction: PartitionTransaction | None = None
        self._closed = False
        self._needs_restore = False

    @property
    def store_name(self) -> str:
        """The store's name."""
        return self._store_name

    @property
    def partition(self) -> int:
        """The partition number."""
        return self._partition

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def checkpoint(self) -> int | None:
        """The offset of the last changelog record the partition reflects, ``None`` if none."""
        return self._checkpoint

    def next_changelog_offset(self) -> int:
        """The changelog offset a restore should start reading from."""
        return 0 if self._checkpoint is None else self._checkpoint + 1

    @abstractmethod
    def get(self, key: bytes) -> bytes | None:
        """Returns the committed value of a key, ``None`` if it has none.

        Raises:
            StateError: The partition is closed.
            StoreCorruptedError: The stored data cannot be read.
        """

    @abstractmethod
    def iter_range(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterates committed items with ``lower <= key < upper`` in ascending key order.

        Args:
            lower: Inclusive lower bound; ``None`` starts at the first key.
            upper: Exclusive upper bound; ``None`` runs to the last key.

        Returns:
            An iterator of ``(key, value)``. It reads a consistent view taken when it is created.

        Raises:
            StateError: The partition is closed (also raised by an iterator still in use when the
                partition closes).
            StoreCorruptedError: The stored data cannot be read.
        """

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Iterates committed items whose key starts with ``prefix``, ascending."""
        return self.iter_range(prefix, prefix_upper_bound(prefix))

    def apply(self, writes: Iterable[Write], changelog_offset: int | None) -> None:
        """Applies writes and the new checkpoint atomically: all of them or none survive a crash.

        Args:
            writes: ``(key, value)`` pairs in order (later writes of a key win); ``None`` deletes.
            changelog_offset: The checkpoint the writes reach; ``None`` keeps the current one (a
                store without changelog, or nothing was produced).

        Raises:
            StateError: The partition is closed, or the offset is older than the checkpoint.
            StoreCorruptedError: The storage failed to write.
        """
        self._raise_if_closed()
        if changelog_offset is not None:
            if not isinstance(changelog_offset, int) or changelog_offset < 0:
                raise StateError(
                    f"invalid changelog offset {changelog_offset!r}",
                    store=self._store_name,
                    partition=self._partition,
                )
            if self._checkpoint is not None and changelog_offset < self._checkpoint:
                raise StateError(
                    f"changelog offset {changelog_offset} is older than the checkpoint {self._checkpoint}",
                    store=self._store_name,
                    partition=self._partition,
                )
        self._apply(writes, changelog_offset)
        if changelog_offset is not None:
            self._checkpoint = changelog_offset

    def begin(self) -> PartitionTransaction:
        """Starts the partition's transaction for one Kafka transaction.

        Raises:
            StateError: The partition is closed, another transaction on it is unfinished, or the
                last transaction failed to apply and the partition was not restored since.
        """
        self._raise_if_closed()
        self._raise_if_transaction_active("begin a transaction")
        if self._needs_restore:
            raise StateError(
                "a committed transaction failed to apply; restore the partition first",
                store=self._store_name,
                partition=self._partition,
            )
        self._transaction = PartitionTransaction(self)
        return self._transaction

    def restore(
        self, records: Iterable[RestoreRecord], *, batch_size: int = DEFAULT_RESTORE_BATCH_SIZE
    ) -> int:
        """Applies changelog records in batches, each batch with its last offset as checkpoint.

        Records at or below the current checkpoint are already reflected and skipped, so a restore
        may start anywhere at or before :meth:`next_changelog_offset`.

        Args:
            records: ``(key, value or None, offset)`` in changelog order.
            batch_size: Records per atomic write.

        Returns:
            The number of records applied.

        Raises:
            StateError: The partition is closed, has an unfinished transaction, or the offsets of
                the records to apply do not increase.
            StoreCorruptedError: The storage failed to write.
        """
        self._raise_if_closed()
        self._raise_if_transaction_active("restore")
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        applied = 0
        batch: list[Write] = []
        last = self._checkpoint
        for key, value, offset in records:
            if last is not None and offset <= last:
                if applied or batch:
                    raise StateError(
                        f"restore offsets do not increase: {offset} after {last}",
                        store=self._store_name,
                        partition=self._partition,
                    )
                continue
            batch.append((key, value))
            last = offset
            if len(batch) >= batch_size:
                self.apply(batch, last)
                applied += len(batch)
                batch = []
        if batch:
            self.apply(batch, last)
            applied += len(batch)
        self._needs_restore = False
        return applied

    def wipe(self) -> None:
        """Deletes all data and the checkpoint; the partition stays open and empty.

        Raises:
            StateError: The partition is closed or has an unfinished transaction.
        """
        self._raise_if_closed()
        self._raise_if_transaction_active("wipe")
        self._wipe()
        self._checkpoint = None
        self._needs_restore = False

    def close(self) -> None:
        """Releases the partition; an unfinished transaction is aborted. Idempotent."""
        if self._closed:
            return
        transaction = self._transaction
        if transaction is not None and not transaction.finished:
            logger.warning(
                "closing store partition with an unfinished transaction; aborting it",
                extra={"store": self._store_name, "partition": self._partition},
            )
            transaction.abort()
        self._transaction = None
        self._closed = True
        self._close()

    def _on_transaction_failed(self) -> None:
        # The Kafka transaction committed but its writes are not here: the partition is behind its
        # changelog until a restore replays from the checkpoint.
        self._needs_restore = True

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise StateError("is closed", store=self._store_name, partition=self._partition)

    def _raise_if_transaction_active(self, action: str) -> None:
        if self._transaction is not None and not self._transaction.finished:
            raise StateError(
                f"cannot {action}: a transaction is {self._transaction.status.value}",
                store=self._store_name,
                partition=self._partition,
            )

    @abstractmethod
    def _apply(self, writes: Iterable[Write], changelog_offset: int | None) -> None:
        """Writes the data and (unless ``None``) the checkpoint in one atomic batch."""

    @abstractmethod
    def _wipe(self) -> None:
        """Deletes all data and the checkpoint."""

    @abstractmethod
    def _close(self) -> None:
        """Releases the storage; called once."""


class TransactionStatus(enum.Enum):
    """Lifecycle of a :class:`PartitionTransaction`.

    ::

        OPEN ──prepare()──▶ PREPARED ──on_committed(offset)──▶ COMMITTED
          │                    │
          │                    └──abort()──▶ ABORTED
          └──abort()──────────────────────▶ ABORTED

        OPEN / PREPARED ──(a step raised)──▶ FAILED

    - OPEN: reads and writes allowed.
    - PREPARED: the changelog records were taken for producing; reads only.
    - COMMITTED: the Kafka transaction committed and the writes are in the partition.
    - ABORTED: the buffer was discarded (Kafka transaction aborted, or the partition closed).
    - FAILED: applying after the Kafka commit failed; the partition is behind its changelog and
      must be restored (from its checkpoint) before the next transaction.

    COMMITTED, ABORTED and FAILED are final.
    """

    OPEN = "open"
    PREPARED = "prepared"
    COMMITTED = "committed"
    ABORTED = "aborted"
    FAILED = "failed"


_TRANSITIONS: Mapping[TransactionStatus, frozenset[TransactionStatus]] = {
    TransactionStatus.OPEN: frozenset(
        {TransactionStatus.PREPARED, TransactionStatus.ABORTED, TransactionStatus.FAILED}
    ),
    TransactionStatus.PREPARED: frozenset(
        {TransactionStatus.COMMITTED, TransactionStatus.ABORTED, TransactionStatus.FAILED}
    ),
    TransactionStatus.COMMITTED: frozenset(),
    TransactionStatus.ABORTED: frozenset(),
    TransactionStatus.FAILED: frozenset(),
}
_READABLE = frozenset({TransactionStatus.OPEN, TransactionStatus.PREPARED})


class PartitionTransaction:
    """The write buffer of one store partition for one Kafka transaction.

    Reads see the transaction's own writes over the partition's committed data. Nothing reaches
    the partition before the Kafka transaction that carried the changelog records commits:

    1. The processor reads and writes through :meth:`get`, :meth:`put`, :meth:`delete` and the scans.
    2. Before committing Kafka, the runtime calls :meth:`prepare` and produces the returned records
       (last write per key; ``None`` is a tombstone) to ``<store>-changelog``, same partition.
    3. After the Kafka commit, the runtime calls :meth:`on_committed` with the offset of the last
       changelog record produced; the writes and that checkpoint go to the partition in one batch.
    4. If the Kafka transaction aborts (or anything fails before the commit), :meth:`abort`.

    Get one from :meth:`StorePartition.begin`; a partition has at most one unfinished transaction.
    See :class:`TransactionStatus` for the lifecycle.
    """

    def __init__(self, partition: StorePartition) -> None:
        self._partition = partition
        self._status = TransactionStatus.OPEN
        self._writes: dict[bytes, bytes | None] = {}
        # Buffered keys kept sorted lazily: new keys collect in _unsorted until a scan needs order.
        self._sorted: list[bytes] = []
        self._unsorted: list[bytes] = []

    @property
    def status(self) -> TransactionStatus:
        """The lifecycle state."""
        return self._status

    @property
    def finished(self) -> bool:
        """Whether the transaction reached a final state (committed, aborted or failed)."""
        return self._status not in _READABLE

    @property
    def partition(self) -> StorePartition:
        """The store partition the transaction writes to."""
        return self._partition

    def __len__(self) -> int:
        """The number of keys written (each key counted once)."""
        return len(self._writes)

    def get(self, key: bytes) -> bytes | None:
        """Returns the key's value as this transaction sees it, ``None`` if absent or deleted.

        Raises:
            StateError: The transaction is finished.
        """
        self._raise_if_not_readable()
        if key in self._writes:
            return self._writes[key]
        return self._partition.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Buffers a write.

        Raises:
            StateError: The transaction is not open (prepared or finished).
            UsageError: The key or value is not ``bytes``.
        """
        self._raise_if_not_open()
        if type(key) is not bytes or type(value) is not bytes:
            raise UsageError(
                f"store keys and values are bytes, got {type(key).__name__} and {type(value).__name__}"
            )
        self._buffer(key, value)

    def delete(self, key: bytes) -> None:
        """Buffers a delete (a tombstone in the changelog).

        Raises:
            StateError: The transaction is not open.
            UsageError: The key is not ``bytes``.
        """
        self._raise_if_not_open()
        if type(key) is not bytes:
            raise UsageError(f"store keys are bytes, got {type(key).__name__}")
        self._buffer(key, None)

    def iter_range(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterates ``lower <= key < upper`` ascending, as this transaction sees the store.

        Buffered puts override stored values, buffered deletes hide stored keys. Buffered writes
        are captured when the iterator is created; later writes do not show in it.

        Raises:
            StateError: The transaction is finished.
        """
        self._raise_if_not_readable()
        stored = self._partition.iter_range(lower, upper)
        if not self._writes:
            return stored
        keys = self._sorted_keys()
        start = 0 if lower is None else bisect_left(keys, lower)
        stop = len(keys) if upper is None else bisect_left(keys, upper)
        if start >= stop:
            return stored
        writes = self._writes
        return _merge(stored, [(key, writes[key]) for key in keys[start:stop]])

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Iterates keys starting with ``prefix`` ascending, as this transaction sees the store.

        Raises:
            StateError: The transaction is finished.
        """
        return self.iter_range(prefix, prefix_upper_bound(prefix))

    def changelog_records(self) -> list[ChangelogRecord]:
        """The records to produce to the changelog: the last write of every key written.

        Raises:
            StateError: The transaction is finished.
        """
        self._raise_if_not_readable()
        return list(self._writes.items())

    def prepare(self) -> list[ChangelogRecord]:
        """Freezes the buffer (OPEN → PREPARED) and returns the changelog records to produce.

        Raises:
            StateError: The transaction is not open.
        """
        self._transition(TransactionStatus.PREPARED)
        return list(self._writes.items())

    def on_committed(self, changelog_offset: int | None) -> None:
        """Applies the buffered writes and the checkpoint to the partition in one batch.

        Call after the Kafka transaction carrying :meth:`prepare`'s records committed.

        Args:
            changelog_offset: Offset of the last changelog record produced for this transaction;
                ``None`` when none was produced (no writes, or a store without changelog).

        Raises:
            StateError: The transaction is not prepared, or applying failed (the transaction is
                then FAILED: restore the partition from its checkpoint before using it).
        """
        self._raise_if_transition_invalid(TransactionStatus.COMMITTED)
        try:
            self._partition.apply(self._writes.items(), changelog_offset)
        except Exception as exc:
            self._status = TransactionStatus.FAILED
            self._discard()
            self._partition._on_transaction_failed()
            if isinstance(exc, StateError):
                raise
            raise StateError(
                f"applying a committed transaction failed: {exc}",
                store=self._partition.store_name,
                partition=self._partition.partition,
            ) from exc
        self._status = TransactionStatus.COMMITTED
        self._discard()

    def abort(self) -> None:
        """Discards the buffer (OPEN or PREPARED → ABORTED); a no-op once aborted or failed.

        Raises:
            StateError: The transaction already committed.
        """
        if self._status in (TransactionStatus.ABORTED, TransactionStatus.FAILED):
            return
        self._transition(TransactionStatus.ABORTED)
        self._discard()

    def _buffer(self, key: bytes, value: bytes | None) -> None:
        if key not in self._writes:
            self._unsorted.append(key)
        self._writes[key] = value

    def _sorted_keys(self) -> list[bytes]:
        if self._unsorted:
            # Timsort merges the sorted run with the new keys in about linear time.
            self._sorted.extend(self._unsorted)
            self._sorted.sort()
            self._unsorted.clear()
        return self._sorted

    def _discard(self) -> None:
        self._writes = {}
        self._sorted = []
        self._unsorted = []

    def _transition(self, target: TransactionStatus) -> None:
        self._raise_if_transition_invalid(target)
        self._status = target

    def _raise_if_transition_invalid(self, target: TransactionStatus) -> None:
        if target not in _TRANSITIONS[self._status]:
            raise StateError(
                f"transaction cannot go from {self._status.value} to {target.value}",
                store=self._partition.store_name,
                partition=self._partition.partition,
            )

    def _raise_if_not_open(self) -> None:
        if self._status is not TransactionStatus.OPEN:
            raise StateError(
                f"cannot write: the transaction is {self._status.value}",
                store=self._partition.store_name,
                partition=self._partition.partition,
            )

    def _raise_if_not_readable(self) -> None:
        if self._status not in _READABLE:
            raise StateError(
                f"cannot read: the transaction is {self._status.value}",
                store=self._partition.store_name,
                partition=self._partition.partition,
            )


def _merge(
    stored: Iterator[tuple[bytes, bytes]], buffered: list[tuple[bytes, bytes | None]]
) -> Iterator[tuple[bytes, bytes]]:
    """Merges sorted stored items with sorted buffered writes; buffered wins, ``None`` hides."""
    i = 0
    count = len(buffered)
    for key, value in stored:
        while i < count and buffered[i][0] < key:
            buffered_key, buffered_value = buffered[i]
            i += 1
            if buffered_value is not None:
                yield buffered_key, buffered_value
        if i < count and buffered[i][0] == key:
            buffered_value = buffered[i][1]
            i += 1
            if buffered_value is not None:
                yield key, buffered_value
            continue
        yield key, value
    for buffered_key, buffered_value in buffered[i:]:
        if buffered_value is not None:
            yield buffered_key, buffered_value
