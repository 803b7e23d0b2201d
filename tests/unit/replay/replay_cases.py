"""Functions replayed by the golden histories in ``golden/*.json`` (one per file, by ``"function"``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from streams._event import Event
from streams._function import FunctionDef, Wait, define_function
from streams._step import Step, SyncStep
from streams.errors import NonRetriableError, RetryAfterError, StepError

FUNCTIONS: dict[str, FunctionDef] = {}
_F = TypeVar("_F", bound=Callable[..., Any])


def _register(trigger: str = "app/test") -> Callable[[_F], _F]:
    def decorate(fn: _F) -> _F:
        FUNCTIONS[fn.__name__] = define_function(fn, id=fn.__name__.replace("_", "-"), trigger=trigger)
        return fn

    return decorate


# -- step callables ----------------------------------------------------------------------------------------


def send_email(to: str, template: str) -> dict[str, Any]:
    return {"to": to, "template": template, "status": "sent"}


async def fetch_profile(email: str) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"email": email, "plan": "pro"}


def score(profile: dict[str, Any], bonus: int = 0) -> int:
    return (10 if profile["plan"] == "pro" else 1) + bonus


def boom() -> None:
    raise ValueError("card declined")


def refuse() -> None:
    raise NonRetriableError("account closed")


def later() -> None:
    raise RetryAfterError("rate limited", timedelta(seconds=30))


def returns_datetime() -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC)


# -- functions ---------------------------------------------------------------------------------------------


@_register("app/account.created")
async def onboarding(event: Event, step: Step) -> dict[str, Any]:
    email = event.data["email"]
    welcome = await step.run("send-welcome", send_email, email, "welcome")
    profile = await step.run("fetch-profile", fetch_profile, email)
    await step.sleep("pause", "1h30m")
    points = await step.run("score", score, profile, bonus=5)
    return {"welcome": welcome["status"], "points": points}


@_register()
async def fan_out(event: Event, step: Step) -> list[Any]:
    results = await asyncio.gather(
        step.run("a", send_email, "a@x", "t"),
        step.run("b", send_email, "b@x", "t"),
        step.sleep("c", "5m"),
    )
    done = await step.run("after", score, {"plan": "free"})
    return [results[0]["to"], results[1]["to"], results[2], done]


@_register()
async def repeated_ids(event: Event, step: Step) -> list[int]:
    out = []
    for i in range(3):
        out.append(await step.run("charge", score, {"plan": "free"}, bonus=i))
    out.append(await step.run("charge:1", score, {"plan": "pro"}))
    return out


@_register()
async def catches_step_error(event: Event, step: Step) -> str:
    try:
        await step.run("charge", boom)
    except StepError as err:
        await step.run("notify", send_email, "ops@x", err.error_type)
        return f"fallback after {err.step_id}"
    return "charged"


@_register()
async def raises_step_error(event: Event, step: Step) -> str:
    await step.run("charge", boom)
    return "charged"


@_register()
async def non_retriable(event: Event, step: Step) -> None:
    await step.run("close", refuse)
    raise NonRetriableError("unreachable")


@_register()
async def body_non_retriable(event: Event, step: Step) -> None:
    await step.run("check", score, {"plan": "free"})
    raise NonRetriableError("invalid input")


@_register()
async def retry_after(event: Event, step: Step) -> None:
    await step.run("later", later)
    raise RetryAfterError("come back later", timedelta(minutes=5))


@_register()
async def swallows_exceptions(event: Event, step: Step) -> str:
    try:
        await step.run("risky", boom)
    except Exception:  # the interrupt is a BaseException: it passes through
        return "swallowed"
    return "done"


@_register()
async def nested_step(event: Event, step: Step) -> str:
    async def inner() -> None:
        await step.sleep("inner", "1s")

    try:
        await step.run("outer", inner)
    except StepError as err:
        return err.error_message
    return "no error"


@_register()
def sync_nested_step(event: Event, step: SyncStep) -> str:
    def inner() -> None:
        step.sleep("inner", "1s")

    try:
        step.run("outer", inner)
    except StepError as err:
        return err.error_message
    return "no error"


@_register()
async def non_json_output(event: Event, step: Step) -> None:
    await step.run("when", returns_datetime)


@_register()
async def sleeps_too_long(event: Event, step: Step) -> None:
    await step.sleep("forever", "400d")


@_register()
async def sleeps_until(event: Event, step: Step) -> None:
    await step.sleep_until("new-year", datetime(2024, 1, 1, tzinfo=UTC))
    await step.sleep("zero", timedelta(0))


@_register("app/order.placed")
def sync_order(event: Event, step: SyncStep) -> dict[str, Any]:
    profile = step.run("fetch", fetch_profile, event.data["email"])
    paid = step.wait_for_event("paid", event="app/order.paid", match="data.order_id", timeout="1h")
    if paid is None:
        step.run("remind", send_email, profile["email"], "reminder")
        return {"paid": False}
    return {"paid": True, "amount": paid.data["amount"]}


@_register("review/requested")
async def waits(event: Event, step: Step) -> dict[str, Any]:
    got = await step.wait_for_event(
        "wait-for-purchase", event="cart/purchased", match="data.cart_id", timeout="24h", lookback=0
    )
    decision = await step.wait_for_any(
        "decision",
        [Wait(event="review/approved", match="data.id"), Wait(event="review/rejected", match="data.id")],
        timeout="48h",
    )
    docs = await step.wait_for_all(
        "docs",
        [Wait(event="doc/signed", if_="async.data.doc == 'a'"), Wait(event="doc/signed", lookback="1h")],
        timeout=timedelta(days=7),
    )
    return {
        "purchased": None if got is None else got.data,
        "decision": None if decision is None else [decision[0], decision[1].name],
        "docs": None if docs is None else [doc.data["doc"] for doc in docs],
    }


@_register()
async def changed_code(event: Event, step: Step) -> None:
    await step.run("first", score, {"plan": "free"})


@_register()
async def sends(event: Event, step: Step) -> list[str]:
    one = await step.send_event("one", Event(name="app/notify", data={"n": 1}))
    two = await step.send_event(
        "two", [Event(name="app/notify", data={"n": 2}), Event(name="app/x", data={})]
    )
    return one + two


@_register()
async def returns_non_json(event: Event, step: Step) -> object:
    return {1, 2}
