"""Store, partition and transaction semantics, run against both backends (fixture ``store_type``)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processors.errors import StateError
from processors.state import (
    MemoryStore,
    PartitionTransaction,
    RocksDBStore,
    Store,
    StorePartition,
    TransactionStatus,
    prefix_upper_bound,
)
from streams.errors import StreamsError, UsageError

StoreFactory = Callable[[], Store]


def commit(tx: PartitionTransaction, offset: int | None) -> None:
    tx.prepare()
    tx.on_committed(offset)


def seed(partition: StorePartition, items: dict[bytes, bytes], offset: int = 0) -> None:
    tx = partition.begin()
    for key, value in items.items():
        tx.put(key, value)
    commit(tx, offset)


# --- read-your-writes and merged scans -------------------------------------------------------


def test_read_your_writes(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1", b"b": b"2"})
    tx = partition.begin()
    assert tx.get(b"a") == b"1"
    tx.put(b"a", b"10")
    tx.put(b"c", b"3")
    tx.delete(b"b")
    assert tx.get(b"a") == b"10"
    assert tx.get(b"b") is None
    assert tx.get(b"c") == b"3"
    assert tx.get(b"zz") is None
    tx.put(b"b", b"")  # an empty value is a value, not a delete
    assert tx.get(b"b") == b""
    # Nothing reaches the partition before the commit.
    assert partition.get(b"a") == b"1"
    assert partition.get(b"c") is None
    assert len(tx) == 3


def test_scans_merge_buffered_writes_over_stored_data(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"u:1": b"a", b"u:2": b"b", b"u:4": b"d", b"v:1": b"x", b"u": b"root"})
    tx = partition.begin()
    tx.put(b"u:3", b"c")  # new key between stored keys
    tx.put(b"u:2", b"B")  # override
    tx.delete(b"u:4")  # hide a stored key
    tx.delete(b"u:9")  # delete of a key never stored
    tx.put(b"u:0", b"z")  # new first key
    tx.put(b"w", b"after")  # outside the prefix
    assert list(tx.iter_prefix(b"u:")) == [(b"u:0", b"z"), (b"u:1", b"a"), (b"u:2", b"B"), (b"u:3", b"c")]
    assert list(tx.iter_range(b"u:1", b"u:3")) == [(b"u:1", b"a"), (b"u:2", b"B")]
    assert list(tx.iter_range(b"u:2", b"u:2")) == []
    assert list(tx.iter_range(b"u:3", b"u:1")) == []
    assert [k for k, _ in tx.iter_range()] == [b"u", b"u:0", b"u:1", b"u:2", b"u:3", b"v:1", b"w"]
    assert [k for k, _ in tx.iter_range(upper=b"u:1")] == [b"u", b"u:0"]
    assert [k for k, _ in tx.iter_range(lower=b"v")] == [b"v:1", b"w"]
    # The stored partition alone is unchanged.
    assert [k for k, _ in partition.iter_prefix(b"u:")] == [b"u:1", b"u:2", b"u:4"]


def test_scan_captures_buffer_when_created(store: Store) -> None:
    partition = store.open_partition(0)
    tx = partition.begin()
    tx.put(b"a", b"1")
    tx.put(b"c", b"3")
    scan = tx.iter_range()
    assert next(scan) == (b"a", b"1")
    tx.put(b"b", b"2")
    assert list(scan) == [(b"c", b"3")]
    assert [k for k, _ in tx.iter_range()] == [b"a", b"b", b"c"]


def test_partition_scan_reads_a_consistent_view(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1", b"b": b"2", b"c": b"3"}, offset=0)
    scan = partition.iter_range()
    assert next(scan) == (b"a", b"1")
    partition.apply([(b"b", None), (b"bb", b"new"), (b"c", b"33")], 1)
    assert list(scan) == [(b"b", b"2"), (b"c", b"3")]
    assert list(partition.iter_range()) == [(b"a", b"1"), (b"bb", b"new"), (b"c", b"33")]


def test_prefix_scan_with_ff_bytes(store: Store) -> None:
    partition = store.open_partition(0)
    keys = [b"\xfe", b"\xfe\xff", b"\xfe\xff\x00", b"\xff", b"\xff\xff", b"\xff\xff\x01", b"\x00"]
    seed(partition, {key: key for key in keys})
    assert [k for k, _ in partition.iter_prefix(b"\xfe")] == [b"\xfe", b"\xfe\xff", b"\xfe\xff\x00"]
    assert [k for k, _ in partition.iter_prefix(b"\xff\xff")] == [b"\xff\xff", b"\xff\xff\x01"]
    assert [k for k, _ in partition.iter_prefix(b"")] == sorted(keys)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound(b"ab") == b"ac"
    assert prefix_upper_bound(b"a\xff") == b"b"
    assert prefix_upper_bound(b"\x00\xff\xff") == b"\x01"
    assert prefix_upper_bound(b"\xff\xff") is None
    assert prefix_upper_bound(b"") is None


# --- changelog, commit, abort -----------------------------------------------------------------


def test_changelog_records_keep_last_write_per_key(store: Store) -> None:
    partition = store.open_partition(0)
    tx = partition.begin()
    tx.put(b"a", b"1")
    tx.put(b"b", b"2")
    tx.put(b"a", b"3")
    tx.delete(b"b")
    tx.delete(b"c")
    tx.put(b"c", b"4")
    assert sorted(tx.changelog_records()) == [(b"a", b"3"), (b"b", None), (b"c", b"4")]
    assert sorted(tx.prepare()) == [(b"a", b"3"), (b"b", None), (b"c", b"4")]
    assert tx.status is TransactionStatus.PREPARED


def test_commit_applies_writes_and_checkpoint(store: Store) -> None:
    partition = store.open_partition(0)
    assert partition.checkpoint() is None
    assert partition.next_changelog_offset() == 0
    seed(partition, {b"a": b"1", b"b": b"2"}, offset=7)
    tx = partition.begin()
    tx.delete(b"a")
    tx.put(b"c", b"3")
    records = tx.prepare()
    assert len(records) == 2
    tx.on_committed(9)
    assert tx.status is TransactionStatus.COMMITTED
    assert list(partition.iter_range()) == [(b"b", b"2"), (b"c", b"3")]
    assert partition.checkpoint() == 9
    assert partition.next_changelog_offset() == 10


def test_empty_commit_without_offset_keeps_checkpoint(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1"}, offset=3)
    tx = partition.begin()
    assert tx.prepare() == []
    tx.on_committed(None)
    assert partition.checkpoint() == 3


def test_abort_discards(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1"}, offset=0)
    for abort_when_prepared in (False, True):
        tx = partition.begin()
        tx.put(b"a", b"2")
        tx.put(b"b", b"2")
        if abort_when_prepared:
            tx.prepare()
        tx.abort()
        assert tx.status is TransactionStatus.ABORTED
        assert list(partition.iter_range()) == [(b"a", b"1")]
        assert partition.checkpoint() == 0
        tx.abort()  # idempotent


# --- lifecycle guards -------------------------------------------------------------------------


def test_lifecycle_guards(store: Store) -> None:
    partition = store.open_partition(0)
    tx = partition.begin()
    with pytest.raises(StateError, match="open to committed"):
        tx.on_committed(1)
    with pytest.raises(StateError, match="transaction is open"):
        partition.begin()
    tx.put(b"a", b"1")
    tx.prepare()
    with pytest.raises(StateError, match="cannot write: the transaction is prepared"):
        tx.put(b"b", b"2")
    with pytest.raises(StateError, match="cannot write"):
        tx.delete(b"a")
    with pytest.raises(StateError, match="prepared to prepared"):
        tx.prepare()
    assert tx.get(b"a") == b"1"  # reads stay allowed while prepared
    with pytest.raises(StateError, match="cannot restore"):
        partition.restore([(b"x", b"y", 5)])
    with pytest.raises(StateError, match="cannot wipe"):
        partition.wipe()
    tx.on_committed(0)
    with pytest.raises(StateError, match="committed to committed"):
        tx.on_committed(1)
    with pytest.raises(StateError, match="committed to aborted"):
        tx.abort()
    with pytest.raises(StateError, match="cannot read"):
        tx.get(b"a")
    with pytest.raises(StateError, match="cannot read"):
        tx.iter_range()
    with pytest.raises(StateError, match="cannot read"):
        tx.changelog_records()
    with pytest.raises(StateError, match="cannot write"):
        tx.put(b"a", b"2")
    partition.begin().abort()  # a finished transaction frees the partition
    with pytest.raises(StateError) as caught:
        tx.prepare()
    assert isinstance(caught.value, StreamsError)
    assert (caught.value.store, caught.value.partition) == ("things", 0)


def test_bad_key_and_value_types(store: Store) -> None:
    tx = store.open_partition(0).begin()
    with pytest.raises(UsageError):
        tx.put("a", b"1")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        tx.put(b"a", "1")  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        tx.delete(bytearray(b"a"))  # type: ignore[arg-type]


def test_failed_apply_marks_transaction_failed_and_requires_restore(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1"}, offset=10)
    tx = partition.begin()
    tx.put(b"a", b"2")
    tx.prepare()
    with pytest.raises(StateError, match="older than the checkpoint"):
        tx.on_committed(5)
    assert tx.status is TransactionStatus.FAILED
    tx.abort()  # no-op
    assert tx.status is TransactionStatus.FAILED
    with pytest.raises(StateError, match="restore the partition first"):
        partition.begin()
    assert partition.restore([(b"a", b"2", 11)]) == 1
    assert partition.get(b"a") == b"2"
    partition.begin().abort()


def test_closing_partition_aborts_open_transaction(store: Store) -> None:
    partition = store.open_partition(0)
    tx = partition.begin()
    tx.put(b"a", b"1")
    tx.prepare()
    store.close_partition(0)
    assert tx.status is TransactionStatus.ABORTED
    with pytest.raises(StateError, match="from aborted to committed"):
        tx.on_committed(0)
    partition = store.open_partition(0)
    assert partition.get(b"a") is None


def test_closed_partition_and_scan_raise(store: Store) -> None:
    partition = store.open_partition(0)
    seed(partition, {b"a": b"1", b"b": b"2"})
    scan = partition.iter_range()
    assert next(scan) == (b"a", b"1")
    store.close_partition(0)
    with pytest.raises(StateError, match="closed"):
        next(scan)
    for call in (lambda: partition.get(b"a"), partition.iter_range, partition.begin, partition.wipe):
        with pytest.raises(StateError, match="is closed"):
            call()
    partition.close()  # idempotent


def test_store_partition_bookkeeping(store: Store) -> None:
    with pytest.raises(StateError, match="is not open"):
        store.partition(3)
    with pytest.raises(StateError, match="is not open"):
        store.close_partition(3)
    with pytest.raises(StateError, match="invalid partition"):
        store.open_partition(-1)
    p3 = store.open_partition(3)
    with pytest.raises(StateError, match="already open"):
        store.open_partition(3)
    assert store.partition(3) is p3
    assert dict(store.partitions) == {3: p3}
    store.close()
    assert dict(store.partitions) == {}
    assert p3.closed


@pytest.mark.parametrize("name", ["", "a/b", "..", ".hidden", "x" * 129, "sp ace"])
def test_invalid_store_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        MemoryStore("proc", name)
    with pytest.raises(UsageError):
        RocksDBStore(name, "store", tmp_path)


# --- checkpoint, apply, restore, wipe ---------------------------------------------------------


def test_checkpoint_and_data_persist_across_close_and_reopen(store_factory: StoreFactory) -> None:
    store = store_factory()
    partition = store.open_partition(2)
    seed(partition, {b"k1": b"v1", b"k2": b"v2"}, offset=41)
    tx = partition.begin()
    tx.delete(b"k1")
    commit(tx, 42)
    store.close()
    reopened = store_factory().open_partition(2)
    assert reopened.checkpoint() == 42
    assert reopened.next_changelog_offset() == 43
    assert list(reopened.iter_range()) == [(b"k2", b"v2")]


def test_apply_is_atomic_when_writes_fail(store: Store) -> None:
    partition = store.open_partition(0)
    partition.apply([(b"a", b"1")], 1)

    def broken() -> Iterator[tuple[bytes, bytes | None]]:
        yield (b"b", b"2")
        yield (b"a", None)
        raise RuntimeError("codec failed")

    with pytest.raises(RuntimeError):
        partition.apply(broken(), 2)
    assert list(partition.iter_range()) == [(b"a", b"1")]
    assert partition.checkpoint() == 1
    with pytest.raises(StateError, match="invalid changelog offset"):
        partition.apply([], -1)


def test_apply_later_write_of_a_key_wins(store: Store) -> None:
    partition = store.open_partition(0)
    partition.apply([(b"a", b"1"), (b"a", None), (b"b", b"1"), (b"b", b"2")], 0)
    assert list(partition.iter_range()) == [(b"b", b"2")]


def test_restore_applies_records_in_batches(store: Store) -> None:
    partition = store.open_partition(1)
    records: list[tuple[bytes, bytes | None, int]] = [
        (b"k%02d" % (i % 7), b"v%d" % i, 100 + i * 2) for i in range(30)
    ]
    records.append((b"k03", None, 200))
    assert partition.restore(records, batch_size=4) == 31
    expected: dict[bytes, bytes] = {}
    for key, value, _ in records:
        if value is None:
            expected.pop(key, None)
        else:
            expected[key] = value
    assert dict(partition.iter_range()) == expected
    assert partition.checkpoint() == 200
    # Replaying from an earlier offset skips what is already reflected.
    more = [*records[-5:], (b"new", b"n", 201)]
    assert partition.restore(more) == 1
    assert partition.checkpoint() == 201
    with pytest.raises(StateError, match="do not increase"):
        partition.restore([(b"x", b"1", 300), (b"y", b"1", 300)])
    with pytest.raises(UsageError):
        partition.restore([], batch_size=0)


def test_restore_stops_at_failed_batch_with_consistent_checkpoint(store: Store) -> None:
    partition = store.open_partition(0)

    def records() -> Iterator[tuple[bytes, bytes | None, int]]:
        for i in range(5):
            yield b"k%d" % i, b"v", i
        raise ConnectionError("changelog read failed")

    with pytest.raises(ConnectionError):
        partition.restore(records(), batch_size=2)
    assert partition.checkpoint() == 3
    assert [k for k, _ in partition.iter_range()] == [b"k0", b"k1", b"k2", b"k3"]


def test_wipe_open_and_closed_partition(store_factory: StoreFactory) -> None:
    store = store_factory()
    p0 = store.open_partition(0)
    seed(p0, {b"a": b"1"}, offset=5)
    p1 = store.open_partition(1)
    seed(p1, {b"b": b"1"}, offset=6)
    p0.wipe()
    assert p0.checkpoint() is None
    assert list(p0.iter_range()) == []
    seed(p0, {b"c": b"1"}, offset=0)
    assert list(p0.iter_range()) == [(b"c", b"1")]
    store.close_partition(1)
    store.wipe_partition(1)
    p1 = store.open_partition(1)
    assert p1.checkpoint() is None
    assert p1.get(b"b") is None
    store.wipe_partition(0)  # open: wiped in place
    assert store.partition(0).get(b"c") is None


# --- property-style model check ---------------------------------------------------------------

_ALPHABET = [b"\x00", b"a", b"b", b"\xff"]


def _random_key(rng: random.Random) -> bytes:
    return b"".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 3)))


def _model_range(
    model: dict[bytes, bytes], lower: bytes | None, upper: bytes | None
) -> list[tuple[bytes, bytes]]:
    return sorted(
        (k, v) for k, v in model.items() if (lower is None or k >= lower) and (upper is None or k < upper)
    )


def _check_reads(
    rng: random.Random,
    reader: PartitionTransaction | StorePartition,
    model: dict[bytes, bytes],
    universe: list[bytes],
) -> None:
    for key in universe:
        assert reader.get(key) == model.get(key), key
    assert list(reader.iter_range()) == sorted(model.items())
    for _ in range(10):
        lower = rng.choice([None, _random_key(rng)])
        upper = rng.choice([None, _random_key(rng)])
        assert list(reader.iter_range(lower, upper)) == _model_range(model, lower, upper), (lower, upper)
        prefix = rng.choice([b"", _random_key(rng)[:2]])
        expected = [(k, v) for k, v in sorted(model.items()) if k.startswith(prefix)]
        assert list(reader.iter_prefix(prefix)) == expected, prefix


@pytest.mark.parametrize("seed_value", range(8))
def test_random_transactions_match_dict_model(store_factory: StoreFactory, seed_value: int) -> None:
    rng = random.Random(seed_value)
    universe = sorted({b"".join(p) for p in _products()})
    store = store_factory()
    partition = store.open_partition(0)
    committed: dict[bytes, bytes] = {}
    offset = -1
    for round_number in range(25):
        tx = partition.begin()
        view = dict(committed)
        last_write: dict[bytes, bytes | None] = {}
        for _ in range(rng.randint(0, 40)):
            key = _random_key(rng)
            if rng.random() < 0.35:
                tx.delete(key)
                view.pop(key, None)
                last_write[key] = None
            else:
                value = b"r%d-%d" % (round_number, rng.randint(0, 999))
                tx.put(key, value)
                view[key] = value
                last_write[key] = value
            if rng.random() < 0.15:
                _check_reads(rng, tx, view, universe)
        _check_reads(rng, tx, view, universe)
        assert dict(tx.changelog_records()) == last_write
        outcome = rng.random()
        if outcome < 0.3:
            tx.abort()
        elif outcome < 0.4:
            tx.prepare()
            _check_reads(rng, tx, view, universe)
            tx.abort()
        else:
            records = tx.prepare()
            if records:
                offset += len(records)
            tx.on_committed(offset if records else None)
            committed = view
        _check_reads(rng, partition, committed, universe)
        if rng.random() < 0.2:
            store.close()
            store = store_factory()
            partition = store.open_partition(0)
            assert partition.checkpoint() == (None if offset < 0 else offset)
            _check_reads(rng, partition, committed, universe)


def _products() -> Iterator[tuple[bytes, ...]]:
    for a in _ALPHABET:
        yield (a,)
        for b in _ALPHABET:
            yield (a, b)
            for c in _ALPHABET:
                yield (a, b, c)
