from __future__ import annotations

from typing import Any

import pytest

from streams._event import Event
from streams._function import (
    DEFAULT_RETRIES,
    CancelOn,
    FunctionDef,
    Trigger,
    Wait,
    define_function,
)
from streams._step import Step, SyncStep
from streams.errors import DurationError, UsageError


async def handler(event: Event, step: Step) -> None:
    pass


def sync_handler(event: Event, step: SyncStep) -> None:
    pass


def test_defaults() -> None:
    fd = define_function(handler, id="onboarding", trigger="app/account.created")
    assert fd == FunctionDef(
        id="onboarding", triggers=(Trigger("app/account.created"),), fn=handler, retries=DEFAULT_RETRIES
    )
    assert fd.is_async and fd.retries == 4 and fd.trigger_events == ("app/account.created",)
    assert list(fd.expressions()) == [] and fd.failure_handler() is None


def test_every_option() -> None:
    async def on_failure(event: Event, step: Step) -> None:
        pass

    fd = define_function(
        sync_handler,
        id="Order.v2_x-1",
        trigger=["a/b", Trigger(event="c/d", if_="event.data.n > 1")],
        retries=0,
        idempotency="event.data.user_id",
        on_failure=on_failure,
        cancel_on=[CancelOn(event="a/cancel", match="data.id", if_="async.data.ok", timeout="1h")],
        waits=Wait(event="a/paid", match="user.id", lookback=0),
    )
    assert not fd.is_async and fd.retries == 0
    assert fd.triggers == (Trigger("a/b"), Trigger("c/d", "event.data.n > 1"))
    assert fd.cancel_on[0].timeout_ms == 3_600_000 and fd.waits[0].lookback_ms == 0
    assert [where for where, _ in fd.expressions()] == [
        "function 'Order.v2_x-1' trigger 'c/d' if_",
        "function 'Order.v2_x-1' idempotency",
        "function 'Order.v2_x-1' cancel_on 'a/cancel' if_",
    ]
    failure = fd.failure_handler()
    assert failure is not None and failure.fn is on_failure and failure.is_async
    assert failure.id == "Order.v2_x-1.on-failure"


def test_async_callable_object_is_async() -> None:
    class Handler:
        async def __call__(self, event: Event, step: Step) -> None:
            pass

    assert define_function(Handler(), id="f", trigger="a/b").is_async


def test_defaults_of_value_objects() -> None:
    assert CancelOn(event="a/b").timeout_ms == 366 * 86_400_000
    assert Wait(event="a/b").lookback_ms is None


@pytest.mark.parametrize("bad_id", ["", "-x", "a b", "a/b", "x" * 129, 5, "é"])
def test_bad_ids(bad_id: Any) -> None:
    with pytest.raises(UsageError, match="function id"):
        define_function(handler, id=bad_id, trigger="a/b")


@pytest.mark.parametrize("retries", [-1, 21, True, 1.0, "3"])
def test_bad_retries(retries: Any) -> None:
    with pytest.raises(UsageError, match="retries must be an integer from 0 to 20"):
        define_function(handler, id="f", trigger="a/b", retries=retries)


@pytest.mark.parametrize(
    ("trigger", "fragment"),
    [
        ("", "event name"),
        ([], "at least one trigger"),
        (["a/b", "a/b"], "listed twice"),
        ([5], "event name or a Trigger"),
        ("a\nb", "printable"),
        ("x" * 257, "256"),
    ],
)
def test_bad_triggers(trigger: Any, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        define_function(handler, id="f", trigger=trigger)


def test_bad_trigger_if() -> None:
    with pytest.raises(UsageError, match="CEL"):
        Trigger(event="a/b", if_="  ")


@pytest.mark.parametrize(
    ("fn", "fragment"),
    [
        ("not callable", "must be callable"),
        (lambda event: None, "two positional arguments"),
        (lambda: None, "two positional arguments"),
        (lambda event, step, extra: None, "two positional arguments"),
    ],
)
def test_bad_handlers(fn: Any, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        define_function(fn, id="f", trigger="a/b")


def test_generator_handler_is_rejected() -> None:
    async def agen(event: Event, step: Step) -> Any:
        yield 1

    with pytest.raises(UsageError, match="generator"):
        define_function(agen, id="f", trigger="a/b")


def test_handler_with_defaults_is_fine() -> None:
    def flexible(event: Event, step: SyncStep, *rest: Any, extra: int = 1) -> None:
        pass

    assert not define_function(flexible, id="f", trigger="a/b").is_async


def test_bad_on_failure() -> None:
    with pytest.raises(UsageError, match="on_failure"):
        define_function(handler, id="f", trigger="a/b", on_failure=lambda: None)


@pytest.mark.parametrize("match", ["data.cart_id", "data.a.b-c.0", "user.id"])
def test_good_match_paths(match: str) -> None:
    assert Wait(event="a/b", match=match).match == match


@pytest.mark.parametrize(
    ("match", "fragment"),
    [
        ("cart_id", "dotted path"),
        ("data", "dotted path"),
        ("data.", "dotted path"),
        ("data..x", "dotted path"),
        ("name", "dotted path"),
        ("data.a b", "dotted path"),
        ("event.data.cart_id", "write 'data.cart_id'"),
        ("async.data.x", "write 'data.x'"),
        (5, "must be a string"),
    ],
)
def test_bad_match_paths(match: Any, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        Wait(event="a/b", match=match)
    with pytest.raises(UsageError, match=fragment):
        CancelOn(event="a/b", match=match)


def test_cancel_on_timeout_rules() -> None:
    with pytest.raises(DurationError, match="366 days"):
        CancelOn(event="a/b", timeout="400d")
    with pytest.raises(DurationError, match="greater than zero"):
        CancelOn(event="a/b", timeout="0s")


def test_wait_lookback_rules() -> None:
    assert Wait(event="a/b", lookback="1h").lookback_ms == 3_600_000
    with pytest.raises(DurationError, match="366 days"):
        Wait(event="a/b", lookback="367d")
    with pytest.raises(DurationError, match="negative"):
        Wait(event="a/b", lookback="-1s")


def test_wrong_item_types() -> None:
    with pytest.raises(UsageError, match="expected CancelOn"):
        define_function(handler, id="f", trigger="a/b", cancel_on=[Wait(event="a/b")])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="expected Wait"):
        define_function(handler, id="f", trigger="a/b", waits=["a/b"])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="expected a non-empty CEL"):
        define_function(handler, id="f", trigger="a/b", idempotency="")


def test_single_cancel_on_is_accepted() -> None:
    rule = CancelOn(event="a/b", match="data.id")
    assert define_function(handler, id="f", trigger="a/b", cancel_on=rule).cancel_on == (rule,)
