"""Unit tests of the matcher: the real processor and ``Context`` over an in-memory (or RocksDB) store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from processors.cancellation import cancel_timer_id
from processors.matcher import (
    BUFFER_PREFIX,
    COUNT_PREFIX,
    RETENTION_PREFIX,
    WAIT_PREFIX,
    WAIT_RECORD,
    MatcherProcessor,
    buffer_key,
    count_key,
    key_part,
    wait_key,
)
from processors.records import (
    CODEC,
    RUN_COMMAND,
    TIMER_COMMAND,
    cancel_wait,
    correlated_event,
    register_wait,
    wait_expired,
    wait_timer_id,
)
from processors.runtime.context import Context, Output
from processors.runtime.processor import Record
from processors.state import MemoryStore, RocksDBOptions, RocksDBStore, Store
from processors.state.base import PartitionTransaction
from streams._event import Event
from streams.errors import ConfigError

T0 = 1_700_000_000_000
KEY = b'cart/purchased\x00data.cart_id\x00"c-1"'
OTHER_KEY = b'cart/purchased\x00data.cart_id\x00"c-2"'
PURCHASED = "cart/purchased"
HOUR = 3600 * 1000


class Harness:
    """Drives a processor like the runtime loop does: one scope and one store transaction per record."""

    def __init__(self, processor: MatcherProcessor, store: Store) -> None:
        self.processor = processor
        self.store = store
        self.partition = store.open_partition(0)
        self.tx: PartitionTransaction | None = None
        self.outputs: list[Output] = []
        self.now_ms = T0
        self.offset = 0
        self.ctx = Context(
            processor="matcher",
            partition=0,
            store_names=list(processor.stores),
            sink=lambda: self,
            resolve_topic=lambda name: name,
            clock=lambda: self.now_ms,
        )

    # -- TransactionSink -------------------------------------------------------------------------

    def store_transaction(self, store: str, partition: int) -> PartitionTransaction:
        assert store == "waits" and partition == 0
        if self.tx is None:
            self.tx = self.partition.begin()
        return self.tx

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> None:
        self.outputs.append(Output(topic, key, value, partition, headers))

    # -- driving -----------------------------------------------------------------------------------

    def send(self, value: bytes, *, timestamp_ms: int | None = None) -> list[Output]:
        decoded = self.processor.decoder(value)
        record = Record(
            topic="waits",
            partition=0,
            offset=self.offset,
            timestamp_ms=self.now_ms if timestamp_ms is None else timestamp_ms,
            key=decoded["match_key"],
            value=decoded,
            raw_value=value,
        )
        start = len(self.outputs)
        self.ctx.begin_scope(record.offset, record.timestamp_ms)
        try:
            self.processor.process(record, self.ctx)
        except BaseException:
            self.ctx.rollback_scope()
            raise
        self.ctx.commit_scope()
        if self.tx is not None:
            self.tx.prepare()
            self.tx.on_committed(self.offset)
            self.tx = None
        self.offset += 1
        return self.outputs[start:]

    def register(
        self,
        wait_id: str = "w",
        *,
        key: bytes = KEY,
        run_id: str = "run-1",
        event_name: str = PURCHASED,
        expression: str | None = None,
        since_ts: int = T0,
        since_event_id: str | None = None,
        lookback_from_ts: int | None = None,
        expires_at_ms: int | None = T0 + HOUR,
        kind: str = "WAIT",
        exclude: Sequence[str] = (),
        index: int | None = None,
        step_id: str | None = None,
    ) -> list[Output]:
        return self.send(
            register_wait(
                key,
                run_id=run_id,
                function_id="fn",
                step_id=wait_id if step_id is None else step_id,
                wait_id=wait_id,
                event_name=event_name,
                expression=expression,
                since_ts=since_ts,
                since_event_id=since_event_id,
                lookback_from_ts=since_ts - 5 * 60_000 if lookback_from_ts is None else lookback_from_ts,
                expires_at_ms=expires_at_ms,
                kind=kind,
                exclude_event_ids=exclude,
                index=index,
            )
        )

    def event(
        self,
        event_id: str,
        ts: int,
        *,
        key: bytes = KEY,
        name: str = PURCHASED,
        data: dict[str, Any] | None = None,
        log_append_ms: int | None = None,
    ) -> list[Output]:
        event = Event(name=name, data={"cart_id": "c-1"} if data is None else data, id=event_id, ts=ts)
        appended = ts if log_append_ms is None else log_append_ms
        return self.send(correlated_event(key, event, appended))

    def expire(
        self, wait_id: str = "w", *, key: bytes = KEY, run_id: str = "run-1", expires_at_ms: int = T0 + HOUR
    ) -> list[Output]:
        return self.send(wait_expired(key, run_id, wait_id, expires_at_ms))

    def keys(self, prefix: bytes) -> list[bytes]:
        return [k for k, _ in self.partition.iter_prefix(prefix)]

    def waits(self, key: bytes = KEY) -> list[dict[str, Any]]:
        return [
            CODEC.decode(WAIT_RECORD, v) for _, v in self.partition.iter_prefix(WAIT_PREFIX + key_part(key))
        ]


@dataclass(frozen=True)
class Resolution:
    run_id: str
    wait_id: str
    event_id: str | None
    index: int | None


def resolutions(outputs: Sequence[Output]) -> list[Resolution]:
    found = []
    for out in outputs:
        if out.topic != "runs":
            continue
        assert out.value is not None
        command = CODEC.decode(RUN_COMMAND, out.value)
        kind, fields = command["body"]
        if kind == "streams.WaitResolved":
            assert out.key == command["run_id"].encode()
            event = fields["event"]
            found.append(
                Resolution(
                    command["run_id"],
                    fields["wait_id"],
                    None if event is None else event["id"],
                    fields["index"],
                )
            )
    return found


def cancellations(outputs: Sequence[Output]) -> list[tuple[str, str | None, str]]:
    found = []
    for out in outputs:
        if out.topic != "runs":
            continue
        assert out.value is not None
        command = CODEC.decode(RUN_COMMAND, out.value)
        kind, fields = command["body"]
        if kind == "streams.CancelRun":
            found.append((command["run_id"], fields["cancel_event_id"], fields["reason"]))
    return found


def cancelled_timers(outputs: Sequence[Output]) -> list[str]:
    found = []
    for out in outputs:
        if out.topic == "timers":
            assert out.value is not None
            command = CODEC.decode(TIMER_COMMAND, out.value)
            assert command["body"][0] == "streams.CancelTimer"
            found.append(command["timer_id"])
    return found


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    created: Store
    if request.param == "memory":
        created = MemoryStore("matcher", "waits")
    else:
        created = RocksDBStore(
            "matcher", "waits", tmp_path / "state", RocksDBOptions(block_cache_size=1 << 20)
        )
    yield created
    created.close()


@pytest.fixture
def harness(store: Store) -> Harness:
    return Harness(MatcherProcessor(), store)


def make_harness(store: Store, **settings: int) -> Harness:
    return Harness(MatcherProcessor(**settings), store)


# -- RegisterWait scans the buffer ----------------------------------------------------------------


def test_event_sent_before_the_wait_matches(harness: Harness) -> None:
    # Trigger at T0; the purchase 1 ms later reaches the matcher before the run registers its wait.
    assert harness.event("E-purchase", T0 + 1) == []
    outputs = harness.register(since_ts=T0)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-purchase", None)]
    assert cancelled_timers(outputs) == [wait_timer_id("run-1", "w")]
    assert harness.keys(WAIT_PREFIX) == []
    assert harness.processor.stats.resolved_on_register == 1


def test_event_older_than_the_run_clock_does_not_match(harness: Harness) -> None:
    harness.event("E-old", T0 - 1)
    assert harness.register(since_ts=T0) == []
    assert len(harness.waits()) == 1
    assert harness.event("E-old-live", T0 - 5) == []
    assert len(harness.waits()) == 1


def test_lookback_zero_excludes_events_before_the_wait_started(harness: Harness) -> None:
    start = T0 + 10_000
    harness.event("E-before", start - 1)
    assert harness.register(since_ts=start, lookback_from_ts=start) == []
    assert harness.event("E-late-ts", start - 1, log_append_ms=start + 5) == []
    outputs = harness.event("E-after", start)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-after", None)]


def test_lookback_from_ts_limits_the_scan(harness: Harness) -> None:
    # lookback="1h" style: since_ts = lookback_from_ts = start - 1h.
    start = T0 + 2 * HOUR
    harness.event("E-too-old", start - HOUR - 1)
    harness.event("E-in-window", start - HOUR + 1)
    outputs = harness.register(
        since_ts=start - HOUR, lookback_from_ts=start - HOUR, expires_at_ms=start + HOUR
    )
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-in-window", None)]


def test_default_lookback_reaches_only_the_buffer_window(harness: Harness) -> None:
    # since_ts is the run clock, but the scan reaches back only to lookback_from_ts.
    harness.event("E-old", T0 + 100)
    assert harness.register(since_ts=T0, lookback_from_ts=T0 + 200) == []
    outputs = harness.event("E-new", T0 + 300)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-new", None)]


def test_consumed_event_ids_never_match(harness: Harness) -> None:
    harness.event("E-consumed", T0 + 1)
    assert harness.register(since_ts=T0, exclude=["E-consumed", "E-other"]) == []
    assert harness.event("E-consumed", T0 + 2) == []  # even when it arrives again
    assert harness.event("E-other", T0 + 3) == []
    assert resolutions(harness.event("E-fresh", T0 + 4)) == [Resolution("run-1", "w", "E-fresh", None)]


def test_earliest_buffered_event_wins(harness: Harness) -> None:
    harness.event("E-3", T0 + 3000)
    harness.event("E-1", T0 + 1500)
    harness.event("E-2", T0 + 2000)
    outputs = harness.register(since_ts=T0)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-1", None)]


def test_equal_ts_is_broken_by_event_id(harness: Harness) -> None:
    harness.event("E-b", T0 + 5)
    harness.event("E-a", T0 + 5)
    assert resolutions(harness.register(since_ts=T0)) == [Resolution("run-1", "w", "E-a", None)]


def test_scan_skips_non_matching_events_and_takes_the_next(harness: Harness) -> None:
    harness.event("E-small", T0 + 1, data={"cart_id": "c-1", "total": 5})
    harness.event("E-late", T0 + 2, log_append_ms=T0 + HOUR + 1)  # appended after the deadline
    harness.event("E-big", T0 + 3, data={"cart_id": "c-1", "total": 500})
    outputs = harness.register(since_ts=T0, expression="async.data.total > 100")
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-big", None)]


def test_registered_wait_is_stored_with_match_key_and_time(harness: Harness) -> None:
    harness.now_ms = T0 + 77
    harness.register(since_ts=T0, index=3, exclude=["x"])
    (wait,) = harness.waits()
    assert wait["match_key"] == KEY
    assert wait["registered_ms"] == T0 + 77
    assert wait["index"] == 3
    assert wait["exclude_event_ids"] == ["x"]
    assert harness.keys(WAIT_PREFIX) == [wait_key(KEY, "run-1", "w")]


def test_duplicate_register_replaces_the_wait(harness: Harness) -> None:
    harness.register(since_ts=T0, expires_at_ms=T0 + 10)
    harness.register(since_ts=T0, expires_at_ms=T0 + 20)
    (wait,) = harness.waits()
    assert wait["expires_at_ms"] == T0 + 20
    # The first registration's timer is stale: it neither resolves nor removes the wait.
    assert harness.expire(expires_at_ms=T0 + 10) == []
    assert len(harness.waits()) == 1
    assert resolutions(harness.expire(expires_at_ms=T0 + 20)) == [Resolution("run-1", "w", None, None)]


def test_register_of_a_stored_wait_that_now_matches_the_buffer_resolves_once(harness: Harness) -> None:
    harness.register(since_ts=T0, expression="async.data.total > 100")
    harness.event("E-1", T0 + 1, data={"cart_id": "c-1", "total": 50})
    outputs = harness.register(since_ts=T0, expression="async.data.total > 10")
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-1", None)]
    assert harness.waits() == []


# -- CorrelatedEvent resolves stored waits -----------------------------------------------------------


def test_event_resolves_a_stored_wait(harness: Harness) -> None:
    assert harness.register(since_ts=T0) == []
    outputs = harness.event("E-1", T0 + 10)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-1", None)]
    assert cancelled_timers(outputs) == [wait_timer_id("run-1", "w")]
    assert [out.key for out in outputs] == [b"run-1", b"run-1"]
    assert harness.waits() == []
    assert harness.event("E-2", T0 + 20) == []


def test_resolution_carries_the_whole_event(harness: Harness) -> None:
    harness.register(since_ts=T0)
    (out, _) = harness.event("E-1", T0 + 10, data={"cart_id": "c-1", "n": [1, 2]})
    assert out.value is not None
    fields = CODEC.decode(RUN_COMMAND, out.value)["body"][1]
    assert fields["step_id"] == "w"
    assert fields["event"]["name"] == PURCHASED
    assert fields["event"]["data"] == '{"cart_id":"c-1","n":[1,2]}'
    assert fields["event"]["ts"] == T0 + 10


def test_match_and_if_both_required(harness: Harness) -> None:
    # match="data.cart_id" is the key; if_ is the stored expression.
    harness.register(since_ts=T0, expression="async.data.total > 100")
    assert harness.event("E-wrong-cart", T0 + 1, key=OTHER_KEY, data={"cart_id": "c-2", "total": 500}) == []
    assert harness.event("E-small", T0 + 2, data={"cart_id": "c-1", "total": 50}) == []
    outputs = harness.event("E-big", T0 + 3, data={"cart_id": "c-1", "total": 500})
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-big", None)]


def test_expression_runtime_error_is_no_match(harness: Harness) -> None:
    harness.register(since_ts=T0, expression="async.data.total > 100")
    assert harness.event("E-no-total", T0 + 1) == []
    assert harness.event("E-string", T0 + 2, data={"cart_id": "c-1", "total": "x"}) == []
    assert harness.processor.stats.expression_errors == 2
    assert len(harness.waits()) == 1


def test_event_name_must_match(harness: Harness) -> None:
    harness.register(since_ts=T0, event_name="cart/other")
    assert harness.event("E-1", T0 + 1) == []


def test_fan_out_resolves_every_waiter_once(harness: Harness) -> None:
    runs = [f"run-{i:03d}" for i in range(100)]
    for run_id in runs:
        assert harness.register(run_id=run_id, since_ts=T0) == []
    outputs = harness.event("E-1", T0 + 1)
    resolved = resolutions(outputs)
    assert [r.run_id for r in resolved] == runs  # deterministic order: by run id, wait id
    assert all(r.event_id == "E-1" for r in resolved)
    assert sorted(cancelled_timers(outputs)) == sorted(wait_timer_id(r, "w") for r in runs)
    assert harness.waits() == []
    assert harness.event("E-2", T0 + 2) == []
    assert harness.processor.stats.resolved_by_event == 100


def test_fan_out_evaluates_each_wait_condition(harness: Harness) -> None:
    for i in range(10):
        harness.register(run_id=f"run-{i}", since_ts=T0, expression=f"async.data.total >= {i * 10}")
    outputs = harness.event("E-1", T0 + 1, data={"cart_id": "c-1", "total": 45})
    assert [r.run_id for r in resolutions(outputs)] == [f"run-{i}" for i in range(5)]
    assert len(harness.waits()) == 5


def test_event_appended_after_the_deadline_does_not_resolve(harness: Harness) -> None:
    deadline = T0 + 1000
    harness.register(since_ts=T0, expires_at_ms=deadline)
    assert harness.event("E-late", T0 + 500, log_append_ms=deadline + 1) == []
    # Appended at the deadline: wins, however late the matcher reads it.
    harness.now_ms = deadline + HOUR
    outputs = harness.event("E-on-time", T0 + 600, log_append_ms=deadline)
    assert resolutions(outputs) == [Resolution("run-1", "w", "E-on-time", None)]


def test_buffered_event_appended_after_the_deadline_does_not_resolve(harness: Harness) -> None:
    deadline = T0 + 1000
    harness.event("E-late", T0 + 500, log_append_ms=deadline + 1)
    assert harness.register(since_ts=T0, expires_at_ms=deadline) == []


def test_wait_for_any_waits_resolve_independently(harness: Harness) -> None:
    key_paid = b'payment/succeeded\x00data.order\x00"o-1"'
    key_failed = b'payment/failed\x00data.order\x00"o-1"'
    harness.register("s#0", step_id="s", key=key_paid, event_name="payment/succeeded", index=0, since_ts=T0)
    harness.register("s#1", step_id="s", key=key_failed, event_name="payment/failed", index=1, since_ts=T0)
    outputs = harness.event("E-failed", T0 + 1, key=key_failed, name="payment/failed")
    assert resolutions(outputs) == [Resolution("run-1", "s#1", "E-failed", 1)]
    outputs = harness.event("E-paid", T0 + 2, key=key_paid, name="payment/succeeded")
    assert resolutions(outputs) == [Resolution("run-1", "s#0", "E-paid", 0)]
    first, _ = outputs
    assert first.value is not None
    assert CODEC.decode(RUN_COMMAND, first.value)["body"][1]["step_id"] == "s"


def test_several_waits_of_one_run_under_one_key(harness: Harness) -> None:
    harness.register("s#0", step_id="s", index=0, since_ts=T0)
    harness.register("s#1", step_id="s", index=1, since_ts=T0, expression="async.data.total > 1")
    outputs = harness.event("E-1", T0 + 1, data={"cart_id": "c-1", "total": 5})
    assert resolutions(outputs) == [
        Resolution("run-1", "s#0", "E-1", 0),
        Resolution("run-1", "s#1", "E-1", 1),
    ]


def test_match_keys_that_prefix_each_other_stay_apart(harness: Harness) -> None:
    short = b'a\x00data.x\x00"v"'
    long = short + b"\x00\x00zz"
    harness.register("w-short", key=short, event_name="a", since_ts=T0)
    harness.register("w-long", key=long, event_name="a", since_ts=T0)
    outputs = harness.event("E-1", T0 + 1, key=short, name="a")
    assert resolutions(outputs) == [Resolution("run-1", "w-short", "E-1", None)]
    assert [w["wait_id"] for w in harness.waits(long)] == ["w-long"]
    # And the buffer of one key is not scanned for the other.
    assert harness.register("w-long-2", key=long, event_name="a", since_ts=T0) == []


# -- the event / timeout race ---------------------------------------------------------------------


def test_race_event_first_then_expiry_is_a_no_op(harness: Harness) -> None:
    harness.register(since_ts=T0)
    first = resolutions(harness.event("E-1", T0 + 1))
    second = resolutions(harness.expire())
    assert first == [Resolution("run-1", "w", "E-1", None)]
    assert second == []
    assert harness.processor.stats.stale_expiries == 1


def test_race_expiry_first_then_event_is_a_no_op(harness: Harness) -> None:
    harness.register(since_ts=T0, index=2)
    outputs = harness.expire()
    assert resolutions(outputs) == [Resolution("run-1", "w", None, 2)]
    assert cancelled_timers(outputs) == []  # the timer already fired
    assert harness.event("E-1", T0 + 1) == []
    assert harness.waits() == []


def test_expiry_of_an_unknown_wait_is_a_no_op(harness: Harness) -> None:
    assert harness.expire("nope") == []


# -- CancelWait -------------------------------------------------------------------------------------


def test_cancel_wait_removes_it(harness: Harness) -> None:
    harness.register(since_ts=T0)
    assert harness.send(cancel_wait(KEY, "run-1", "w")) == []
    assert harness.waits() == []
    assert harness.event("E-1", T0 + 1) == []
    assert harness.expire() == []
    assert harness.send(cancel_wait(KEY, "run-1", "w")) == []  # idempotent
    assert harness.processor.stats.removed == 1


def test_cancel_wait_leaves_other_waits(harness: Harness) -> None:
    harness.register(run_id="run-1", since_ts=T0)
    harness.register(run_id="run-2", since_ts=T0)
    harness.send(cancel_wait(KEY, "run-1", "w"))
    assert [r.run_id for r in resolutions(harness.event("E-1", T0 + 1))] == ["run-2"]


# -- cancel_on subscriptions ------------------------------------------------------------------------

ADDED = "cart/product.added"
ADDED_KEY = b'cart/product.added\x00data.cart_id\x00"c-1"'


def subscribe(harness: Harness, trigger: Event, *, run_id: str = "run-1") -> list[Output]:
    # What the router registers with StartRun (processors/router.py).
    return harness.register(
        "cancel:0",
        step_id="",
        key=ADDED_KEY,
        run_id=run_id,
        event_name=ADDED,
        since_ts=trigger.ts,
        since_event_id=trigger.id,
        lookback_from_ts=trigger.ts,
        expires_at_ms=trigger.ts + HOUR,
        kind="CANCEL",
        exclude=[trigger.id],
    )


def added(harness: Harness, event_id: str, ts: int, **kw: Any) -> list[Output]:
    return harness.event(event_id, ts, key=ADDED_KEY, name=ADDED, **kw)


def test_own_trigger_never_cancels_the_run(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    assert subscribe(harness, trigger) == []
    assert added(harness, "E-5", T0) == []  # the router forwards the trigger after subscribing
    assert len(harness.waits(ADDED_KEY)) == 1


def test_buffered_own_trigger_never_cancels_the_run(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    added(harness, "E-5", T0)
    assert subscribe(harness, trigger) == []


def test_later_event_cancels_the_run(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    subscribe(harness, trigger)
    outputs = added(harness, "E-6", T0 + 1)
    assert cancellations(outputs) == [("run-1", "E-6", f"cancelled by {ADDED} E-6")]
    assert cancelled_timers(outputs) == [cancel_timer_id("run-1", "cancel:0")]
    assert resolutions(outputs) == []
    assert harness.waits(ADDED_KEY) == []
    assert added(harness, "E-7", T0 + 2) == []  # the subscription is gone
    assert harness.processor.stats.runs_cancelled == 1


def test_buffered_later_event_cancels_on_subscribe(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    added(harness, "E-6", T0 + 1)
    outputs = subscribe(harness, trigger)
    assert cancellations(outputs) == [("run-1", "E-6", f"cancelled by {ADDED} E-6")]
    assert harness.waits(ADDED_KEY) == []


def test_earlier_event_does_not_cancel(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    added(harness, "E-1", T0 - 1)
    assert subscribe(harness, trigger) == []
    assert added(harness, "E-2", T0 - 1) == []  # read later, but it happened before the trigger


def test_equal_ts_cancel_is_broken_by_id(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    subscribe(harness, trigger)
    assert added(harness, "E-4", T0) == []  # same ts, sorts before the trigger
    outputs = added(harness, "E-6", T0)  # same ts, sorts after
    assert cancellations(outputs) == [("run-1", "E-6", f"cancelled by {ADDED} E-6")]


def test_cancel_fan_out_cancels_every_earlier_run(harness: Harness) -> None:
    for i in range(3):
        subscribe(harness, Event(name=ADDED, data={}, id=f"E-{i}", ts=T0 + i), run_id=f"run-{i}")
    outputs = added(harness, "E-x", T0 + 1)  # after run-0's and run-1's triggers, before run-2's
    assert [c[0] for c in cancellations(outputs)] == ["run-0", "run-1"]
    assert [w["run_id"] for w in harness.waits(ADDED_KEY)] == ["run-2"]


def test_cancel_subscription_expiry_only_deletes(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    subscribe(harness, trigger)
    assert harness.expire("cancel:0", key=ADDED_KEY, expires_at_ms=T0 + HOUR) == []
    assert harness.waits(ADDED_KEY) == []
    assert added(harness, "E-6", T0 + 1) == []


def test_cancel_after_deadline_does_not_cancel(harness: Harness) -> None:
    trigger = Event(name=ADDED, data={"cart_id": "c-1"}, id="E-5", ts=T0)
    subscribe(harness, trigger)
    assert added(harness, "E-6", T0 + 1, log_append_ms=T0 + HOUR + 1) == []


# -- buffer retention -------------------------------------------------------------------------------


def test_buffer_is_pruned_by_retention(store: Store) -> None:
    harness = make_harness(store, buffer_retention_ms=1000)
    harness.event("E-old", T0, log_append_ms=T0)
    harness.event("E-mid", T0 + 500, log_append_ms=T0 + 500)
    assert len(harness.keys(BUFFER_PREFIX)) == 2
    harness.event("E-new", T0 + 1400, key=OTHER_KEY, log_append_ms=T0 + 1400)  # prunes across keys
    assert harness.keys(BUFFER_PREFIX) == [
        buffer_key(KEY, T0 + 500, "E-mid"),
        buffer_key(OTHER_KEY, T0 + 1400, "E-new"),
    ]
    assert len(harness.keys(RETENTION_PREFIX)) == 2
    assert harness.processor.stats.pruned_retention == 1
    # A wait registered now finds only what is left.
    assert resolutions(harness.register(since_ts=0, lookback_from_ts=0)) == [
        Resolution("run-1", "w", "E-mid", None)
    ]
    harness.event("E-newer", T0 + 3000, key=OTHER_KEY, log_append_ms=T0 + 3000)
    assert harness.keys(BUFFER_PREFIX) == [buffer_key(OTHER_KEY, T0 + 3000, "E-newer")]
    assert harness.keys(COUNT_PREFIX) == [count_key(OTHER_KEY)]


def test_pruning_is_bounded_per_record(store: Store) -> None:
    harness = make_harness(store, buffer_retention_ms=1000, prune_batch=3)
    for i in range(10):
        harness.event(f"E-{i}", T0 + i, log_append_ms=T0 + i)
    harness.event("E-late", T0 + 5000, key=OTHER_KEY, log_append_ms=T0 + 5000)
    assert len(harness.keys(BUFFER_PREFIX)) == 10 - 3 + 1
    harness.event("E-later", T0 + 5001, key=OTHER_KEY, log_append_ms=T0 + 5001)
    assert len(harness.keys(BUFFER_PREFIX)) == 10 - 6 + 2
    harness.event("E-latest", T0 + 5002, key=OTHER_KEY, log_append_ms=T0 + 5002)
    harness.event("E-last", T0 + 5003, key=OTHER_KEY, log_append_ms=T0 + 5003)
    assert harness.keys(BUFFER_PREFIX) == [
        buffer_key(OTHER_KEY, T0 + 5000 + i, name)
        for i, name in enumerate(["E-late", "E-later", "E-latest", "E-last"])
    ]
    assert harness.keys(COUNT_PREFIX) == [count_key(OTHER_KEY)]


def test_buffer_is_capped_per_key_dropping_the_oldest(store: Store) -> None:
    harness = make_harness(store, max_buffered_per_key=3)
    for i, ts in enumerate([5, 1, 4, 2, 3]):
        harness.event(f"E-{i}", T0 + ts)
    kept = [k[-3:] for k in harness.keys(BUFFER_PREFIX)]
    assert kept == [b"E-4", b"E-2", b"E-0"]  # ts 3, 4, 5
    assert len(harness.keys(RETENTION_PREFIX)) == 3
    assert harness.partition.get(count_key(KEY)) == (3).to_bytes(4, "big")
    assert harness.processor.stats.pruned_count == 2
    harness.event("E-other", T0, key=OTHER_KEY)
    assert harness.partition.get(count_key(OTHER_KEY)) == (1).to_bytes(4, "big")


def test_duplicate_event_is_buffered_once(harness: Harness) -> None:
    harness.event("E-1", T0 + 1)
    harness.event("E-1", T0 + 1, log_append_ms=T0 + 9)
    assert len(harness.keys(BUFFER_PREFIX)) == 1
    assert harness.partition.get(count_key(KEY)) == (1).to_bytes(4, "big")


def test_buffering_disabled(store: Store) -> None:
    harness = make_harness(store, max_buffered_per_key=0)
    harness.event("E-1", T0 + 1)
    assert harness.keys(b"") == []
    assert harness.register(since_ts=T0) == []


def test_invalid_settings() -> None:
    with pytest.raises(ConfigError, match="buffer_retention_ms"):
        MatcherProcessor(buffer_retention_ms=-1)
    with pytest.raises(ConfigError, match="max_buffered_per_key"):
        MatcherProcessor(max_buffered_per_key=True)
    with pytest.raises(ConfigError, match="prune_batch"):
        MatcherProcessor(prune_batch=1)


def test_processor_contract() -> None:
    processor = MatcherProcessor()
    assert (processor.name, processor.input_topic, tuple(processor.stores)) == (
        "matcher",
        "waits",
        ("waits",),
    )
    assert processor.decoder.schema_name == "streams.WaitCommand"  # type: ignore[attr-defined]
    assert not processor.has_punctuate
