"""Event coordination end to end against the real broker: wait_for_event, cancel_on, lookback, any/all."""

from __future__ import annotations

import time
from typing import Any

import pytest

from streams import CancelOn, Event, Step, StepError, Wait

pytestmark = pytest.mark.kafka


def _wait_fn(harness: Any, **options: Any) -> list[Any]:
    got: list[Any] = []

    # The options are not literals in the call, so the source scan cannot see them: declare the wait.
    declared = Wait(event=options["event"], match=options.get("match"), if_=options.get("if_"))

    @harness.app.function(id="waiter", trigger="cart/product.added", waits=[declared])
    async def waiter(event: Event, step: Step) -> Any:
        purchased = await step.wait_for_event("wait-for-purchase", **options)
        await step.run("record", lambda: got.append(None if purchased is None else purchased.id))
        return None if purchased is None else purchased.data

    return got


def test_match_resolves_with_the_correlated_event(harness: Any) -> None:
    got = _wait_fn(harness, event="cart/purchased", match="data.cart_id", timeout="30s")
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "c1"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    time.sleep(0.5)
    harness.send(Event(name="cart/purchased", data={"cart_id": "other"}))
    harness.send(Event(name="cart/purchased", data={"cart_id": "c1", "total": 9}, id="buy-1"))
    (run,) = harness.wait_ended(1, "waiter")
    assert (run["status"], run["output_json"]) == ("COMPLETED", '{"cart_id":"c1","total":9}')
    assert got == ["buy-1"]


def test_timeout_resolves_with_none(harness: Any) -> None:
    got = _wait_fn(harness, event="cart/purchased", match="data.cart_id", timeout="2s")
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "c2"}))
    (run,) = harness.wait_ended(1, "waiter")
    assert (run["status"], run["output_json"]) == ("COMPLETED", "null")
    assert got == [None]


def test_send_before_wait_matches(harness: Any) -> None:
    """Inngest #1433: a purchase produced 1 ms after the trigger, before the run reaches its wait."""
    got: list[Any] = []

    def slow() -> str:
        time.sleep(1.5)  # the purchase is routed to the matcher while this runs
        return "slow"

    @harness.app.function(id="late-waiter", trigger="cart/product.added")
    async def fn(event: Event, step: Step) -> Any:
        await step.run("slow", slow)
        purchased = await step.wait_for_event(
            "wait-for-purchase", event="cart/purchased", match="data.cart_id", timeout="20s"
        )
        await step.run("record", lambda: got.append(purchased and purchased.id))

    harness.start()
    trigger = Event(name="cart/product.added", data={"cart_id": "c3"})
    harness.send(trigger)
    harness.send(Event(name="cart/purchased", data={"cart_id": "c3"}, id="early", ts=trigger.ts + 1))
    (run,) = harness.wait_ended(1, "late-waiter")
    assert run["status"] == "COMPLETED"
    assert got == ["early"]


def test_event_older_than_the_trigger_does_not_match(harness: Any) -> None:
    got = _wait_fn(harness, event="cart/purchased", match="data.cart_id", timeout="3s")
    harness.start()
    now = int(time.time() * 1000)
    harness.send(Event(name="cart/purchased", data={"cart_id": "c4"}, id="old", ts=now - 10_000))
    time.sleep(1)
    harness.send(Event(name="cart/product.added", data={"cart_id": "c4"}, ts=now))
    (run,) = harness.wait_ended(1, "waiter")
    assert run["output_json"] == "null"
    assert got == [None]


def test_lookback_zero_only_matches_events_after_the_wait_started(harness: Any) -> None:
    got: list[Any] = []

    def slow() -> None:
        time.sleep(1.5)

    @harness.app.function(id="strict", trigger="cart/product.added")
    async def fn(event: Event, step: Step) -> None:
        await step.run("slow", slow)
        purchased = await step.wait_for_event(
            "w", event="cart/purchased", match="data.cart_id", timeout="3s", lookback=0
        )
        await step.run("record", lambda: got.append(purchased and purchased.id))

    harness.start()
    trigger = Event(name="cart/product.added", data={"cart_id": "c5"})
    harness.send(trigger)
    harness.send(Event(name="cart/purchased", data={"cart_id": "c5"}, id="before-wait", ts=trigger.ts + 1))
    harness.wait_ended(1, "strict")
    assert got == [None]


def test_event_consumed_by_a_previous_wait_never_matches_again(harness: Any) -> None:
    got: list[Any] = []

    @harness.app.function(id="twice", trigger="cart/product.added")
    async def fn(event: Event, step: Step) -> None:
        first = await step.wait_for_event(
            "first", event="cart/purchased", match="data.cart_id", timeout="20s"
        )
        second = await step.wait_for_event(
            "second", event="cart/purchased", match="data.cart_id", timeout="3s"
        )
        await step.run("record", lambda: got.append([first and first.id, second and second.id]))

    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "c6"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="cart/purchased", data={"cart_id": "c6"}, id="only-one"))
    harness.wait_ended(1, "twice")
    assert got == [["only-one", None]]


def test_match_and_if_must_both_hold(harness: Any) -> None:
    got = _wait_fn(
        harness, event="cart/purchased", match="data.cart_id", if_="async.data.total > 10", timeout="20s"
    )
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "c7"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="cart/purchased", data={"cart_id": "c7", "total": 5}, id="small"))
    harness.send(Event(name="cart/purchased", data={"cart_id": "x", "total": 50}, id="other-cart"))
    harness.send(Event(name="cart/purchased", data={"cart_id": "c7", "total": 50}, id="big"))
    harness.wait_ended(1, "waiter")
    assert got == ["big"]


def test_if_only_with_equality_on_the_trigger(harness: Any) -> None:
    got: list[Any] = []

    @harness.app.function(id="blog", trigger="ai/post.requested")
    async def fn(event: Event, step: Step) -> None:
        selected = await step.wait_for_event(
            "wait-for-topic",
            event="ai/post.topic.selected",
            timeout="20s",
            if_='async.data.completionId == event.data.completionId && async.data.topic in ["a", "b"]',
        )
        await step.run("record", lambda: got.append(selected and selected.data["topic"]))

    harness.start()
    harness.send(Event(name="ai/post.requested", data={"completionId": 'c"\\8'}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="ai/post.topic.selected", data={"completionId": 'c"\\8', "topic": "z"}))
    harness.send(Event(name="ai/post.topic.selected", data={"completionId": 'c"\\8', "topic": "b"}))
    harness.wait_ended(1, "blog")
    assert got == ["b"]


def test_fan_out_resumes_every_waiting_run_once(harness: Any) -> None:
    resumed: list[str] = []

    @harness.app.function(id="subscriber", trigger="user/subscribed")
    async def fn(event: Event, step: Step) -> None:
        news = await step.wait_for_event("news", event="news/published", match="data.topic", timeout="60s")
        await step.run("deliver", lambda: resumed.append(f"{event.data['user']}:{news and news.id}"))

    harness.start()
    harness.send(*[Event(name="user/subscribed", data={"user": i, "topic": "kafka"}) for i in range(100)])
    harness.wait_for(lambda: len(harness.runs) == 100, timeout=90, what="100 runs started")
    time.sleep(1)
    harness.send(Event(name="news/published", data={"topic": "kafka"}, id="n1"))
    harness.wait_ended(100, "subscriber", timeout=120)
    assert sorted(resumed) == sorted(f"{i}:n1" for i in range(100))


def test_wait_for_any_returns_the_first_and_cancels_the_other(harness: Any) -> None:
    got: list[Any] = []

    @harness.app.function(id="review", trigger="doc/submitted")
    async def fn(event: Event, step: Step) -> None:
        first = await step.wait_for_any(
            "decision",
            [Wait(event="review/approved", match="data.id"), Wait(event="review/rejected", match="data.id")],
            timeout="30s",
        )
        later = await step.wait_for_event("later", event="review/approved", match="data.id", timeout="2s")
        await step.run("record", lambda: got.append((first and (first[0], first[1].id), later and later.id)))

    harness.start()
    harness.send(Event(name="doc/submitted", data={"id": "d1"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    time.sleep(0.5)
    harness.send(Event(name="review/rejected", data={"id": "d1"}, id="no"))
    (run,) = harness.wait_ended(1, "review")
    assert got == [((1, "no"), None)]
    # The losing wait was removed from the matcher (and the run's waits are gone when it ends).
    cancelled = {
        f["wait_id"]
        for kind, f in harness.wait_commands()
        if kind == "CancelWait" and f["run_id"] == run["run_id"]
    }
    assert "decision#0" in cancelled


def test_wait_for_all_collects_every_event(harness: Any) -> None:
    got: list[Any] = []

    @harness.app.function(id="docs", trigger="onboard/started")
    async def fn(event: Event, step: Step) -> None:
        both = await step.wait_for_all(
            "docs",
            [
                Wait(event="doc/id.uploaded", match="data.user"),
                Wait(event="doc/address.uploaded", match="data.user"),
            ],
            timeout="30s",
        )
        await step.run("record", lambda: got.append(both and [e.id for e in both]))

    harness.start()
    harness.send(Event(name="onboard/started", data={"user": "u1"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    harness.send(Event(name="doc/address.uploaded", data={"user": "u1"}, id="addr"))
    time.sleep(0.5)
    harness.send(Event(name="doc/id.uploaded", data={"user": "u1"}, id="idcard"))
    harness.wait_ended(1, "docs")
    assert got == [["idcard", "addr"]]


def test_cancel_on_newer_event_cancels_older_runs_but_never_its_own(harness: Any) -> None:
    reminders: list[str] = []

    @harness.app.function(
        id="cart-abandonment",
        trigger="cart/product.added",
        cancel_on=[CancelOn(event="cart/product.added", match="data.cart_id", timeout="1h")],
    )
    async def fn(event: Event, step: Step) -> None:
        purchased = await step.wait_for_event(
            "purchase", event="cart/purchased", match="data.cart_id", timeout="3s"
        )
        if purchased is None:
            await step.run("remind", lambda: reminders.append(event.id))

    harness.start()
    for i in range(3):
        harness.send(Event(name="cart/product.added", data={"cart_id": "c9"}, id=f"add-{i}"))
        time.sleep(0.05)
    ended = harness.wait_ended(3, "cart-abandonment", timeout=60)
    statuses = sorted(run["status"] for run in ended)
    assert statuses == ["CANCELLED", "CANCELLED", "COMPLETED"]
    assert reminders == ["add-2"]
    assert len(harness.system_events("streams/function.cancelled", count=2)) == 2


def test_event_vs_timeout_race_resolves_exactly_once(harness: Any) -> None:
    """200 runs whose matching event arrives within ±150 ms of their deadline: one resume each."""
    import random

    resumes: list[tuple[int, Any]] = []

    @harness.app.function(id="racer", trigger="race/start")
    async def fn(event: Event, step: Step) -> None:
        got = await step.wait_for_event("w", event="race/finish", match="data.n", timeout="2s")
        await step.run("record", lambda: resumes.append((event.data["n"], got and got.id)))

    harness.start()
    n = 200
    harness.send(*[Event(name="race/start", data={"n": i}) for i in range(n)])
    harness.wait_for(lambda: len(harness.runs) == n, timeout=90, what="runs started")
    rng = random.Random(7)
    # A run's wait starts right after its start is recorded; aim each finish at that + 2 s ± 150 ms.
    plan = sorted(
        (run["started_ms"] + 2000 + rng.randint(-150, 150), run["trigger_event"].data["n"])
        for run in harness.runs.values()
    )
    for at_ms, i in plan:
        delay = at_ms / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        harness.app.send(Event(name="race/finish", data={"n": i}, id=f"f{i}"))
    harness.wait_ended(n, "racer", timeout=120)
    time.sleep(2)  # a second resume, if any, would show up now
    assert sorted(r[0] for r in resumes) == list(range(n))  # each run resumed exactly once
    assert all(got in (None, f"f{i}") for i, got in resumes)
    by_event = sum(1 for _, got in resumes if got is not None)
    print(f"race: {by_event} of {n} resolved by the event, {n - by_event} by the timeout")


def test_event_appended_before_the_deadline_wins_even_when_read_after_it(harness: Any) -> None:
    """Event time decides, not processing order: a worker outage must not turn a purchase into a timeout."""
    got = _wait_fn(harness, event="cart/purchased", match="data.cart_id", timeout="4s")
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "outage"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    time.sleep(1)  # the run is waiting now
    harness.stop_engine()
    harness.send(Event(name="cart/purchased", data={"cart_id": "outage"}, id="paid-in-time"))
    time.sleep(5)  # the deadline passes while no worker runs
    harness.start()
    (run,) = harness.wait_ended(1, "waiter")
    assert run["status"] == "COMPLETED"
    assert got == ["paid-in-time"]


def test_event_appended_after_the_deadline_loses_to_the_timeout(harness: Any) -> None:
    got = _wait_fn(harness, event="cart/purchased", match="data.cart_id", timeout="2s")
    harness.start()
    harness.send(Event(name="cart/product.added", data={"cart_id": "late"}))
    harness.wait_for(lambda: len(harness.runs) == 1, what="run started")
    time.sleep(0.5)
    harness.stop_engine()
    time.sleep(3)  # the deadline passes first
    harness.send(Event(name="cart/purchased", data={"cart_id": "late"}, id="too-late"))
    harness.start()
    (run,) = harness.wait_ended(1, "waiter")
    assert run["output_json"] == "null"
    assert got == [None]


def test_wait_that_is_not_routed_fails_with_how_to_declare_it(harness: Any) -> None:
    options = {"event": "cart/purchased", "match": "data.cart_id", "timeout": "5s"}

    @harness.app.function(id="hidden", trigger="hidden/go")
    async def fn(event: Event, step: Step) -> Any:
        return await step.wait_for_event("w", **options)  # not literal: the scan cannot see it

    harness.start()
    harness.send(Event(name="hidden/go", data={"cart_id": "z"}))
    (run,) = harness.wait_ended(1, "hidden")
    assert run["status"] == "FAILED"
    assert "waits=[Wait(" in run["error"]
    assert "cart/purchased" in run["error"]


def test_cel_compile_error_fails_the_step_with_the_position(harness: Any) -> None:
    caught: list[str] = []

    @harness.app.function(id="typo", trigger="typo/go")
    async def fn(event: Event, step: Step) -> None:
        try:
            await step.wait_for_event("w", event="x/y", if_="async.data.n >", timeout="5s")
        except StepError as err:
            message = err.error_message
            await step.run("record", lambda: caught.append(message))

    harness.start()
    harness.send(Event(name="typo/go", data={}))
    (run,) = harness.wait_ended(1, "typo")
    assert run["status"] == "COMPLETED"
    (message,) = caught
    assert "async.data.n >" in message
    assert "line 1, column" in message
