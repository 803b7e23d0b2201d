"""The timers processor on a real broker, driven by the runtime loop; the router-progress gate.

Timing assertions are loose on purpose: a timer must fire, in order, and not absurdly late. The
measured lateness is printed (``-s``) and attached to the test report as a user property.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.deadline import RouterProgressGate
from processors.runtime.config import RuntimeConfig
from processors.runtime.loop import ProcessorLoop
from processors.timers import TimersConfig, TimersProcessor, cancel_timer_command, schedule_timer_command
from streams import StreamsConfig
from streams._topics import create_topics

pytestmark = pytest.mark.kafka

#: Generous bound on fire time minus due time (the resolution is ~50-100 ms; CI boxes are slow).
LATENESS_BOUND_MS = 1000
WAIT_S = 30.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def config(streams_config: StreamsConfig, tmp_path: Path) -> StreamsConfig:
    create_topics(streams_config)
    return streams_config.replace(state_dir=tmp_path / "state")


def producer(config: StreamsConfig) -> Producer:
    return Producer({**config.client_config(), "partitioner": "murmur2_random", "linger.ms": 0})


def send(config: StreamsConfig, commands: list[tuple[str, bytes]]) -> None:
    p = producer(config)
    for run_id, value in commands:
        p.produce(config.topic("timers"), key=run_id.encode(), value=value)
    assert p.flush(10) == 0


class Target:
    """Reads what timers fired to a topic (read_committed), with record timestamps."""

    def __init__(self, config: StreamsConfig, topic: str = "runs") -> None:
        self.consumer = Consumer(
            {
                **config.client_config(),
                "group.id": f"{config.namespace}.reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        name = config.topic(topic)
        self.consumer.assign([TopicPartition(name, p, 0) for p in range(config.partitions[topic])])
        self.records: list[tuple[bytes, bytes, int]] = []  # key, value, timestamp

    def poll_until(
        self, done: Callable[[list[tuple[bytes, bytes, int]]], bool], timeout_s: float = WAIT_S
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self.records):
            assert time.monotonic() < deadline, f"timed out; got {[r[1] for r in self.records]}"
            message = self.consumer.poll(0.1)
            if message is None or message.error():
                continue
            self.records.append((message.key(), message.value(), message.timestamp()[1]))

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            message = self.consumer.poll(0.1)
            if message is not None and not message.error():
                self.records.append((message.key(), message.value(), message.timestamp()[1]))

    def values(self) -> list[bytes]:
        return [value for _, value, _ in self.records]

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def target(config: StreamsConfig) -> Iterator[Target]:
    reader = Target(config)
    yield reader
    reader.close()


@contextmanager
def running(config: StreamsConfig, processor: TimersProcessor) -> Iterator[ProcessorLoop]:
    """Runs the timers loop on a thread; waits until it fires a probe timer (assigned and ticking)."""
    loop = ProcessorLoop(config, processor, RuntimeConfig(punctuate_interval_ms=50))
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), daemon=True)
    thread.start()
    try:
        probe = f"probe-{random.random()}".encode()
        send(config, [("probe", schedule_timer_command("probe", 0, "history", b"probe", probe))])
        reader = Target(config, "history")
        try:
            reader.poll_until(lambda records: any(v == probe for _, v, _ in records), 60)
        finally:
            reader.close()
        yield loop
    finally:
        loop.stop()
        thread.join(60)
        assert not thread.is_alive(), "timers loop did not stop"
    assert result == [0], loop.fatal_error


def due_payload(due_ms: int, name: str) -> bytes:
    return f"{name}:{due_ms}".encode()


def lateness(record: tuple[bytes, bytes, int]) -> int:
    _, value, ts = record
    return ts - int(value.split(b":")[1])


def test_timer_fires_within_resolution(
    config: StreamsConfig, target: Target, record_property: Callable[[str, object], None]
) -> None:
    with running(config, TimersProcessor.for_app(config)):
        due = now_ms() + 2000
        send(
            config,
            [
                (
                    "run-a",
                    schedule_timer_command("run-a/sleep/1", due, "runs", b"run-a", due_payload(due, "a")),
                )
            ],
        )
        target.poll_until(lambda records: len(records) == 1)
    (record,) = target.records
    assert record[0] == b"run-a"
    assert record[1] == due_payload(due, "a")
    late = lateness(record)
    record_property("lateness_ms", late)
    print(f"timer lateness: {late} ms")
    assert -50 <= late < LATENESS_BOUND_MS


def test_cancel_prevents_firing(config: StreamsConfig, target: Target) -> None:
    with running(config, TimersProcessor.for_app(config)):
        due = now_ms() + 1500
        send(
            config,
            [
                ("run-c", schedule_timer_command("run-c/a", due, "runs", b"run-c", due_payload(due, "a"))),
                ("run-c", schedule_timer_command("run-c/b", due, "runs", b"run-c", due_payload(due, "b"))),
                ("run-c", cancel_timer_command("run-c/a")),
                (
                    "run-c",
                    schedule_timer_command("run-c/c", due + 1000, "runs", b"run-c", due_payload(due, "c")),
                ),
                ("run-c", cancel_timer_command("run-c/never-scheduled")),
            ],
        )
        target.poll_until(lambda records: any(v.startswith(b"c:") for _, v, _ in records))
        target.drain(0.3)
    assert target.values() == [due_payload(due, "b"), due_payload(due, "c")]


def test_overdue_timers_fire_in_due_order_after_a_restart(config: StreamsConfig, target: Target) -> None:
    processor = TimersProcessor.for_app(config, TimersConfig(max_fires_per_tick=3))
    count = 20
    base = now_ms() + 4000
    dues = [base + 10 * i for i in range(count)]
    commands = [
        ("run-r", schedule_timer_command(f"run-r/{i}", due, "runs", b"run-r", due_payload(due, str(i))))
        for i, due in enumerate(dues)
    ]
    random.Random(3).shuffle(commands)
    with running(config, processor) as loop:
        before = loop.metrics.records
        send(config, commands)
        deadline = time.monotonic() + WAIT_S
        while loop.metrics.records < before + count:
            assert time.monotonic() < deadline, "timer commands were not consumed"
            time.sleep(0.05)
        assert now_ms() < base, "the machine is too slow for this test's schedule"
    # Down while the timers come due.
    time.sleep(max(0.0, (dues[-1] - now_ms()) / 1000) + 0.5)
    target.drain(0.2)
    assert target.records == []
    restarted_at = now_ms()
    with running(config, TimersProcessor.for_app(config, TimersConfig(max_fires_per_tick=3))):
        target.poll_until(lambda records: len(records) == count)
        target.drain(0.3)
    assert [int(v.split(b":")[0]) for v in target.values()] == list(range(count))
    assert all(ts >= restarted_at for _, _, ts in target.records)


def commit_router_offsets(config: StreamsConfig, offsets: dict[int, int]) -> None:
    """Commits offsets on ``events`` for the router group, as the router would after routing."""
    consumer = Consumer({**config.client_config(), "group.id": f"{config.namespace}.router"})
    try:
        consumer.commit(
            offsets=[TopicPartition(config.topic("events"), p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()


def produce_events(config: StreamsConfig, partition: int, count: int) -> list[int]:
    """Appends events to one partition; returns their offsets' LogAppendTime timestamps."""
    delivered: list[int] = []
    p = producer(config)
    for _ in range(count):
        p.produce(
            config.topic("events"),
            value=b'{"name":"x","data":{}}',
            partition=partition,
            on_delivery=lambda err, msg: delivered.append(msg.timestamp()[1]),
        )
        p.flush(10)
        time.sleep(0.02)
    assert len(delivered) == count
    return delivered


def end_offsets(config: StreamsConfig) -> dict[int, int]:
    consumer = Consumer({**config.client_config(), "group.id": f"{config.namespace}.probe"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(config.topic("events"), p), timeout=10)[1]
            for p in range(config.partitions["events"])
        }
    finally:
        consumer.close()


def fresh_gate(config: StreamsConfig) -> RouterProgressGate:
    return RouterProgressGate(config, grace_ms=200, wait_ms=10_000)


def eventually_past(gate: RouterProgressGate, deadline_ms: int, timeout_s: float = 20.0) -> bool:
    """Asks until the gate says past (a new topic's leaders may not be ready: retriable errors)."""
    end = time.monotonic() + timeout_s
    while not gate.past(deadline_ms):
        if time.monotonic() > end:
            return False
        time.sleep(0.1)
    return True


def test_router_progress_gate_against_a_router_group(config: StreamsConfig) -> None:
    start = now_ms()
    # An empty events topic and a router that never ran: past, up to the wall clock minus the grace.
    assert eventually_past(fresh_gate(config), start - 500)
    times = produce_events(config, 0, 3)
    after = now_ms() + 1
    time.sleep(0.3)
    # Never ran, records before the deadline: not past. All records after the deadline: past.
    assert not fresh_gate(config).past(after)
    assert fresh_gate(config).past(times[0])
    # The router routed the first record only: deadlines up to the second record are past.
    commit_router_offsets(config, {0: 1})
    gate = fresh_gate(config)
    assert gate.past(times[1])
    assert not fresh_gate(config).past(times[1] + 1)
    assert not fresh_gate(config).past(after)
    # Routed to the end of every partition: past up to the wall clock minus the grace.
    commit_router_offsets(config, end_offsets(config))
    gate = fresh_gate(config)
    assert gate.past(after)
    known = gate.known_past_ms
    assert known is not None and known >= now_ms() - 2000
    assert gate.checks == 1


def test_gated_timer_waits_for_the_router(config: StreamsConfig, target: Target) -> None:
    gate = RouterProgressGate(config, grace_ms=200)
    with running(config, TimersProcessor(gate)):
        produce_events(config, 0, 1)  # appended before the deadline, not yet routed
        due = now_ms() + 500
        send(
            config,
            [
                (
                    "run-g",
                    schedule_timer_command("run-g/wait", due, "runs", b"run-g", due_payload(due, "g"), True),
                ),
                (
                    "run-g",
                    schedule_timer_command("run-g/sleep", due, "runs", b"run-g", due_payload(due, "p")),
                ),
            ],
        )
        target.poll_until(lambda records: len(records) >= 1)
        target.drain(1.5)
        assert target.values() == [due_payload(due, "p")]
        routed_at = now_ms()
        commit_router_offsets(config, end_offsets(config))
        target.poll_until(lambda records: len(records) == 2)
    assert target.values() == [due_payload(due, "p"), due_payload(due, "g")]
    assert target.records[1][2] >= routed_at
    assert gate.checks >= 1
