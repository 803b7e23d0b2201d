"""A hook call is all-or-nothing: outputs held, store writes journalled and undone on failure."""

from __future__ import annotations

import pytest
from runtime_fakes import FakeGroupConsumer, FakeProducer

from processors.runtime.checkpoint import Checkpoint
from processors.runtime.context import Context
from processors.state.memory import MemoryStore
from streams.errors import UsageError


@pytest.fixture
def setup() -> tuple[Context, Checkpoint, FakeProducer, MemoryStore]:
    store = MemoryStore("proc", "counts")
    store.open_partition(3).apply([(b"a", b"stored")], None)
    producer = FakeProducer()
    checkpoint = Checkpoint(
        producer=producer,
        consumer=FakeGroupConsumer(),
        stores={"counts": store},
        changelog_topics={"counts": "ns.proc-counts-changelog"},
    )
    ctx = Context(
        processor="proc",
        partition=3,
        store_names=["counts"],
        sink=lambda: checkpoint,
        resolve_topic=lambda name: f"ns.{name}",
        clock=lambda: 1234,
    )
    return ctx, checkpoint, producer, store


def test_outputs_are_sent_only_when_the_call_returns(
    setup: tuple[Context, Checkpoint, FakeProducer, MemoryStore],
) -> None:
    ctx, _, producer, _ = setup
    ctx.begin_scope(5, 1000)
    assert (ctx.partition, ctx.offset, ctx.timestamp_ms, ctx.now()) == (3, 5, 1000, 1234)
    ctx.produce("runs", "key", "value", [("h", b"1")])
    assert "produce" not in producer.names()
    assert ctx.commit_scope() == 1
    assert ("produce", "ns.runs", 0, b"key", b"value") in producer.calls
    assert ctx.offset is None


def test_a_failed_call_leaves_no_outputs_and_no_store_writes(
    setup: tuple[Context, Checkpoint, FakeProducer, MemoryStore],
) -> None:
    ctx, checkpoint, producer, store = setup
    counts = ctx.store("counts")
    ctx.begin_scope(1, None)
    counts.put(b"a", b"kept")
    counts.put(b"b", b"kept")
    ctx.commit_scope()

    ctx.begin_scope(2, None)
    counts.put(b"a", b"lost")
    counts.delete(b"b")
    counts.put(b"c", b"lost")
    ctx.produce("runs", b"k", b"lost")
    ctx.rollback_scope()

    assert counts.get(b"a") == b"kept" and counts.get(b"b") == b"kept" and counts.get(b"c") is None
    assert [k for k, _ in counts.iter_prefix(b"")] == [b"a", b"b"]
    assert not any(call[0] == "produce" and call[4] == b"lost" for call in producer.calls)
    checkpoint.consumed("ns.in", 3, 2)
    checkpoint.commit()
    assert store.partition(3).get(b"a") == b"kept" and store.partition(3).get(b"c") is None


def test_unknown_store_names_the_declared_ones(
    setup: tuple[Context, Checkpoint, FakeProducer, MemoryStore],
) -> None:
    ctx, *_ = setup
    with pytest.raises(UsageError, match=r"no store 'nope'; declared: \['counts'\]"):
        ctx.store("nope")


def test_reads_see_the_stored_data_and_the_transactions_writes(
    setup: tuple[Context, Checkpoint, FakeProducer, MemoryStore],
) -> None:
    ctx, *_ = setup
    counts = ctx.stores["counts"]
    assert counts.get(b"a") == b"stored"
    counts.put(b"b", b"new")
    assert list(counts.iter_range(b"a", b"z")) == [(b"a", b"stored"), (b"b", b"new")]
