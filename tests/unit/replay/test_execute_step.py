"""``execute_step``: running a planned ``step.run`` and mapping its outcome; ``backoff_ms``."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from processors.replay import (
    DEFAULT_BACKOFF_CAP_MS,
    RunStep,
    StepFailed,
    StepSucceeded,
    backoff_ms,
    execute_step,
)
from streams._context import inside_step_run
from streams._step import MAX_STEP_OUTPUT_BYTES, SyncStep, encode_step_output
from streams.errors import NonRetriableError, RetryAfterError, UsageError

NOW = 1_700_000_000_000


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return execute_step(RunStep(step_id="s", fn=fn, args=args, kwargs=kwargs), now_ms=NOW)


def test_sync_callable_runs_inline() -> None:
    threads: list[int] = []

    def fn(a: int, b: int = 0) -> dict[str, int]:
        threads.append(threading.get_ident())
        return {"sum": a + b}

    assert run(fn, 1, b=2) == StepSucceeded("s", '{"sum":3}')
    assert threads == [threading.get_ident()]


def test_async_callable_and_sync_callable_returning_awaitable() -> None:
    async def fetch(x: str) -> list[str]:
        await asyncio.sleep(0)
        return [x, "ünïcode"]

    assert run(fetch, "a") == StepSucceeded("s", '["a","ünïcode"]')
    assert run(lambda: fetch("b")) == StepSucceeded("s", '["b","ünïcode"]')


def test_exceptions_map_to_outcomes() -> None:
    def boom() -> None:
        raise ValueError("nope")

    failed = run(boom)
    assert isinstance(failed, StepFailed)
    assert (failed.error_type, failed.message, failed.retriable, failed.retry_at_ms) == (
        "ValueError",
        "nope",
        True,
        None,
    )
    assert failed.stack is not None and "boom" in failed.stack

    def refuse() -> None:
        raise NonRetriableError("closed")

    refused = run(refuse)
    assert refused == StepFailed("s", "NonRetriableError", "closed", retriable=False, stack=refused.stack)


def test_retry_after_relative_and_absolute() -> None:
    def rel() -> None:
        raise RetryAfterError("slow down", timedelta(seconds=90))

    def absolute() -> None:
        raise RetryAfterError("later", datetime(2024, 1, 1, tzinfo=UTC))

    def naive() -> None:
        raise RetryAfterError("later", datetime(2024, 1, 1))

    assert run(rel).retry_at_ms == NOW + 90_000 and run(rel).retriable
    assert run(absolute).retry_at_ms == 1_704_067_200_000
    assert run(naive).retry_at_ms is None and run(naive).retriable


def test_cancelled_error_is_a_retriable_failure() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError()

    failed = run(cancelled)
    assert isinstance(failed, StepFailed) and failed.error_type == "CancelledError" and failed.retriable


def test_non_json_output_names_the_step() -> None:
    failed = run(lambda: {"when": datetime(2024, 1, 1, tzinfo=UTC)})
    assert isinstance(failed, StepFailed) and not failed.retriable
    assert failed.error_type == "UsageError"
    assert "output of step 's'" in failed.message and "$.when (datetime)" in failed.message


def test_nan_and_circular_outputs() -> None:
    loop: list[Any] = []
    loop.append(loop)
    for value, where in ((float("nan"), "at $:"), ({"a": [1, loop]}, "at $.a[1]")):
        failed = run(lambda value=value: value)
        assert isinstance(failed, StepFailed) and where in failed.message, failed


def test_output_over_4_mib() -> None:
    failed = run(lambda: "x" * MAX_STEP_OUTPUT_BYTES)
    assert isinstance(failed, StepFailed) and not failed.retriable
    assert "output of step 's'" in failed.message
    assert f"limit of {MAX_STEP_OUTPUT_BYTES} bytes (4 MiB)" in failed.message
    assert isinstance(run(lambda: "x" * (MAX_STEP_OUTPUT_BYTES - 2)), StepSucceeded)
    # Multi-byte characters count as bytes.
    assert isinstance(run(lambda: "é" * (MAX_STEP_OUTPUT_BYTES // 2)), StepFailed)


def test_encode_step_output_shapes() -> None:
    assert encode_step_output("s", (1, 2)) == "[1,2]"
    assert encode_step_output("s", {1: "a"}) == '{"1":"a"}'
    assert encode_step_output("s", None) == "null"
    with pytest.raises(UsageError, match="step 'x'"):
        encode_step_output("x", object())


def test_step_tools_inside_step_run_fail_without_retry() -> None:
    def nested() -> None:
        SyncStep().run("inner", lambda: 1)

    failed = run(nested)
    assert isinstance(failed, StepFailed) and not failed.retriable
    assert "inside step.run('s')" in failed.message


def test_guard_is_reset_afterwards() -> None:
    with inside_step_run("x"), pytest.raises(UsageError, match=r"inside step\.run"):
        SyncStep().sleep("y", "1s")
    with pytest.raises(UsageError, match="outside a function run"):
        SyncStep().sleep("y", "1s")


def test_execute_step_refuses_a_running_loop() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="to_thread"):
            run(lambda: 1)

    asyncio.run(main())


def test_backoff_is_exponential_with_full_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(DEFAULT_BACKOFF_CAP_MS, 1000 * 2 ** (attempt - 1))
        values = [backoff_ms(attempt, rng=rng) for _ in range(50)]
        assert all(0 <= v <= ceiling for v in values)
    assert max(backoff_ms(40, rng=rng) for _ in range(200)) > DEFAULT_BACKOFF_CAP_MS // 2
    assert backoff_ms(3, base_ms=1, cap_ms=2) <= 2
    assert backoff_ms(1, base_ms=0) == 0
    with pytest.raises(ValueError):
        backoff_ms(0)
