"""Durable functions end to end against the real broker: steps, retries, sleeps, events, cancel."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streams import Event, NonRetriableError, RetryAfterError, Step, StepError

pytestmark = pytest.mark.kafka


def test_multi_step_function_passes_outputs_between_steps(harness: Any) -> None:
    calls: list[str] = []

    def add(a: int, b: int) -> int:
        calls.append("add")
        return a + b

    async def double(x: int) -> int:
        calls.append("double")
        return x * 2

    @harness.app.function(id="math", trigger="calc/requested")
    async def math(event: Event, step: Step) -> dict[str, int]:
        total = await step.run("add", add, event.data["a"], event.data["b"])
        doubled = await step.run("double", double, total)
        return {"total": total, "doubled": doubled}

    harness.start()
    harness.send(Event(name="calc/requested", data={"a": 2, "b": 3}))
    (run,) = harness.wait_ended(1, "math")
    assert run["status"] == "COMPLETED"
    assert run["output_json"] == '{"total":5,"doubled":10}'
    assert calls == ["add", "double"]
    (finished,) = harness.system_events("streams/function.finished")
    assert finished.data["run_id"] == run["run_id"]
    assert finished.data["output"] == {"total": 5, "doubled": 10}


def test_parallel_steps_are_discovered_in_one_pass_and_run_concurrently(harness: Any) -> None:
    started = {"a": threading.Event(), "b": threading.Event()}

    def meet(name: str, other: str) -> str:
        started[name].set()
        # Only succeeds if the other step runs at the same time (both were dispatched together).
        if not started[other].wait(timeout=20):
            raise NonRetriableError(f"{other} never started while {name} ran")
        return name

    @harness.app.function(id="fan", trigger="fan/out")
    async def fan(event: Event, step: Step) -> list[str]:
        return list(await asyncio.gather(step.run("a", meet, "a", "b"), step.run("b", meet, "b", "a")))

    harness.start()
    harness.send(Event(name="fan/out", data={}))
    (run,) = harness.wait_ended(1, "fan")
    assert (run["status"], run["output_json"]) == ("COMPLETED", '["a","b"]')


def test_retries_then_success(harness: Any) -> None:
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(time.time())
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "ok"

    @harness.app.function(id="flaky", trigger="flaky/go")
    async def fn(event: Event, step: Step) -> str:
        return await step.run("call", flaky)

    harness.start()
    harness.send(Event(name="flaky/go", data={}))
    (run,) = harness.wait_ended(1, "flaky")
    assert (run["status"], run["output_json"], len(attempts)) == ("COMPLETED", '"ok"', 3)


def test_non_retriable_error_stops_at_once_and_fails_the_run(harness: Any) -> None:
    attempts: list[int] = []

    def broken() -> None:
        attempts.append(1)
        raise NonRetriableError("card declined")

    @harness.app.function(id="charge", trigger="charge/go")
    async def fn(event: Event, step: Step) -> None:
        await step.run("charge", broken)

    harness.start()
    harness.send(Event(name="charge/go", data={}))
    (run,) = harness.wait_ended(1, "charge")
    assert run["status"] == "FAILED"
    assert "card declined" in run["error"]
    assert len(attempts) == 1


def test_retry_after_waits_for_the_given_time(harness: Any) -> None:
    attempts: list[float] = []

    def limited() -> str:
        attempts.append(time.time())
        if len(attempts) == 1:
            raise RetryAfterError("rate limited", timedelta(seconds=1.5))
        return "done"

    @harness.app.function(id="limited", trigger="limited/go")
    async def fn(event: Event, step: Step) -> str:
        return await step.run("call", limited)

    harness.start()
    harness.send(Event(name="limited/go", data={}))
    (run,) = harness.wait_ended(1, "limited")
    assert run["status"] == "COMPLETED"
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 1.4


def test_exhausted_retries_caught_by_the_function(harness: Any) -> None:
    attempts: list[int] = []

    def always_fails() -> None:
        attempts.append(1)
        raise ValueError("nope")

    @harness.app.function(id="catcher", trigger="catch/go", retries=2)
    async def fn(event: Event, step: Step) -> str:
        try:
            await step.run("fragile", always_fails)
        except StepError as err:
            kind = err.error_type
            return await step.run("fallback", lambda: f"fallback after {kind}")
        return "unreachable"

    harness.start()
    harness.send(Event(name="catch/go", data={}))
    (run,) = harness.wait_ended(1, "catcher")
    assert (run["status"], run["output_json"]) == ("COMPLETED", '"fallback after ValueError"')
    assert len(attempts) == 3  # retries=2 means 3 attempts


def test_exhausted_retries_not_caught_fail_the_run_and_run_on_failure(harness: Any) -> None:
    handled: list[dict[str, Any]] = []

    def always_fails() -> None:
        raise ValueError("boom")

    async def on_failure(event: Event, step: Step) -> None:
        await step.run("record", lambda: handled.append(dict(event.data)))

    @harness.app.function(id="doomed", trigger="doom/go", retries=1, on_failure=on_failure)
    async def fn(event: Event, step: Step) -> None:
        await step.run("fragile", always_fails)

    harness.start()
    harness.send(Event(name="doom/go", data={"order": 7}))
    harness.wait_ended(1, "doomed.on-failure")
    (run,) = harness.ended("doomed")
    assert run["status"] == "FAILED"
    assert "boom" in run["error"]
    (failed,) = harness.system_events("streams/function.failed")
    assert failed.data["function_id"] == "doomed"
    assert failed.data["event"]["data"] == {"order": 7}
    assert len(handled) == 1 and handled[0]["run_id"] == run["run_id"]


def test_sleep_resumes_after_its_duration(harness: Any) -> None:
    times: dict[str, float] = {}

    @harness.app.function(id="sleeper", trigger="sleep/go")
    async def fn(event: Event, step: Step) -> None:
        await step.run("before", lambda: times.setdefault("before", time.time()))
        await step.sleep("nap", "2s")
        await step.run("after", lambda: times.setdefault("after", time.time()))

    harness.start()
    harness.send(Event(name="sleep/go", data={}))
    (run,) = harness.wait_ended(1, "sleeper")
    assert run["status"] == "COMPLETED"
    assert times["after"] - times["before"] >= 1.9  # never early


def test_sleep_until_in_the_past_continues_at_once(harness: Any) -> None:
    @harness.app.function(id="past", trigger="past/go")
    async def fn(event: Event, step: Step) -> str:
        await step.sleep_until("then", datetime(2020, 1, 1, tzinfo=UTC))
        return await step.run("after", lambda: "went on")

    harness.start()
    harness.send(Event(name="past/go", data={}))
    (run,) = harness.wait_ended(1, "past", timeout=30)
    assert (run["status"], run["output_json"]) == ("COMPLETED", '"went on"')


def test_send_event_triggers_a_second_function_exactly_once(harness: Any) -> None:
    received: list[str] = []

    @harness.app.function(id="parent", trigger="parent/go")
    async def parent(event: Event, step: Step) -> list[str]:
        return await step.send_event("notify", Event(name="child/go", data={"from": "parent"}))

    @harness.app.function(id="child", trigger="child/go")
    async def child(event: Event, step: Step) -> None:
        await step.run("note", lambda: received.append(event.id))

    harness.start()
    harness.send(Event(name="parent/go", data={}))
    harness.wait_ended(1, "child")
    (parent_run,) = harness.wait_ended(1, "parent")
    time.sleep(2)  # give a duplicate time to show up
    harness.wait_for(lambda: True)
    assert len(harness.ended("child")) == 1
    assert len(received) == 1
    assert parent_run["output_json"] == f'["{received[0]}"]'


def test_duplicate_event_id_starts_one_run(harness: Any) -> None:
    runs: list[str] = []

    @harness.app.function(id="once", trigger="once/go")
    async def fn(event: Event, step: Step) -> None:
        await step.run("work", lambda: runs.append(event.id))

    harness.start()
    harness.send(Event(name="once/go", data={}, id="same-id"))
    harness.send(Event(name="once/go", data={}, id="same-id"))
    harness.wait_ended(1, "once")
    time.sleep(2)
    harness.wait_for(lambda: True)
    assert len(harness.runs) == 1
    assert runs == ["same-id"]


def test_cancel_mid_sleep(harness: Any) -> None:
    after: list[int] = []

    @harness.app.function(id="longnap", trigger="nap/go")
    async def fn(event: Event, step: Step) -> None:
        await step.sleep("nap", "1h")
        await step.run("after", lambda: after.append(1))

    harness.start()
    harness.send(Event(name="nap/go", data={}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    (run_id,) = harness.runs
    harness.app.cancel(run_id)
    (run,) = harness.wait_ended(1, "longnap")
    assert run["status"] == "CANCELLED"
    assert after == []
    (cancelled,) = harness.system_events("streams/function.cancelled")
    assert cancelled.data["run_id"] == run_id
