"""RocksDB state store on ``rocksdict``: one database per (store, partition).

Responsibilities:

- :class:`RocksDBStore`: lays partitions out as ``<state_dir>/<processor>/<store>/<partition>/``,
  shares one block cache between them, and wipes partitions that cannot be opened.
- :class:`RocksDBStorePartition`: point reads, ordered range scans on a raw iterator, and atomic
  application of writes together with the checkpoint.
- Translating rocksdict failures: unreadable or unopenable files become
  :class:`~processors.errors.StoreCorruptedError` (wipe and restore), a held lock a plain
  :class:`~processors.errors.StateError`.

Layout of one partition database:

- column family ``default``: the store's keys and values, raw bytes (``Options(raw_mode=True)``);
- column family ``__meta__``: ``changelog_offset`` (the checkpoint, 8 bytes big-endian) and
  ``format_version``. The checkpoint is written in the same ``WriteBatch`` as the data it covers.

Durability: the write-ahead log stays on, because it is what makes a batch spanning both column
families atomic across a crash; writes are not fsynced (``sync=False``). A process crash loses
nothing (the WAL is in the OS page cache); a machine crash may lose the last batches, but WAL
recovery (point-in-time) always yields a prefix of whole batches, and each batch carries its own
checkpoint, so the data and the checkpoint still agree and the restore replays the lost tail from
the changelog. Flushing or fsyncing per commit would buy nothing.

rocksdict pitfalls worked around here (0.3.29, covered by tests):

1. ``ReadOptions.set_iterate_lower_bound`` sets the *upper* bound. Scans therefore never use the
   lower-bound option: they ``seek(lower)``. ``set_iterate_upper_bound`` does work (checked against
   a model over random ranges), so scans set it, and still stop in Python at the first key
   ``>= upper``.
2. Iterating a ``Snapshot`` ignores the snapshot and reads the live database. No snapshots are
   used: a raw iterator already reads a consistent view taken when it is created, and the data of a
   partition only changes when its single transaction commits.
3. ``Rdict.items()`` stops silently on a read error (a corrupt block ends the scan as if the data
   ended); the raw iterator's ``status()`` raises instead, so scans check it when they end.
4. A column-family handle or a live iterator keeps the database open after ``close()``, so a
   reopen fails on the lock. Closing drops the handle and invalidates the partition's iterators.
"""

from __future__ import annotations

import logging
import shutil
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DbClosedError,
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
    WriteOptions,
)

from processors.errors import StateError, StoreCorruptedError
from processors.state.base import Store, StorePartition, Write
from streams.errors import ConfigError

logger = logging.getLogger(__name__)

META_COLUMN_FAMILY = "__meta__"
CHECKPOINT_KEY = b"changelog_offset"
FORMAT_VERSION_KEY = b"format_version"
FORMAT_VERSION = 1

_MIB = 1024 * 1024
_COMPRESSION = {
    "lz4": DBCompressionType.lz4,
    "zstd": DBCompressionType.zstd,
    "snappy": DBCompressionType.snappy,
    "none": DBCompressionType.none,
}


@dataclass(frozen=True, kw_only=True)
class RocksDBOptions:
    """RocksDB tuning for a small machine running several partitions of several stores.

    Attributes:
        write_buffer_size: Memtable size per partition before it is flushed to a file.
        max_write_buffer_number: Memtables per partition (one active, the rest flushing).
        block_cache_size: Block cache shared by all partitions of one store.
        bloom_bits_per_key: Bloom filter bits per key, so point reads of absent keys skip files.
        compression: Block compression: ``lz4``, ``zstd``, ``snappy`` or ``none``.
        max_background_jobs: Flush and compaction threads per partition.
        max_total_wal_size: WAL size that forces a flush of the column family holding the oldest
            log; keeps the rarely flushed ``__meta__`` family from pinning old logs.
        keep_log_file_num: Info LOG files kept per partition (RocksDB keeps one per open otherwise).
        sync_writes: Fsync every batch; off by default (see the module docstring).
    """

    write_buffer_size: int = 16 * _MIB
    max_write_buffer_number: int = 3
    block_cache_size: int = 32 * _MIB
    bloom_bits_per_key: int = 10
    compression: Literal["lz4", "zstd", "snappy", "none"] = "lz4"
    max_background_jobs: int = 2
    max_total_wal_size: int = 64 * _MIB
    keep_log_file_num: int = 2
    sync_writes: bool = False

    def __post_init__(self) -> None:
        for name, minimum in (
            ("write_buffer_size", 64 * 1024),
            ("max_write_buffer_number", 2),
            ("block_cache_size", 0),
            ("bloom_bits_per_key", 0),
            ("max_background_jobs", 1),
            ("max_total_wal_size", _MIB),
            ("keep_log_file_num", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"rocksdb.{name}", f"must be an integer >= {minimum}, got {value!r}")
        if self.compression not in _COMPRESSION:
            raise ConfigError("rocksdb.compression", f"must be one of {', '.join(_COMPRESSION)}")


class RocksDBStore(Store):
    """A store with one RocksDB database per partition.

    Args:
        processor: The owning processor's name.
        name: The store's name.
        state_dir: Root of all stores (``StreamsConfig.state_dir``).
        options: RocksDB tuning; defaults suit a small machine.
    """

    def __init__(
        self, processor: str, name: str, state_dir: Path, options: RocksDBOptions | None = None
    ) -> None:
        super().__init__(processor, name)
        self._path = Path(state_dir) / processor / name
        self._options = options or RocksDBOptions()
        self._cache = Cache(self._options.block_cache_size) if self._options.block_cache_size else None

    @property
    def path(self) -> Path:
        """The store's directory; partitions are its numbered subdirectories."""
        return self._path

    def partition_path(self, partition: int) -> Path:
        """The directory of one partition's database."""
        return self._path / str(partition)

    def _open_partition(self, partition: int) -> RocksDBStorePartition:
        return RocksDBStorePartition(
            self.partition_path(partition),
            store_name=self.name,
            partition=partition,
            options=self._options,
            cache=self._cache,
        )

    def _wipe_closed_partition(self, partition: int) -> None:
        _remove(self.partition_path(partition))


class RocksDBStorePartition(StorePartition):
    """One partition's RocksDB database.

    Args:
        path: The database directory (created if missing).
        store_name: The store's name.
        partition: The partition number.
        options: RocksDB tuning.
        cache: Block cache shared with the store's other partitions, ``None`` for none.

    Raises:
        StateError: The database is locked (another process, or a handle that was not closed).
        StoreCorruptedError: The directory does not hold a readable database of this format.
    """

    def __init__(
        self,
        path: Path,
        *,
        store_name: str,
        partition: int,
        options: RocksDBOptions | None = None,
        cache: Cache | None = None,
    ) -> None:
        self._path = path
        self._options = options or RocksDBOptions()
        self._cache = cache
        self._write_options = WriteOptions()
        self._write_options.sync = self._options.sync_writes
        self._scans: weakref.WeakSet[_RocksDBScan] = weakref.WeakSet()
        # Set before the base initializer so that errors raised while opening can name the store.
        self._store_name = store_name
        self._partition = partition
        self._db, self._meta = self._open()
        try:
            checkpoint = self._read_meta()
        except BaseException:
            self._release()
            raise
        super().__init__(store_name, partition, checkpoint)

    @property
    def path(self) -> Path:
        """The database directory."""
        return self._path

    def get(self, key: bytes) -> bytes | None:
        """Returns the committed value of a key, ``None`` if it has none.

        Raises:
            StateError: The partition is closed.
            StoreCorruptedError: The block holding the key cannot be read.
        """
        if self._closed:
            self._raise_if_closed()
        try:
            value: bytes | None = self._db.get(key)
        except DbClosedError as exc:
            raise StateError("is closed", store=self._store_name, partition=self._partition) from exc
        except Exception as exc:
            raise self._translate(exc, "read") from exc
        return value

    def iter_range(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterates committed items with ``lower <= key < upper`` ascending, on a raw iterator.

        Raises:
            StateError: The partition is closed, also while the iterator is in use.
            StoreCorruptedError: A block in the range cannot be read.
        """
        self._raise_if_closed()
        options = None
        try:
            if upper is None:
                iterator = self._db.iter()
            else:
                # The upper bound stops RocksDB itself at ``upper``: without it, a seek past the last
                # live key of a prefix walks every tombstone up to the next live key, which made
                # each empty-prefix scan cost hundreds of µs once many runs had ended.
                options = ReadOptions()
                options.set_iterate_upper_bound(upper)
                iterator = self._db.iter(options)
            if lower is None:
                iterator.seek_to_first()
            else:
                iterator.seek(lower)
        except Exception as exc:
            raise self._translate(exc, "scan") from exc
        scan = _RocksDBScan(self, iterator, upper, options)
        self._scans.add(scan)
        return scan

    def _apply(self, writes: Iterable[Write], changelog_offset: int | None) -> None:
        batch = WriteBatch(raw_mode=True)
        for key, value in writes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(CHECKPOINT_KEY, changelog_offset.to_bytes(8, "big"), self._meta)
        if batch.is_empty():
            return
        try:
            self._db.write(batch, self._write_options)
        except Exception as exc:
            raise self._translate(exc, "write") from exc

    def _wipe(self) -> None:
        self._release()
        _remove(self._path)
        self._db, self._meta = self._open()
        self._read_meta()

    def _close(self) -> None:
        self._release()
        logger.debug(
            "closed store partition", extra={"store": self._store_name, "partition": self._partition}
        )

    def _release(self) -> None:
        for scan in list(self._scans):
            scan.invalidate()
        self._scans = weakref.WeakSet()
        # The column-family handle keeps the database (and its lock) alive: drop it first.
        self._meta = None
        self._db.close()

    def _open(self) -> tuple[Rdict, Any]:
        path = self._path
        if path.exists() and not path.is_dir():
            raise StoreCorruptedError(
                f"{path} is not a directory", store=self._store_name, partition=self._partition, path=path
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
            db = Rdict(
                str(path),
                self._db_options(),
                column_families={META_COLUMN_FAMILY: self._meta_options()},
            )
        except Exception as exc:
            raise self._translate(exc, "open") from exc
        try:
            meta = db.get_column_family_handle(META_COLUMN_FAMILY)
        except Exception as exc:
            db.close()
            raise self._translate(exc, "open") from exc
        return db, meta

    def _read_meta(self) -> int | None:
        """Reads the checkpoint, stamping the format version into a new database."""
        meta = self._db.get_column_family(META_COLUMN_FAMILY)
        try:
            version = meta.get(FORMAT_VERSION_KEY)
            raw_offset = meta.get(CHECKPOINT_KEY)
            if version is None:
                if raw_offset is not None or self._has_data():
                    raise self._corrupted("has data but no format version")
                meta.put(FORMAT_VERSION_KEY, FORMAT_VERSION.to_bytes(4, "big"), self._write_options)
                return None
        except StateError:
            raise
        except Exception as exc:
            raise self._translate(exc, "open") from exc
        finally:
            del meta  # a column-family Rdict keeps the database open after close()
        if int.from_bytes(version, "big") != FORMAT_VERSION:
            raise self._corrupted(f"has format version {int.from_bytes(version, 'big')}, expected 1")
        if raw_offset is None:
            return None
        if len(raw_offset) != 8:
            raise self._corrupted(f"has a malformed checkpoint {raw_offset!r}")
        return int.from_bytes(raw_offset, "big")

    def _has_data(self) -> bool:
        iterator = self._db.iter()
        iterator.seek_to_first()
        found = bool(iterator.valid())
        if not found:
            iterator.status()
        return found

    def _db_options(self) -> Options:
        settings = self._options
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_paranoid_checks(True)
        options.set_write_buffer_size(settings.write_buffer_size)
        options.set_max_write_buffer_number(settings.max_write_buffer_number)
        options.set_max_background_jobs(settings.max_background_jobs)
        options.set_max_total_wal_size(settings.max_total_wal_size)
        options.set_keep_log_file_num(settings.keep_log_file_num)
        options.set_level_compaction_dynamic_level_bytes(True)
        options.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
        options.set_compression_type(_COMPRESSION[settings.compression]())
        table = BlockBasedOptions()
        if settings.bloom_bits_per_key:
            table.set_bloom_filter(settings.bloom_bits_per_key, False)
        if self._cache is not None:
            table.set_block_cache(self._cache)
            table.set_cache_index_and_filter_blocks(True)
            table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        else:
            table.disable_cache()
        options.set_block_based_table_factory(table)
        return options

    def _meta_options(self) -> Options:
        options = Options(raw_mode=True)
        # Two small keys overwritten on every commit: a tiny memtable flushes often, so the
        # family never holds on to old WAL files.
        options.set_write_buffer_size(256 * 1024)
        options.set_compression_type(DBCompressionType.none())
        return options

    def _corrupted(self, message: str) -> StoreCorruptedError:
        return StoreCorruptedError(
            f"{self._path} {message}", store=self._store_name, partition=self._partition, path=self._path
        )

    def _translate(self, exc: Exception, action: str) -> StateError:
        """Maps a rocksdict exception (always a bare ``Exception`` with RocksDB's status text)."""
        if isinstance(exc, StateError):
            return exc
        text = str(exc)
        if isinstance(exc, DbClosedError):
            return StateError("is closed", store=self._store_name, partition=self._partition)
        if text.startswith(("Corruption", "Invalid argument")) or (
            action == "open" and text.startswith("File exists")
        ):
            logger.warning(
                "store partition is corrupted: %s",
                text,
                extra={"store": self._store_name, "partition": self._partition},
            )
            return self._corrupted(f"cannot be {_PARTICIPLE[action]}: {text}")
        if "lock" in text.lower() and action == "open":
            return StateError(
                f"{self._path} is locked by another process or an unclosed handle: {text}",
                store=self._store_name,
                partition=self._partition,
            )
        return StateError(f"{action} failed: {text}", store=self._store_name, partition=self._partition)


_PARTICIPLE = {"open": "opened", "read": "read", "scan": "scanned", "write": "written"}


class _RocksDBScan(Iterator[tuple[bytes, bytes]]):
    """A forward scan on a raw rocksdict iterator, bounded above in Python (see pitfall 1)."""

    __slots__ = ("__weakref__", "_iterator", "_options", "_owner", "_state", "_upper")

    _OPEN, _DONE, _INVALID = 0, 1, 2

    def __init__(
        self, owner: RocksDBStorePartition, iterator: Any, upper: bytes | None, options: Any = None
    ) -> None:
        self._owner = owner
        self._iterator = iterator
        self._upper = upper
        self._options = options  # keeps the bound's ReadOptions alive as long as the iterator
        self._state = self._OPEN

    def __iter__(self) -> _RocksDBScan:
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        iterator = self._iterator
        if iterator is None:
            if self._state == self._INVALID:
                raise StateError(
                    "closed during a scan", store=self._owner.store_name, partition=self._owner.partition
                )
            raise StopIteration
        try:
            if iterator.valid():
                key: bytes = iterator.key()
                if self._upper is None or key < self._upper:
                    value: bytes = iterator.value()
                    iterator.next()
                    return key, value
            else:
                # valid() is also false on a read error; status() raises it (see pitfall 3).
                iterator.status()
        except Exception as exc:
            self._iterator = None
            self._state = self._DONE
            raise self._owner._translate(exc, "scan") from exc
        self._iterator = None
        self._state = self._DONE
        raise StopIteration

    def invalidate(self) -> None:
        """Releases the raw iterator (it keeps the database open); later ``next`` raises."""
        if self._iterator is not None:
            self._iterator = None
            self._state = self._INVALID


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
