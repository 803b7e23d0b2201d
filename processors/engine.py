"""Wires an :class:`~streams.App` into its processors and runs them: what ``streams worker`` does.

Responsibilities:

- build the correlation index from the app's code, publish it to the compacted ``correlations``
  topic, and keep the router's copy the union of everything any worker published (so during a
  rolling deploy older routers forward pairs only newer code waits on);
- create the router, matcher, executor (with its step runner) and timers processors, or a subset
  (``--processors``);
- run them with :func:`processors.runtime.worker.run_worker` and close what they share.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from processors.executor import ExecutorProcessor, ExecutorSettings
from processors.matcher import MatcherProcessor
from processors.records import CODEC
from processors.router import RouterProcessor
from processors.runtime.config import RuntimeConfig
from processors.runtime.processor import Processor
from processors.runtime.worker import WorkerMode, run_worker
from processors.steprunner import StepRunner
from processors.timers import TimersProcessor
from streams._app import App
from streams._codec import EventCodec
from streams._config import producer_defaults
from streams._correlation import CorrelationIndex
from streams.errors import UsageError

logger = logging.getLogger(__name__)

ROLES = ("router", "matcher", "executor", "timers")
_INDEX_REFRESH_S = 2.0


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """Tunables of a worker beyond :class:`StreamsConfig` and :class:`RuntimeConfig`.

    Attributes:
        roles: Processor roles to run (default all four).
        max_concurrent_steps: ``step.run`` executions at once in this worker.
        executor: Retry backoff, idempotency window, lookback retention.
        buffer_retention_ms: How long the matcher keeps correlated events for lookback; raised to the
            largest ``lookback`` found in code.
    """

    roles: Sequence[str] = ROLES
    max_concurrent_steps: int = 16
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    buffer_retention_ms: int = 5 * 60 * 1000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.roles) - set(ROLES))
        if unknown or not self.roles:
            raise UsageError(f"unknown processor role(s) {unknown}; choose from {', '.join(ROLES)}")


class Engine:
    """The processors of one app in one worker, and the resources they share.

    Args:
        app: The app with its registered functions.
        settings: Worker tunables.
    """

    def __init__(self, app: App, settings: EngineSettings | None = None) -> None:
        self.app = app
        self.settings = settings or EngineSettings()
        self.config = app.config
        functions = app.functions
        self.code_index = CorrelationIndex.from_functions(functions.values())
        self._codec = EventCodec.from_config(self.config)
        self._stop_refresh = threading.Event()
        self._refresh_thread: threading.Thread | None = None
        self.step_runner: StepRunner | None = None
        self.router: RouterProcessor | None = None
        lookbacks = [
            wait.lookback_ms
            for function in functions.values()
            for wait in function.waits
            if wait.lookback_ms is not None
        ]
        retention = max([self.settings.buffer_retention_ms, *lookbacks])
        executor_settings = self.settings.executor
        if executor_settings.lookback_retention_ms > retention:
            retention = executor_settings.lookback_retention_ms
        self.processors: list[Processor[Any]] = []
        for role in ROLES:
            if role not in self.settings.roles:
                continue
            if role == "router":
                self.router = RouterProcessor(functions, self.code_index, event_codec=self._codec)
                self.processors.append(self.router)
            elif role == "matcher":
                self.processors.append(MatcherProcessor(buffer_retention_ms=retention))
            elif role == "executor":
                self.step_runner = StepRunner(self.config, max_concurrency=self.settings.max_concurrent_steps)
                self.processors.append(
                    ExecutorProcessor(
                        functions,
                        self.step_runner,
                        index=self.code_index,
                        event_codec=self._codec,
                        settings=executor_settings,
                    )
                )
            else:
                self.processors.append(TimersProcessor.for_app(self.config))

    def start_index_sync(self) -> None:
        """Publishes this code's correlation index and starts following everyone's."""
        producer = Producer({**self.config.client_config(), **producer_defaults()})
        worker = f"{socket.gethostname()}:{os.getpid()}"
        for key, value in self.code_index.to_records(
            published_by=worker, published_ms=int(time.time() * 1000)
        ):
            producer.produce(
                self.config.topic("correlations"), CODEC.encode("streams.Correlation", value), key
            )
        producer.flush(30)
        producer.close()
        if self.router is not None:
            self._refresh_thread = threading.Thread(target=self._follow_index, name="index-sync", daemon=True)
            self._refresh_thread.start()

    def _follow_index(self) -> None:
        topic = self.config.topic("correlations")
        consumer = Consumer(
            {
                **self.config.client_config(),
                "group.id": f"{self.config.namespace}.index-reader",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            metadata = consumer.list_topics(topic, timeout=30)
            partitions = metadata.topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            while not self._stop_refresh.is_set():
                messages = consumer.consume(500, timeout=_INDEX_REFRESH_S)
                values = [
                    CODEC.decode("streams.Correlation", value)
                    for m in messages
                    if m.error() is None and (value := m.value()) is not None
                ]
                if values and self.router is not None:
                    published = CorrelationIndex.from_records(values)
                    merged = self.router.index.union(published)
                    if merged != self.router.index:
                        logger.info("correlation index now routes %d pairs", len(merged))
                        self.router.index = merged
        except Exception:
            logger.exception("following the correlation index failed; routing with this code's index only")
        finally:
            consumer.close()

    def run(
        self,
        *,
        runtime: RuntimeConfig | None = None,
        state_dir: Path | str | None = None,
        mode: WorkerMode = "threads",
        install_signal_handlers: bool = True,
        stop_event: threading.Event | None = None,
    ) -> int:
        """Creates missing topics, publishes the index, runs the processors until stopped.

        Returns:
            The worker's exit status (0 after a clean stop).
        """
        self.app.create_topics()
        self.start_index_sync()
        try:
            return run_worker(
                self.config,
                self.processors,
                runtime=runtime,
                state_dir=state_dir,
                mode=mode,
                install_signal_handlers=install_signal_handlers,
                stop_event=stop_event,
            )
        finally:
            self.close()

    def close(self) -> None:
        """Stops the index follower and the step runner (waiting for running steps)."""
        self._stop_refresh.set()
        if self._refresh_thread is not None:
            self._refresh_thread.join(timeout=10)
        if self.step_runner is not None:
            self.step_runner.close()
