"""The matcher on a real broker, driven by the runtime loop through its topics.

Records go to ``waits`` keyed by their match key (murmur2, as every producer of the app does); the
matcher's outputs are read back from ``runs`` and ``timers`` with ``read_committed``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from processors.matcher import MatcherProcessor
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
from processors.runtime.config import RuntimeConfig
from processors.runtime.loop import ProcessorLoop
from streams import StreamsConfig
from streams._event import Event, now_ms
from streams._matchkey import match_key as _match_key
from streams._matchkey import partition_for
from streams._topics import create_topics

pytestmark = pytest.mark.kafka

WAIT_S = 60.0
HOUR = 3600 * 1000


def match_key(cart: str) -> bytes:
    return _match_key("cart/purchased", "data.cart_id", cart)


@pytest.fixture
def config(streams_config: StreamsConfig, tmp_path: Path) -> StreamsConfig:
    create_topics(streams_config)
    return streams_config.replace(state_dir=tmp_path / "state")


def send(config: StreamsConfig, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({**config.client_config(), "partitioner": "murmur2_random", "linger.ms": 0})
    for key, value in records:
        producer.produce(config.topic("waits"), key=key, value=value)
    assert producer.flush(10) == 0


def register(config: StreamsConfig, key: bytes, run_id: str, since_ts: int, **kw: Any) -> None:
    fields: dict[str, Any] = {
        "run_id": run_id,
        "function_id": "fn",
        "step_id": "wait",
        "wait_id": "wait",
        "event_name": "cart/purchased",
        "expression": None,
        "since_ts": since_ts,
        "lookback_from_ts": since_ts - 5 * 60_000,
        "expires_at_ms": since_ts + HOUR,
        "kind": "WAIT",
    }
    fields.update(kw)
    send(config, [(key, register_wait(key, **fields))])


def purchased(config: StreamsConfig, key: bytes, cart: str, event_id: str, ts: int) -> None:
    event = Event(name="cart/purchased", data={"cart_id": cart}, id=event_id, ts=ts)
    send(config, [(key, correlated_event(key, event, ts))])


class Reader:
    """Reads decoded ``runs`` and ``timers`` commands (read_committed)."""

    def __init__(self, config: StreamsConfig) -> None:
        self.consumer = Consumer(
            {
                **config.client_config(),
                "group.id": f"{config.namespace}.reader",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        self.topics = {config.topic("runs"): RUN_COMMAND, config.topic("timers"): TIMER_COMMAND}
        self.consumer.assign(
            [
                TopicPartition(topic, p, 0)
                for topic, logical in ((config.topic("runs"), "runs"), (config.topic("timers"), "timers"))
                for p in range(config.partitions[logical])
            ]
        )
        self.runs: list[tuple[bytes, dict[str, Any]]] = []
        self.timers: list[dict[str, Any]] = []

    def poll_until(self, done: Callable[[Reader], bool], timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not done(self):
            assert time.monotonic() < deadline, f"timed out; runs={self.runs} timers={self.timers}"
            self._poll_once()

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._poll_once()

    def _poll_once(self) -> None:
        message = self.consumer.poll(0.1)
        if message is None or message.error():
            return
        topic, key, value = message.topic(), message.key(), message.value()
        assert topic is not None and key is not None and value is not None
        decoded = CODEC.decode(self.topics[topic], value)
        if topic.endswith(".runs"):
            self.runs.append((key, decoded))
        else:
            self.timers.append(decoded)

    def resolutions(self) -> list[tuple[str, str, str | None]]:
        out = []
        for _, command in self.runs:
            kind, fields = command["body"]
            if kind == "streams.WaitResolved":
                event = fields["event"]
                out.append((command["run_id"], fields["wait_id"], None if event is None else event["id"]))
        return out

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def reader(config: StreamsConfig) -> Iterator[Reader]:
    r = Reader(config)
    yield r
    r.close()


@contextmanager
def running(config: StreamsConfig) -> Iterator[ProcessorLoop]:
    loop = ProcessorLoop(config, MatcherProcessor(), RuntimeConfig())
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(loop.run()), daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop()
        thread.join(60)
        assert not thread.is_alive(), "matcher loop did not stop"
    assert result == [0], loop.fatal_error


def test_matcher_resolves_waits_through_its_topics(config: StreamsConfig, reader: Reader) -> None:
    t0 = now_ms()
    carts = ["c-1", "c-2", "c-3", "c-4"]
    keys = {cart: match_key(cart) for cart in carts}
    # The keys spread over both waits partitions (the test is about cross-partition routing too).
    assert len({partition_for(k, config.partitions["waits"]) for k in keys.values()}) == 2
    with running(config):
        # c-1: the event comes first (send-before-wait), the wait finds it in the buffer.
        purchased(config, keys["c-1"], "c-1", "E-c1", t0 + 1)
        register(config, keys["c-1"], "run-c1", t0)
        # c-2: fan-out to three waiting runs.
        for i in range(3):
            register(config, keys["c-2"], f"run-c2-{i}", t0)
        purchased(config, keys["c-2"], "c-2", "E-c2", t0 + 2)
        # c-3: the timeout wins; the later event finds nothing.
        register(config, keys["c-3"], "run-c3", t0, expires_at_ms=t0 + 10)
        send(config, [(keys["c-3"], wait_expired(keys["c-3"], "run-c3", "wait", t0 + 10))])
        purchased(config, keys["c-3"], "c-3", "E-c3", t0 + 3)
        # c-4: cancelled before any event.
        register(config, keys["c-4"], "run-c4", t0)
        send(config, [(keys["c-4"], cancel_wait(keys["c-4"], "run-c4", "wait"))])
        purchased(config, keys["c-4"], "c-4", "E-c4", t0 + 4)

        expected = {
            ("run-c1", "wait", "E-c1"),
            ("run-c2-0", "wait", "E-c2"),
            ("run-c2-1", "wait", "E-c2"),
            ("run-c2-2", "wait", "E-c2"),
            ("run-c3", "wait", None),
        }
        reader.poll_until(lambda r: len(r.resolutions()) >= len(expected))
        reader.drain(2.0)
    assert sorted(reader.resolutions(), key=str) == sorted(expected, key=str)
    assert all(key == command["run_id"].encode() for key, command in reader.runs)
    cancelled = {t["timer_id"] for t in reader.timers if t["body"][0] == "streams.CancelTimer"}
    assert cancelled == {wait_timer_id(run, "wait") for run, _, event in expected if event is not None}


def test_stored_waits_survive_a_restart(config: StreamsConfig, reader: Reader) -> None:
    t0 = now_ms()
    key = match_key("c-restart")
    with running(config):
        register(config, key, "run-r", t0)
        purchased(config, match_key("c-other"), "c-other", "E-other", t0 + 1)  # resolves nothing
        reader.drain(3.0)  # let the loop commit the stored wait
    assert reader.resolutions() == []
    with running(config):
        purchased(config, key, "c-restart", "E-restart", t0 + 2)
        reader.poll_until(lambda r: len(r.resolutions()) >= 1)
        reader.drain(1.0)
    assert reader.resolutions() == [("run-r", "wait", "E-restart")]
