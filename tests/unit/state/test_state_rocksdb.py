"""RocksDB backend: layout, checkpoint storage, rocksdict pitfalls, corruption and crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rocksdict import Options, Rdict, ReadOptions

from processors.errors import StateError, StoreCorruptedError
from processors.state import RocksDBOptions, RocksDBStore
from processors.state.rocksdb import CHECKPOINT_KEY, META_COLUMN_FAMILY
from streams.errors import ConfigError


def _raw_options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.create_missing_column_families(True)
    return options


def _open_raw(path: Path) -> Rdict:
    """Opens a partition database directly with rocksdict (bypassing the store)."""
    return Rdict(str(path), _raw_options(), column_families={META_COLUMN_FAMILY: _raw_options()})


def _scan(iterator: object) -> list[bytes]:
    keys: list[bytes] = []
    while iterator.valid():  # type: ignore[attr-defined]
        keys.append(iterator.key())  # type: ignore[attr-defined]
        iterator.next()  # type: ignore[attr-defined]
    return keys


@pytest.fixture
def store(tmp_path: Path) -> RocksDBStore:
    return RocksDBStore("proc", "things", tmp_path)


def _flush_to_sst(path: Path) -> list[Path]:
    db = _open_raw(path)
    db.flush()
    db.close()
    return sorted(path.glob("*.sst"))


# --- layout and checkpoint storage ------------------------------------------------------------


def test_layout_and_checkpoint_in_meta_column_family(store: RocksDBStore, tmp_path: Path) -> None:
    partition = store.open_partition(4)
    assert partition.path == tmp_path / "proc" / "things" / "4"  # type: ignore[attr-defined]
    partition.apply([(b"k", b"v")], 17)
    store.close()
    assert Rdict.list_cf(str(tmp_path / "proc" / "things" / "4")) == ["default", META_COLUMN_FAMILY]
    db = _open_raw(tmp_path / "proc" / "things" / "4")
    meta = db.get_column_family(META_COLUMN_FAMILY)
    assert meta[CHECKPOINT_KEY] == (17).to_bytes(8, "big")
    assert list(db.items()) == [(b"k", b"v")]  # the checkpoint is not in the data family
    del meta
    db.close()


def test_database_without_format_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "proc" / "things" / "0"
    path.mkdir(parents=True)
    foreign = Rdict(str(path), _raw_options())
    foreign[b"someone"] = b"else"
    foreign.close()
    with pytest.raises(StoreCorruptedError, match="no format version"):
        RocksDBStore("proc", "things", tmp_path).open_partition(0)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="write_buffer_size"):
        RocksDBOptions(write_buffer_size=10)
    with pytest.raises(ConfigError, match="compression"):
        RocksDBOptions(compression="brotli")  # type: ignore[arg-type]
    RocksDBOptions(compression="none", block_cache_size=0, bloom_bits_per_key=0)


def test_works_without_cache_and_bloom_filter(tmp_path: Path) -> None:
    options = RocksDBOptions(compression="none", block_cache_size=0, bloom_bits_per_key=0)
    with RocksDBStore("proc", "plain", tmp_path, options) as store:
        partition = store.open_partition(0)
        partition.apply([(b"a", b"1")], 0)
        assert partition.get(b"a") == b"1"


# --- rocksdict pitfalls -----------------------------------------------------------------------


def test_pitfall_lower_bound_option_sets_the_upper_bound(store: RocksDBStore, tmp_path: Path) -> None:
    """rocksdict 0.3.x: ``set_iterate_lower_bound`` bounds from above; our scans do not use it."""
    db = Rdict(str(tmp_path / "raw"), _raw_options())
    for key in (b"a", b"b", b"c", b"d", b"e"):
        db[key] = key
    read_options = ReadOptions()
    read_options.set_iterate_lower_bound(b"c")
    iterator = db.iter(read_options)
    iterator.seek_to_first()
    # A correct lower bound would give [c, d, e]. If this fails, rocksdict fixed the bug.
    assert _scan(iterator) == [b"a", b"b"]
    del iterator
    db.close()

    partition = store.open_partition(0)
    partition.apply([(key, key) for key in (b"a", b"b", b"c", b"d", b"e")], 0)
    assert [k for k, _ in partition.iter_range(b"c")] == [b"c", b"d", b"e"]
    assert [k for k, _ in partition.iter_range(b"b", b"d")] == [b"b", b"c"]
    assert [k for k, _ in partition.iter_range(b"bb", b"cc")] == [b"c"]
    assert [k for k, _ in partition.iter_range(None, b"c")] == [b"a", b"b"]


def test_pitfall_snapshot_iteration_ignores_the_snapshot(store: RocksDBStore, tmp_path: Path) -> None:
    """rocksdict 0.3.x: iterating a Snapshot reads live data; our scans do not use snapshots."""
    db = Rdict(str(tmp_path / "raw"), _raw_options())
    db[b"a"] = b"1"
    db[b"b"] = b"2"
    snapshot = db.snapshot()
    db[b"c"] = b"3"
    del db[b"a"]
    assert snapshot[b"a"] == b"1"  # point reads honour the snapshot ...
    # ... iteration does not (a correct snapshot would give [a, b]).
    assert [k for k, _ in snapshot.items()] == [b"b", b"c"]
    del snapshot
    db.close()

    # Our scans read the view of the moment they start, via the raw iterator.
    partition = store.open_partition(0)
    partition.apply([(b"a", b"1"), (b"b", b"2")], 0)
    scan = partition.iter_range()
    partition.apply([(b"c", b"3"), (b"a", None)], 1)
    assert list(scan) == [(b"a", b"1"), (b"b", b"2")]


def test_pitfall_items_hides_read_errors_scan_raises(store: RocksDBStore) -> None:
    """``Rdict.items()`` ends silently on a corrupt block; our scans check the iterator status."""
    partition = store.open_partition(0)
    partition.apply([(b"k%04d" % i, b"x" * 100) for i in range(500)], 0)
    path: Path = partition.path  # type: ignore[attr-defined]
    store.close()
    # The biggest table file holds the data family (the other one, if any, is __meta__).
    sst = max(_flush_to_sst(path), key=lambda file: file.stat().st_size)
    data = bytearray(sst.read_bytes())
    data[100:400] = os.urandom(300)
    sst.write_bytes(bytes(data))

    db = _open_raw(path)
    assert list(db.items()) == []  # silently empty: the pitfall
    db.close()

    partition = store.open_partition(0)
    with pytest.raises(StoreCorruptedError, match="cannot be scanned"):
        list(partition.iter_range())
    with pytest.raises(StoreCorruptedError, match="cannot be read"):
        partition.get(b"k0001")
    # Recovery: wipe and restore from the changelog.
    store.close_partition(0)
    store.wipe_partition(0)
    partition = store.open_partition(0)
    assert partition.restore([(b"k0001", b"x", 0)]) == 1
    assert list(partition.iter_range()) == [(b"k0001", b"x")]


def test_pitfall_open_handles_keep_the_database_locked(store: RocksDBStore, tmp_path: Path) -> None:
    """A column-family handle or a live iterator keeps a closed Rdict locked; close releases ours."""
    db = _open_raw(tmp_path / "raw")
    handle = db.get_column_family_handle(META_COLUMN_FAMILY)
    db.close()
    with pytest.raises(Exception, match="lock"):
        _open_raw(tmp_path / "raw")
    del handle
    _open_raw(tmp_path / "raw").close()

    partition = store.open_partition(0)
    partition.apply([(b"a", b"1"), (b"b", b"2")], 0)
    scan = partition.iter_range()
    assert next(scan) == (b"a", b"1")
    store.close_partition(0)  # the scan is still referenced here
    reopened = store.open_partition(0)
    assert reopened.checkpoint() == 0
    with pytest.raises(StateError, match="closed during a scan"):
        next(scan)


# --- corruption and locking -------------------------------------------------------------------


def test_garbage_current_file_is_corruption_and_wipe_recovers(store: RocksDBStore) -> None:
    partition = store.open_partition(0)
    partition.apply([(b"a", b"1")], 3)
    store.close()
    (store.partition_path(0) / "CURRENT").write_bytes(b"\x00garbage\n")
    with pytest.raises(StoreCorruptedError) as caught:
        store.open_partition(0)
    assert caught.value.path == store.partition_path(0)
    assert (caught.value.store, caught.value.partition) == ("things", 0)
    assert 0 not in store.partitions
    store.wipe_partition(0)
    partition = store.open_partition(0)
    assert partition.checkpoint() is None
    assert partition.next_changelog_offset() == 0


def test_garbage_manifest_is_corruption(store: RocksDBStore) -> None:
    store.open_partition(0).apply([(b"a", b"1")], 3)
    store.close()
    for manifest in store.partition_path(0).glob("MANIFEST-*"):
        manifest.write_bytes(os.urandom(512))
    with pytest.raises(StoreCorruptedError, match="Corruption"):
        store.open_partition(0)


def test_truncated_sst_is_corruption(store: RocksDBStore) -> None:
    partition = store.open_partition(0)
    partition.apply([(b"a", b"1")], 0)
    path: Path = partition.path  # type: ignore[attr-defined]
    store.close()
    for sst in _flush_to_sst(path):
        sst.write_bytes(b"")
    with pytest.raises(StoreCorruptedError):
        store.open_partition(0)


def test_missing_current_with_existing_log_is_corruption(store: RocksDBStore) -> None:
    store.open_partition(0).apply([(b"a", b"1")], 0)
    store.close()
    (store.partition_path(0) / "CURRENT").unlink()
    with pytest.raises(StoreCorruptedError):
        store.open_partition(0)


def test_file_in_place_of_partition_dir_is_corruption(store: RocksDBStore) -> None:
    store.path.mkdir(parents=True)
    store.partition_path(0).write_bytes(b"garbage")
    with pytest.raises(StoreCorruptedError, match="not a directory"):
        store.open_partition(0)
    store.wipe_partition(0)
    assert store.open_partition(0).checkpoint() is None


def test_unrelated_file_in_partition_dir_is_ignored(store: RocksDBStore) -> None:
    store.open_partition(0).apply([(b"a", b"1")], 0)
    store.close()
    (store.partition_path(0) / "garbage.bin").write_bytes(os.urandom(100))
    assert store.open_partition(0).get(b"a") == b"1"


def test_locked_partition_is_not_reported_as_corruption(tmp_path: Path) -> None:
    first = RocksDBStore("proc", "things", tmp_path)
    first.open_partition(0)
    second = RocksDBStore("proc", "things", tmp_path)
    with pytest.raises(StateError, match="locked") as caught:
        second.open_partition(0)
    assert not isinstance(caught.value, StoreCorruptedError)
    first.close()
    second.open_partition(0)
    second.close()


# --- crash consistency ------------------------------------------------------------------------

_CRASHING_WRITER = """
import os, sys
from pathlib import Path
from processors.state import RocksDBStore

store = RocksDBStore("proc", "things", Path(sys.argv[1]))
partition = store.open_partition(0)
for offset in range(200):
    tx = partition.begin()
    tx.put(b"counter", str(offset).encode())
    tx.put(b"key-%03d" % offset, b"x" * 1000)
    tx.prepare()
    tx.on_committed(offset)
os._exit(0)  # no close, no flush: a crash
"""


def test_checkpoint_and_data_agree_after_a_crash(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CRASHING_WRITER), str(tmp_path)],
        check=True,
        cwd=Path(__file__).resolve().parents[3],
        timeout=60,
    )
    with RocksDBStore("proc", "things", tmp_path) as store:
        partition = store.open_partition(0)
        checkpoint = partition.checkpoint()
        assert checkpoint == 199  # a process crash loses nothing: the WAL is in the page cache
        assert partition.get(b"counter") == str(checkpoint).encode()
        assert len(list(partition.iter_prefix(b"key-"))) == checkpoint + 1
