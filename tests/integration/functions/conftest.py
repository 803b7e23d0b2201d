"""Runs a whole app (router, matcher, executor, timers) in-process against the real broker.

Tests define functions on an ``App``, start the engine in a background thread, send events, and read
the run results from the ``history`` topic and system events from ``events``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from processors.engine import Engine, EngineSettings
from processors.executor import ExecutorSettings
from processors.records import CODEC, HISTORY_ENTRY, event_from_record
from processors.runtime.config import RuntimeConfig
from streams import App, Event, StreamsConfig
from streams._codec import EventCodec

FAST_RETRIES = ExecutorSettings(retry_base_ms=50, retry_cap_ms=200)


class Harness:
    """An app's engine on threads of the test process, plus readers of its output topics."""

    def __init__(
        self, config: StreamsConfig, state_dir: Path, *, settings: EngineSettings | None = None
    ) -> None:
        self.app = App(config.namespace, config)
        self.config = config
        self.state_dir = state_dir
        self.settings = settings or EngineSettings(executor=FAST_RETRIES)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.exit_code: int | None = None
        self._history = self._reader("history")
        self._events = self._reader("events")
        self.runs: dict[str, dict[str, Any]] = {}
        self.events: list[Event] = []

    def _reader(self, topic: str) -> Consumer:
        consumer = Consumer(
            {
                **self.config.client_config(),
                "group.id": f"{self.config.namespace}.test-{topic}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([self.config.topic(topic)])
        return consumer

    def start(self) -> Harness:
        engine = Engine(self.app, self.settings)

        def run() -> None:
            self.exit_code = engine.run(
                runtime=RuntimeConfig(),
                state_dir=self.state_dir,
                install_signal_handlers=False,
                stop_event=self._stop,
            )

        self._thread = threading.Thread(target=run, name="engine", daemon=True)
        self._thread.start()
        return self

    def stop_engine(self) -> None:
        """Stops the engine cleanly (a worker outage); ``start()`` brings it back with its state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "engine did not stop within 60 s"
        self._thread = None
        self._stop = threading.Event()

    def stop(self) -> None:
        self.stop_engine()
        self._history.close()
        self._events.close()
        self.app.close()

    def send(self, *events: Event) -> list[str]:
        return self.app.send(list(events))

    def _drain(self) -> None:
        for message in self._history.consume(500, timeout=0.2):
            if message.error() is None:
                entry = CODEC.decode(HISTORY_ENTRY, message.value())
                entry["trigger_event"] = event_from_record(entry["trigger"])
                previous = self.runs.get(entry["run_id"])
                if previous is None or previous["status"] == "RUNNING":
                    self.runs[entry["run_id"]] = entry
        codec = EventCodec()
        for message in self._events.consume(500, timeout=0.05):
            if message.error() is None:
                self.events.append(codec.decode(message.value()))

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._drain()
            if condition():
                return
            if self._thread is not None and not self._thread.is_alive():
                raise AssertionError(f"engine stopped (exit {self.exit_code}) while waiting for {what}")
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}; runs: {self.runs}\n{self.dump()}"
        )

    def wait_commands(self, timeout: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
        """Every command on the ``waits`` topic so far (committed), decoded: ``(kind, fields)``."""
        from processors.records import WAIT_COMMAND, body

        consumer = Consumer(
            {
                **self.config.client_config(),
                "group.id": f"{self.config.namespace}.test-waits-{time.monotonic_ns()}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([self.config.topic("waits")])
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(1000, timeout=0.5) if m.error() is None]
            out += [body(CODEC.decode(WAIT_COMMAND, m.value())) for m in batch]
            if not batch and out:
                break
        consumer.close()
        return out

    def dump(self) -> str:
        """What each internal topic holds (uncommitted included), for failure messages."""
        lines = []
        for topic in ("runs", "waits", "timers", "dlq"):
            for isolation in ("read_uncommitted", "read_committed"):
                consumer = Consumer(
                    {
                        **self.config.client_config(),
                        "group.id": f"{self.config.namespace}.dump-{topic}-{isolation}",
                        "auto.offset.reset": "earliest",
                        "isolation.level": isolation,
                    }
                )
                consumer.subscribe([self.config.topic(topic)])
                got = [m for m in consumer.consume(1000, timeout=3) if m.error() is None]
                consumer.close()
                lines.append(f"{topic} {isolation}: {[(m.partition(), m.offset()) for m in got]}")
        return "\n".join(lines)

    def ended(self, function_id: str | None = None) -> list[dict[str, Any]]:
        return [
            run
            for run in self.runs.values()
            if run["status"] != "RUNNING" and (function_id is None or run["function_id"] == function_id)
        ]

    def wait_ended(
        self, count: int, function_id: str | None = None, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        self.wait_for(
            lambda: len(self.ended(function_id)) >= count, timeout, f"{count} ended runs of {function_id}"
        )
        return self.ended(function_id)

    def system_events(self, name: str, count: int = 1, timeout: float = 30.0) -> list[Event]:
        """System events of ``name`` seen so far, waiting until at least ``count`` arrived."""

        def matching() -> list[Event]:
            return [event for event in self.events if event.name == name]

        self.wait_for(lambda: len(matching()) >= count, timeout, f"{count} {name} events")
        return matching()


import pytest  # noqa: E402


@pytest.fixture
def harness(streams_config: StreamsConfig, tmp_path: Path):  # type: ignore[no-untyped-def]
    h = Harness(streams_config, tmp_path / "state")
    yield h
    h.stop()
