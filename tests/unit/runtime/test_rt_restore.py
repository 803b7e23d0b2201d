"""Restore from changelogs: checkpoint + 1 to the end, markers and aborted records handled."""

from __future__ import annotations

from typing import Any

import pytest
from runtime_fakes import FakeRestoreConsumer

from processors.errors import StoreCorruptedError
from processors.runtime.restore import Restorer
from processors.state.base import StorePartition
from processors.state.memory import MemoryStore

TOPIC = "ns.proc-counts-changelog"


def make(consumer: FakeRestoreConsumer, store: MemoryStore) -> Restorer:
    return Restorer(
        processor="proc",
        consumer=consumer,  # type: ignore[arg-type]
        stores={"counts": store},
        changelog_topics={"counts": TOPIC},
    )


def run(restorer: Restorer, partition: int, steps: int = 10, batch: int = 100) -> list[int]:
    done = restorer.start(partition, restorer.open_stores(partition))
    finished: list[int] = [partition] if done else []
    for _ in range(steps):
        if not restorer.busy:
            break
        finished += restorer.step(batch, 0)
    return finished


def test_full_replay_skips_markers_and_aborted_records() -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "rrmaamrm")  # records 0,1,6; marker 2,5,7; aborted 3,4
    store = MemoryStore("proc", "counts")
    restorer = make(consumer, store)
    assert run(restorer, 0) == [0]
    partition = store.partition(0)
    assert [k for k, _ in partition.iter_range()] == [b"k0", b"k1", b"k6"]
    assert partition.checkpoint() == 6  # the last applied record; restore resumes at 7
    metrics = restorer.metrics
    assert (metrics.records_restored, metrics.full_restores, metrics.partitions_restored) == (3, 1, 1)


def test_restart_replays_only_the_tail_after_the_checkpoint() -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "rrmrrm")
    store = MemoryStore("proc", "counts")
    store.open_partition(0).apply([(b"k0", b"v0"), (b"k1", b"v1")], 1)
    store.close_partition(0)
    restorer = make(consumer, store)
    assert run(restorer, 0) == [0]
    assert restorer.metrics.records_restored == 2 and restorer.metrics.full_restores == 0
    assert store.partition(0).checkpoint() == 4


@pytest.mark.parametrize(("advance", "eof"), [(True, False), (False, True)])
def test_a_changelog_ending_in_a_marker_is_done_by_position_or_eof(advance: bool, eof: bool) -> None:
    consumer = FakeRestoreConsumer(advance_past_skipped=advance, emit_eof=eof)
    consumer.add(TOPIC, 0, "rrm")  # end offset 3, last record 1: comparing offsets would hang
    restorer = make(consumer, MemoryStore("proc", "counts"))
    assert run(restorer, 0, steps=3) == [0]


def test_nothing_to_replay_activates_at_once() -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "rm")
    store = MemoryStore("proc", "counts")
    store.open_partition(0).apply([(b"k0", b"v0")], 1)  # checkpoint 1 == end - 1: nothing left
    store.close_partition(0)
    restorer = make(consumer, store)
    assert restorer.start(0, restorer.open_stores(0)) is True
    assert not restorer.busy and consumer.assigned == {}


def test_a_checkpoint_past_the_changelog_end_wipes_and_replays_in_full() -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "rm")  # the topic was recreated: end 2
    store = MemoryStore("proc", "counts")
    store.open_partition(0).apply([(b"old", b"x")], 500)
    store.close_partition(0)
    restorer = make(consumer, store)
    assert run(restorer, 0) == [0]
    assert [k for k, _ in store.partition(0).iter_range()] == [b"k0"]
    assert restorer.metrics.full_restores == 1


def test_a_corrupt_store_is_wiped_and_replayed_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "rrm")
    store = MemoryStore("proc", "counts")
    original = store._open_partition
    calls: list[int] = []

    def flaky(partition: int) -> Any:
        calls.append(partition)
        if len(calls) == 1:
            raise StoreCorruptedError("bad block", store="counts", partition=partition)
        return original(partition)

    monkeypatch.setattr(store, "_open_partition", flaky)
    restorer = make(consumer, store)
    assert run(restorer, 0) == [0]
    assert len(calls) == 2 and restorer.metrics.records_restored == 2


def test_cancel_stops_a_restore_and_keeps_applied_batches() -> None:
    consumer = FakeRestoreConsumer()
    consumer.add(TOPIC, 0, "r" * 50 + "m")
    store = MemoryStore("proc", "counts")
    restorer = make(consumer, store)
    restorer.start(0, restorer.open_stores(0))
    assert restorer.step(10, 0) == []
    restorer.cancel(0)
    assert not restorer.busy and consumer.assigned == {}
    partition: StorePartition = store.partition(0)
    assert partition.checkpoint() == 9
