"""The commit protocol of one transaction and the adaptive batching policy (no broker)."""

from __future__ import annotations

import pytest
from runtime_fakes import FakeGroupConsumer, FakeProducer

from processors.errors import StateError
from processors.kafka.errors import TransactionAbortRequiredError
from processors.runtime.checkpoint import CRASH_POINTS, BatchPolicy, Checkpoint, CheckpointState
from processors.state.memory import MemoryStore
from streams.errors import ConfigError, UsageError

CHANGELOG = "ns.proc-counts-changelog"


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore("proc", "counts")
    store.open_partition(0)
    store.open_partition(1)
    return store


def make(
    store: MemoryStore, producer: FakeProducer, consumer: FakeGroupConsumer | None = None, **kwargs: object
) -> Checkpoint:
    return Checkpoint(
        producer=producer,
        consumer=consumer or FakeGroupConsumer(),
        stores={"counts": store},
        changelog_topics={"counts": CHANGELOG},
        **kwargs,  # type: ignore[arg-type]
    )


# -- batching policy -------------------------------------------------------------------------


def test_policy_commits_at_once_when_the_input_is_drained() -> None:
    policy = BatchPolicy(max_records=1000, max_age_ms=100)
    assert policy.should_commit(records=1, age_ms=0.1, drained=True)
    assert not policy.should_commit(records=0, age_ms=500, drained=True)  # nothing to commit


def test_policy_grows_the_batch_under_load_up_to_size_or_age() -> None:
    policy = BatchPolicy(max_records=1000, max_age_ms=100)
    assert not policy.should_commit(records=999, age_ms=99, drained=False)
    assert policy.should_commit(records=1000, age_ms=1, drained=False)
    assert policy.should_commit(records=10, age_ms=100, drained=False)


def test_policy_fetch_size_never_overshoots_the_batch_bound() -> None:
    policy = BatchPolicy(max_records=1200, fetch_records=500)
    assert policy.fetch_size(0) == 500
    assert policy.fetch_size(1000) == 200
    assert policy.fetch_size(1200) == 1


@pytest.mark.parametrize("field", ["max_records", "fetch_records", "idle_wait_ms"])
def test_policy_rejects_non_positive_bounds(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        BatchPolicy(**{field: 0})  # type: ignore[arg-type]


# -- commit protocol -------------------------------------------------------------------------


def test_commit_runs_the_numbered_steps_in_order_and_applies_the_reached_checkpoint(
    store: MemoryStore,
) -> None:
    producer = FakeProducer()
    points: list[str] = []
    checkpoint = make(store, producer, crash_hook=points.append)
    assert checkpoint.empty
    checkpoint.consumed("ns.in", 0, 41)
    checkpoint.store_transaction("counts", 0).put(b"a", b"1")
    checkpoint.store_transaction("counts", 0).put(b"b", b"1")
    checkpoint.store_transaction("counts", 0).put(b"a", b"2")  # last write per key goes out
    checkpoint.produce("ns.out", b"a", b"x")
    checkpoint.consumed("ns.in", 0, 42)

    result = checkpoint.commit()

    assert producer.names() == ["begin", "produce", "produce", "produce", "flush", "send_offsets", "commit"]
    changelog = [c for c in producer.calls if c[0] == "produce" and c[1] == CHANGELOG]
    assert [(c[2], c[3], c[4]) for c in changelog] == [(0, b"a", b"2"), (0, b"b", b"1")]
    assert ("send_offsets", [("ns.in", 0, 43)], "group-metadata") in producer.calls
    assert points == list(CRASH_POINTS)
    partition = store.partition(0)
    assert partition.get(b"a") == b"2" and partition.get(b"b") == b"1"
    assert partition.checkpoint() == 1  # offsets 0 and 1 of the changelog partition
    assert result.records == 2 and result.changelog_offsets == {("counts", 0): 1}
    assert checkpoint.state is CheckpointState.COMMITTED


def test_changelog_partition_is_the_input_partition(store: MemoryStore) -> None:
    producer = FakeProducer()
    checkpoint = make(store, producer)
    checkpoint.store_transaction("counts", 1).put(b"k", b"v")
    checkpoint.consumed("ns.in", 1, 0)
    checkpoint.commit()
    assert [c[2] for c in producer.calls if c[0] == "produce"] == [1]
    assert store.partition(1).checkpoint() == 0
    assert store.partition(0).checkpoint() is None


@pytest.mark.parametrize("step", ["flush", "send_offsets", "commit"])
def test_a_failed_commit_step_leaves_the_store_untouched(store: MemoryStore, step: str) -> None:
    producer = FakeProducer()
    producer.fail_on = step
    checkpoint = make(store, producer)
    checkpoint.consumed("ns.in", 0, 7)
    checkpoint.store_transaction("counts", 0).put(b"a", b"1")
    with pytest.raises(TransactionAbortRequiredError):
        checkpoint.commit()
    assert checkpoint.state is CheckpointState.ABORTED
    assert store.partition(0).get(b"a") is None
    assert store.partition(0).checkpoint() is None
    assert checkpoint.abort() == {("ns.in", 0): 7}  # where to rewind
    store.partition(0).begin().abort()  # the partition takes a new transaction


def test_abort_discards_writes_and_returns_the_first_offsets(store: MemoryStore) -> None:
    checkpoint = make(store, FakeProducer())
    checkpoint.consumed("ns.in", 0, 10)
    checkpoint.consumed("ns.in", 0, 11)
    checkpoint.consumed("ns.in", 1, 3)
    checkpoint.store_transaction("counts", 0).put(b"a", b"1")
    assert checkpoint.abort() == {("ns.in", 0): 10, ("ns.in", 1): 3}
    assert store.partition(0).get(b"a") is None
    with pytest.raises(UsageError):
        checkpoint.consumed("ns.in", 0, 12)


def test_at_least_once_commits_offsets_with_the_consumer_after_the_outputs(store: MemoryStore) -> None:
    producer = FakeProducer(transactional=False)
    consumer = FakeGroupConsumer()
    checkpoint = make(store, producer, consumer)
    checkpoint.consumed("ns.in", 0, 5)
    checkpoint.store_transaction("counts", 0).put(b"a", b"1")
    checkpoint.commit()
    assert "send_offsets" not in producer.names()
    assert consumer.commits == [[("ns.in", 0, 6)]]
    assert store.partition(0).get(b"a") == b"1"


def test_nothing_begins_until_needed_and_fencing_offsets_can_be_added(store: MemoryStore) -> None:
    producer = FakeProducer()
    checkpoint = make(store, producer)
    assert checkpoint.empty and producer.calls == []
    checkpoint.store_transaction("counts", 0).put(b"timer", b"1")  # e.g. from punctuate
    assert not checkpoint.empty and checkpoint.records == 0
    checkpoint.include_offset("ns.in", 0, 100)
    checkpoint.commit()
    assert ("send_offsets", [("ns.in", 0, 100)], "group-metadata") in producer.calls


def test_a_store_that_fails_to_apply_marks_the_checkpoint_failed(store: MemoryStore) -> None:
    producer = FakeProducer()
    checkpoint = make(store, producer)
    checkpoint.consumed("ns.in", 0, 0)
    checkpoint.store_transaction("counts", 0).put(b"a", b"1")
    store.partition(0).apply([], 50)  # the checkpoint moved past what this commit reaches
    with pytest.raises(StateError):
        checkpoint.commit()
    assert checkpoint.state is CheckpointState.FAILED
    assert "commit" in producer.names()  # Kafka did commit: the partition needs a restore
