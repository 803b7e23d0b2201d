"""Runs ``step.run`` callables off the processing loop and reports their outcome through ``runs``.

Responsibilities:

- a bounded pool of step executions per worker (``max_concurrency`` threads), so a slow step never
  holds up the executor's transaction;
- reporting each attempt as ``StepCompleted``/``StepFailed`` to the ``runs`` topic with an idempotent
  producer. The executor applies the report in a later transaction: a report is just input, and a
  duplicate or stale one (wrong attempt, step already memoized) is a no-op there;
- remembering which steps run here until the executor has applied their report, so recovery after
  a rebalance does not start a second copy of a step this process is still running.

Side effects of a step are at-least-once (a step interrupted by a crash runs again); its recorded
result is exactly-once (the first applied report wins).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message, Producer

from processors.records import run_command
from processors.replay import StepFailed, StepSucceeded, execute_step
from streams._config import StreamsConfig, producer_defaults
from streams._context import RunStep

logger = logging.getLogger(__name__)


class StepDispatcher(Protocol):
    """What the executor needs from whatever runs its steps."""

    def submit(self, run_id: str, function_id: str, step: RunStep, attempt: int) -> None:
        """Starts one attempt of a step unless it is already running here."""
        ...

    def is_running(self, run_id: str, step_id: str) -> bool:
        """Whether this process runs the step (or has not seen its report applied yet)."""
        ...

    def forget(self, run_id: str, step_id: str) -> None:
        """The executor applied the step's report, or the run ended: stop tracking it."""
        ...


class StepRunner:
    """Thread-pool step execution reporting to the ``runs`` topic.

    Args:
        config: The app's configuration (bootstrap servers, namespace).
        max_concurrency: Steps executing at once in this worker.
    """

    def __init__(self, config: StreamsConfig, *, max_concurrency: int = 16) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self._topic = config.topic("runs")
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="step")
        self._producer = Producer(
            {
                **config.client_config(),
                **producer_defaults(),
                "linger.ms": 0,
            }
        )
        self._lock = threading.Lock()
        self._running: set[tuple[str, str]] = set()
        self._closed = False

    def submit(self, run_id: str, function_id: str, step: RunStep, attempt: int) -> None:
        """Starts one attempt of ``step`` unless this process already runs it."""
        key = (run_id, step.step_id)
        with self._lock:
            if self._closed or key in self._running:
                return
            self._running.add(key)
        self._pool.submit(self._execute, run_id, function_id, step, attempt)

    def is_running(self, run_id: str, step_id: str) -> bool:
        """Whether the step runs here or its report is not applied yet."""
        with self._lock:
            return (run_id, step_id) in self._running

    def forget(self, run_id: str, step_id: str) -> None:
        """Stops tracking a step whose report was applied."""
        with self._lock:
            self._running.discard((run_id, step_id))

    def _execute(self, run_id: str, function_id: str, step: RunStep, attempt: int) -> None:
        try:
            outcome = execute_step(step)
        except BaseException:  # execute_step maps user errors; anything here is ours
            logger.exception("step %s of run %s crashed the step runner", step.step_id, run_id)
            self.forget(run_id, step.step_id)
            return
        fields: dict[str, Any]
        if isinstance(outcome, StepSucceeded):
            kind, fields = (
                "StepCompleted",
                {
                    "step_id": step.step_id,
                    "attempt": attempt,
                    "output_json": outcome.output_json,
                },
            )
        else:
            assert isinstance(outcome, StepFailed)
            kind, fields = (
                "StepFailed",
                {
                    "step_id": step.step_id,
                    "attempt": attempt,
                    "error_type": outcome.error_type,
                    "error_message": outcome.message,
                    "retriable": outcome.retriable,
                    "retry_at_ms": outcome.retry_at_ms,
                    "error_stack": outcome.stack,
                },
            )
        value = run_command(run_id, function_id, kind, fields)

        def on_delivery(err: ConfluentKafkaError | None, _msg: Message) -> None:
            if err is not None:
                # The step's report is lost; recovery (ResumeSteps) will run it again.
                logger.error("report of step %s of run %s not delivered: %s", step.step_id, run_id, err.str())
                self.forget(run_id, step.step_id)

        while True:
            try:
                self._producer.produce(self._topic, value, run_id.encode(), on_delivery=on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def poll(self) -> None:
        """Serves delivery reports; the executor calls it every tick."""
        self._producer.poll(0)

    def close(self, timeout_s: float = 30.0) -> None:
        """Waits for running steps, then flushes their reports."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=False)
        self._producer.flush(timeout_s)
        self._producer.close()
