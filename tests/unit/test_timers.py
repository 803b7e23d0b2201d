"""Timers processor and deadline gate, on a MemoryStore and a fake sink (no broker)."""

from __future__ import annotations

import concurrent.futures
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import ListOffsetsResultInfo

from processors.deadline import (
    AlwaysPastGate,
    PartitionOffsets,
    RouterProgressGate,
    passed_deadline,
    probe_points,
)
from processors.runtime.context import Context
from processors.runtime.processor import Record
from processors.state.base import PartitionTransaction
from processors.state.memory import MemoryStore
from processors.timers import (
    TimersConfig,
    TimersProcessor,
    cancel_timer_command,
    reverse_key,
    schedule_timer_command,
    timer_key,
)
from streams import StreamsConfig
from streams._codec import RecordCodec
from streams.errors import ConfigError, SerializationError

CODEC = RecordCodec()


@dataclass
class Fired:
    topic: str
    key: bytes | None
    value: bytes | None


class ManualGate:
    """Past up to a frontier the test moves; records what it was asked."""

    def __init__(self, frontier: int | None = None) -> None:
        self.frontier = frontier
        self.asked: list[tuple[int, int | None]] = []

    def past(self, deadline_ms: int, *, horizon_ms: int | None = None) -> bool:
        self.asked.append((deadline_ms, horizon_ms))
        return self.frontier is not None and deadline_ms <= self.frontier


class Harness:
    """Drives one partition of a processor like the runtime loop: one transaction per call."""

    def __init__(self, processor: TimersProcessor, partition: int = 0) -> None:
        self.processor = processor
        self.partition = partition
        self.store = MemoryStore("timers", "timers")
        self.store.open_partition(partition)
        self.txs: dict[tuple[str, int], PartitionTransaction] = {}
        self.pending: list[Fired] = []
        self.fired: list[Fired] = []
        self.offset = 0
        self.ctx = Context(
            processor="timers",
            partition=partition,
            store_names=["timers"],
            sink=lambda: self,
            resolve_topic=lambda name: f"ns.{name}",
            clock=lambda: 0,
        )

    # TransactionSink
    def store_transaction(self, store: str, partition: int) -> PartitionTransaction:
        tx = self.txs.get((store, partition))
        if tx is None:
            tx = self.txs[(store, partition)] = self.store.partition(partition).begin()
        return tx

    def produce(self, topic: str, key: bytes | None, value: bytes | None, **_: Any) -> None:
        self.pending.append(Fired(topic, key, value))

    def _commit(self) -> int:
        writes = 0
        for tx in self.txs.values():
            writes += len(tx.prepare())
            tx.on_committed(None)
        self.txs.clear()
        self.fired.extend(self.pending)
        self.pending.clear()
        return writes

    def send(self, value: bytes, run_id: str | None = "run-1") -> int:
        """Processes one timers record; returns the number of store writes it made."""
        record = Record(
            topic="ns.timers",
            partition=self.partition,
            offset=self.offset,
            timestamp_ms=0,
            key=None if run_id is None else run_id.encode(),
            value=self.processor.decoder(value),
            raw_value=value,
        )
        self.offset += 1
        self.ctx.begin_scope(record.offset, record.timestamp_ms)
        try:
            self.processor.process(record, self.ctx)
        except BaseException:
            self.ctx.rollback_scope()
            for tx in self.txs.values():
                tx.abort()
            self.txs.clear()
            raise
        self.ctx.commit_scope()
        return self._commit()

    def tick(self, now_ms: int) -> list[Fired]:
        """One punctuate; returns what it fired."""
        before = len(self.fired)
        self.ctx.begin_scope(None, None)
        self.processor.punctuate(now_ms, self.ctx)
        self.ctx.commit_scope()
        self._commit()
        return self.fired[before:]

    def keys(self) -> list[bytes]:
        return [key for key, _ in self.store.partition(self.partition).iter_range()]


def schedule(timer_id: str, fire_at_ms: int, *, gated: bool = False, payload: bytes | None = None) -> bytes:
    return schedule_timer_command(
        timer_id, fire_at_ms, "runs", b"key-" + timer_id.encode(), payload or timer_id.encode(), gated
    )


def payloads(fired: list[Fired]) -> list[bytes | None]:
    return [f.value for f in fired]


@pytest.fixture
def gate() -> ManualGate:
    return ManualGate()


@pytest.fixture
def harness(gate: ManualGate) -> Harness:
    return Harness(TimersProcessor(gate, TimersConfig(max_fires_per_tick=100)))


# -- commands ----------------------------------------------------------------------------------


def test_commands_round_trip_through_the_schema() -> None:
    value = CODEC.decode("streams.TimerCommand", schedule_timer_command("t1", 5, "waits", "k", b"p", True))
    assert value == {
        "timer_id": "t1",
        "body": (
            "streams.ScheduleTimer",
            {
                "fire_at_ms": 5,
                "target_topic": "waits",
                "target_key": b"k",
                "payload": b"p",
                "after_events_routed": True,
            },
        ),
    }
    assert CODEC.decode("streams.TimerCommand", cancel_timer_command("t1")) == {
        "timer_id": "t1",
        "body": ("streams.CancelTimer", {}),
    }


@pytest.mark.parametrize(
    ("timer_id", "fire_at_ms", "topic", "field"),
    [("", 1, "runs", "timer_id"), ("t", -1, "runs", "fire_at_ms"), ("t", 1, "", "target_topic")],
)
def test_schedule_command_rejects_invalid_values(
    timer_id: str, fire_at_ms: int, topic: str, field: str
) -> None:
    with pytest.raises(SerializationError) as info:
        schedule_timer_command(timer_id, fire_at_ms, topic, b"k", b"p")
    assert info.value.field == field


def test_invalid_records_raise_for_the_dlq(harness: Harness) -> None:
    with pytest.raises(SerializationError, match="run id"):
        harness.send(schedule("t1", 10), run_id=None)
    raw = CODEC.encode(
        "streams.TimerCommand",
        {
            "timer_id": "t1",
            "body": (
                "streams.ScheduleTimer",
                {"fire_at_ms": -5, "target_topic": "runs", "target_key": b"", "payload": b""},
            ),
        },
    )
    with pytest.raises(SerializationError, match="fire_at_ms"):
        harness.send(raw)
    assert harness.keys() == []


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        TimersConfig(max_fires_per_tick=0)


# -- schedule / cancel / replace ---------------------------------------------------------------


def test_timer_fires_once_when_due_and_is_deleted(harness: Harness) -> None:
    harness.send(schedule("t1", 1000))
    assert harness.keys() == [reverse_key("t1"), timer_key(1000, "t1")]
    assert harness.tick(999) == []
    fired = harness.tick(1000)
    assert fired == [Fired("ns.runs", b"key-t1", b"t1")]
    assert harness.keys() == []
    assert harness.tick(5000) == []
    assert harness.processor.stats.fired == 1


def test_stored_record_carries_the_run_id(harness: Harness) -> None:
    harness.send(schedule("t1", 1000, gated=True), run_id="run-9")
    value = harness.store.partition(0).get(timer_key(1000, "t1", gated=True))
    assert value is not None
    record = CODEC.decode("streams.TimerRecord", value)
    assert record["run_id"] == "run-9"
    assert record["after_events_routed"] is True


def test_cancel_prevents_firing(harness: Harness) -> None:
    harness.send(schedule("t1", 1000))
    harness.send(schedule("t2", 1000))
    harness.send(cancel_timer_command("t1"))
    assert harness.tick(2000) == [Fired("ns.runs", b"key-t2", b"t2")]
    assert harness.keys() == []
    assert harness.processor.stats.cancelled == 1


def test_cancel_of_an_absent_timer_is_a_no_op(harness: Harness) -> None:
    assert harness.send(cancel_timer_command("nope")) == 0
    harness.send(schedule("t1", 10))
    harness.tick(10)
    assert harness.send(cancel_timer_command("t1")) == 0
    assert harness.keys() == []


def test_rescheduling_replaces_the_timer(harness: Harness) -> None:
    harness.send(schedule("t1", 1000, payload=b"old"))
    harness.send(schedule("t1", 3000, payload=b"new"))
    assert harness.keys() == [reverse_key("t1"), timer_key(3000, "t1")]
    assert harness.tick(2000) == []
    assert payloads(harness.tick(3000)) == [b"new"]
    assert harness.keys() == []


def test_rescheduling_earlier_and_between_plain_and_gated(harness: Harness, gate: ManualGate) -> None:
    gate.frontier = 10**12
    harness.send(schedule("t1", 5000, payload=b"a"))
    harness.send(schedule("t1", 2000, gated=True, payload=b"b"))
    assert harness.keys() == [timer_key(2000, "t1", gated=True), reverse_key("t1")]
    harness.send(schedule("t1", 1000, payload=b"c"))
    assert harness.keys() == [reverse_key("t1"), timer_key(1000, "t1")]
    assert payloads(harness.tick(10_000)) == [b"c"]


def test_same_id_in_one_transaction_keeps_only_the_last(gate: ManualGate) -> None:
    # Both commands in one transaction: the reverse index is read through the open transaction.
    harness = Harness(TimersProcessor(gate))
    for value in (schedule("t1", 100, payload=b"x"), schedule("t1", 200, payload=b"y")):
        record = Record("ns.timers", 0, 0, 0, b"r", harness.processor.decoder(value), value)
        harness.ctx.begin_scope(0, 0)
        harness.processor.process(record, harness.ctx)
        harness.ctx.commit_scope()
    harness._commit()
    assert payloads(harness.tick(1000)) == [b"y"]


# -- ordering, bounded ticks, catch-up ---------------------------------------------------------


def test_due_timers_fire_in_due_order(harness: Harness) -> None:
    rng = random.Random(7)
    due = {f"t{i:03d}": rng.randrange(0, 50) for i in range(60)}
    for timer_id, fire_at in due.items():
        harness.send(schedule(timer_id, fire_at))
    fired = harness.tick(100)
    expected = sorted(due, key=lambda timer_id: (due[timer_id], timer_id))
    assert payloads(fired) == [timer_id.encode() for timer_id in expected]


def test_work_per_tick_is_bounded_and_catch_up_keeps_due_order(gate: ManualGate) -> None:
    harness = Harness(TimersProcessor(gate, TimersConfig(max_fires_per_tick=3)))
    for i in reversed(range(10)):
        harness.send(schedule(f"t{i}", 100 + i))
    batches = [payloads(harness.tick(10_000)) for _ in range(4)]
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert [p for batch in batches for p in batch] == [f"t{i}".encode() for i in range(10)]


def test_catch_up_fires_new_overdue_timers_in_order_with_the_backlog(gate: ManualGate) -> None:
    harness = Harness(TimersProcessor(gate, TimersConfig(max_fires_per_tick=2)))
    for i in range(6):
        harness.send(schedule(f"late{i}", 1000 + 100 * i))
    first = payloads(harness.tick(5000))
    # Scheduled while catching up, due before the rest of the backlog: fires before it.
    harness.send(schedule("early", 1150))
    rest = [p for _ in range(3) for p in payloads(harness.tick(5001))]
    assert first == [b"late0", b"late1"]
    assert rest == [b"early", b"late2", b"late3", b"late4", b"late5"]


def test_timers_not_yet_due_wait_for_their_tick(harness: Harness) -> None:
    for i in range(5):
        harness.send(schedule(f"t{i}", 100 * (i + 1)))
    assert payloads(harness.tick(250)) == [b"t0", b"t1"]
    assert payloads(harness.tick(300)) == [b"t2"]
    assert payloads(harness.tick(10_000)) == [b"t3", b"t4"]


# -- the deadline gate -------------------------------------------------------------------------


def test_gate_blocks_only_gated_timers(harness: Harness, gate: ManualGate) -> None:
    harness.send(schedule("plain1", 100))
    harness.send(schedule("gated1", 150, gated=True))
    harness.send(schedule("plain2", 200))
    harness.send(schedule("gated2", 250, gated=True))
    gate.frontier = None
    assert payloads(harness.tick(1000)) == [b"plain1", b"plain2"]
    assert gate.asked == [(150, 250)]  # asked once, with the tick's largest gated deadline
    gate.frontier = 160
    assert payloads(harness.tick(1050)) == [b"gated1"]
    gate.frontier = 10**6
    assert payloads(harness.tick(1100)) == [b"gated2"]
    assert harness.keys() == []
    assert harness.processor.stats.gate_blocked_ticks == 2


def test_plain_timers_never_consult_the_gate(harness: Harness, gate: ManualGate) -> None:
    harness.send(schedule("p", 100))
    harness.tick(1000)
    assert gate.asked == []


def test_gate_stops_being_asked_after_the_first_refusal_in_a_tick(harness: Harness, gate: ManualGate) -> None:
    for i in range(5):
        harness.send(schedule(f"g{i}", 100 + i, gated=True))
    gate.frontier = 101
    assert payloads(harness.tick(1000)) == [b"g0", b"g1"]
    assert [deadline for deadline, _ in gate.asked] == [100, 101, 102]


def test_gated_and_plain_timers_merge_in_due_order(gate: ManualGate) -> None:
    harness = Harness(TimersProcessor(gate, TimersConfig(max_fires_per_tick=4)))
    gate.frontier = 10**6
    for i in range(6):
        harness.send(schedule(f"p{i}", 10 * i))
        harness.send(schedule(f"g{i}", 10 * i + 5, gated=True))
    fired = payloads(harness.tick(1000)) + payloads(harness.tick(1000)) + payloads(harness.tick(1000))
    assert fired == [f"{kind}{i}".encode() for i in range(6) for kind in "pg"]


def test_always_past_gate_fires_gated_timers_like_plain_ones() -> None:
    harness = Harness(TimersProcessor(AlwaysPastGate()))
    harness.send(schedule("g", 100, gated=True))
    assert payloads(harness.tick(100)) == [b"g"]


# -- RouterProgressGate logic (fake admin) -----------------------------------------------------


def _offsets(committed: int | None, start: int = 0, end: int = 10) -> PartitionOffsets:
    return PartitionOffsets(committed, start, end)


def test_passed_deadline_takes_the_largest_passing_probe() -> None:
    partitions = {0: _offsets(5), 1: _offsets(8)}
    probes = {100: {0: 3, 1: 2}, 200: {0: 5, 1: 8}, 300: {0: 6, 1: 8}}
    assert passed_deadline(partitions, probes, checked_at_ms=10_000, grace_ms=1000) == 200


def test_passed_deadline_without_later_records_needs_the_end_and_the_grace() -> None:
    probes = {9_500: {0: -1}}
    at_end = {0: _offsets(10)}
    behind = {0: _offsets(9)}
    assert passed_deadline(behind, probes, checked_at_ms=10_000, grace_ms=0) is None
    # At the end: every deadline up to the check time minus the grace is past.
    assert passed_deadline(at_end, probes, checked_at_ms=10_000, grace_ms=1000) == 9_000
    assert passed_deadline(at_end, probes, checked_at_ms=10_000, grace_ms=100) == 9_900


def test_passed_deadline_without_committed_offsets() -> None:
    empty = {0: PartitionOffsets(None, 0, 0), 1: PartitionOffsets(None, 7, 7)}
    assert passed_deadline(empty, {500: {0: -1, 1: -1}}, checked_at_ms=2000, grace_ms=100) == 1900
    with_records = {0: PartitionOffsets(None, 0, 4)}
    assert passed_deadline(with_records, {500: {0: 2}}, checked_at_ms=2000, grace_ms=100) is None
    # Every retained record is later than the deadline: nothing before it can still be routed.
    assert passed_deadline(with_records, {500: {0: 0}}, checked_at_ms=2000, grace_ms=100) == 500


def test_probe_points_span_deadline_to_horizon() -> None:
    assert probe_points(100, None, 8) == [100]
    assert probe_points(100, 50, 8) == [100]
    assert probe_points(100, 200, 1) == [100]
    points = probe_points(100, 800, 8)
    assert points[0] == 100 and points[-1] == 800 and len(points) == 8


def _done(value: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


class FakeAdmin:
    """Answers admin calls from an in-memory events topic: append times per partition."""

    def __init__(self, topic: str, group: str, partitions: int) -> None:
        self.topic = topic
        self.group = group
        self.times: dict[int, list[int]] = {p: [] for p in range(partitions)}
        self.committed: dict[int, int] = {}
        self.calls = 0
        self.hold: list[concurrent.futures.Future[Any]] | None = None

    def _future(self, value: Any) -> concurrent.futures.Future[Any]:
        if self.hold is None:
            return _done(value)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.hold.append(future)
        future.value = value  # type: ignore[attr-defined]
        return future

    def release(self) -> None:
        assert self.hold is not None
        for future in self.hold:
            future.set_result(future.value)  # type: ignore[attr-defined]
        self.hold = None

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(
            topics={topic: SimpleNamespace(error=None, partitions=dict.fromkeys(self.times))}
        )

    def list_consumer_group_offsets(self, requests: list[ConsumerGroupTopicPartitions], **_: Any) -> Any:
        self.calls += 1
        (request,) = requests
        tps = [
            TopicPartition(tp.topic, tp.partition, self.committed.get(tp.partition, -1001))
            for tp in request.topic_partitions
        ]
        return {request.group_id: self._future(ConsumerGroupTopicPartitions(request.group_id, tps))}

    def list_offsets(self, specs: dict[TopicPartition, Any], **_: Any) -> Any:
        out = {}
        for tp, spec in specs.items():
            times = self.times[tp.partition]
            if spec._value == -2:
                offset = 0
            elif spec._value == -1:
                offset = len(times)
            else:
                offset = next((i for i, ts in enumerate(times) if ts >= spec._value), -1)
            out[tp] = self._future(ListOffsetsResultInfo(offset, -1, -1))
        return out


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def make_gate(admin: FakeAdmin, clock: Clock, **kwargs: Any) -> RouterProgressGate:
    config = StreamsConfig(namespace="ns", bootstrap_servers="localhost:1")
    return RouterProgressGate(config, admin=admin, clock=clock, grace_ms=100, **kwargs)


def test_router_progress_gate_follows_committed_offsets() -> None:
    admin = FakeAdmin("ns.events", "ns.router", 2)
    admin.times = {0: [1000, 2000, 3000], 1: [1500, 2500]}
    clock = Clock(10_000)
    gate = make_gate(admin, clock)
    admin.committed = {0: 1, 1: 0}
    # Record 1000 routed on p0, 1500 on p1 not: deadlines up to 1500 are past, later ones are not.
    assert gate.past(1000, horizon_ms=1600)
    known = gate.known_past_ms
    assert known is not None and 1000 <= known <= 1500
    clock.now += 50
    assert not gate.past(1501)
    admin.committed = {0: 2, 1: 1}
    clock.now += 50
    assert gate.past(1500, horizon_ms=2000)  # everything before 2000 routed: one check covers both
    checks = gate.checks
    assert gate.past(2000)
    assert gate.checks == checks  # answered from the cache
    admin.committed = {0: 3, 1: 2}
    clock.now += 50
    assert gate.past(9_000)  # router at the end: past up to the check time minus the grace
    assert gate.known_past_ms == clock.now - 100
    assert not gate.past(clock.now)


def test_router_progress_gate_checks_at_most_once_per_interval() -> None:
    admin = FakeAdmin("ns.events", "ns.router", 1)
    admin.times = {0: [1000, 2000]}
    clock = Clock(10_000)
    gate = make_gate(admin, clock, check_interval_ms=50)
    assert not gate.past(1500)
    assert not gate.past(1600)
    assert not gate.past(1500)
    assert gate.checks == 1
    admin.committed = {0: 2}
    clock.now += 49
    assert not gate.past(1500)
    clock.now += 1
    assert gate.past(1500)
    assert gate.checks == 2


def test_router_progress_gate_never_blocks_on_a_slow_check() -> None:
    admin = FakeAdmin("ns.events", "ns.router", 1)
    admin.times = {0: [1000]}
    admin.committed = {0: 1}
    admin.hold = []
    clock = Clock(10_000)
    gate = make_gate(admin, clock, wait_ms=0)
    assert not gate.past(500)
    admin.release()
    assert gate.past(500)  # picked up without a new check
    assert gate.checks == 1


def test_router_progress_gate_without_committed_offsets() -> None:
    admin = FakeAdmin("ns.events", "ns.router", 2)
    clock = Clock(10_000)
    gate = make_gate(admin, clock)
    assert gate.past(9_000)  # empty topic: past (up to now minus the grace)
    admin.times = {0: [9_950], 1: []}
    clock.now = 20_000
    assert not gate.past(19_000)  # a record the router never routed


def test_router_progress_gate_survives_failed_checks() -> None:
    admin = FakeAdmin("ns.events", "ns.router", 1)
    clock = Clock(10_000)
    gate = make_gate(admin, clock)

    def fail(*_: Any, **__: Any) -> Any:
        failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
        failed.set_exception(RuntimeError("broker down"))
        return {"ns.router": failed}

    admin.list_consumer_group_offsets = fail  # type: ignore[method-assign]
    assert not gate.past(1000)
    assert gate.known_past_ms is None


def test_router_progress_gate_validates_settings() -> None:
    config = StreamsConfig(namespace="ns", bootstrap_servers="localhost:1")
    with pytest.raises(ConfigError):
        RouterProgressGate(config, admin=object(), max_probes=0)
    gate = RouterProgressGate(config, admin=object())
    assert gate.router_group == "ns.router"
    assert gate.events_topic == "ns.events"
