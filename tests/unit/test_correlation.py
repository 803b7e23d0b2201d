from __future__ import annotations

import asyncio
import enum
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from streams._correlation import CorrelationIndex, WaitPlan, plan_wait, route_path, scan_function_source
from streams._expr import STORED_VARIABLES, compile_expression, evaluate
from streams._function import CancelOn, Wait
from streams._matchkey import match_key, name_key
from streams.errors import ExpressionError, UsageError

PURCHASED = "cart/purchased"
MATCH_CART = "data.cart_id"


class Events(enum.StrEnum):
    SHIPPED = "order/shipped"


class Names:
    PAID = "invoice/paid"


# --------------------------------------------------------------------------------------------------
# Example functions (only their source matters)
# --------------------------------------------------------------------------------------------------


async def gather_waits(event: Any, step: Any) -> None:
    await asyncio.gather(
        step.wait_for_event("purchase", event=PURCHASED, match=MATCH_CART, timeout="24h"),
        step.wait_for_event(
            "review",
            event="review/posted",
            if_="async.data.product_id == event.data.product_id && async.data.stars > 3",
            timeout="7d",
        ),
    )


async def any_of_waits(event: Any, step: Any) -> None:
    await step.wait_for_any(
        "first",
        [
            Wait("order/shipped", "data.order_id"),
            Wait(event=Events.SHIPPED, if_="async.data.total > 100"),
            Wait(event=Names.PAID, match="data.invoice", if_="async.data.paid"),
        ],
        timeout="1d",
    )


async def fstring_if(event: Any, step: Any) -> None:
    order = event.data["order_id"]
    await step.wait_for_event(
        "f", event="refund/issued", if_=f'async.data.order_id == "{order}"', timeout="1h"
    )


async def variable_match(event: Any, step: Any) -> None:
    field = "data.a" if event.data["x"] else "data.b"
    await step.wait_for_event("v", event="thing/done", match=field, timeout="1h")


async def local_constant_match(event: Any, step: Any) -> None:
    field = "data.job_id"
    await step.wait_for_event("v", event="job/done", match=field, timeout="1h")


async def unknown_event_name(event: Any, step: Any) -> None:
    await step.wait_for_event("u", event=event.data["reply_to"], match="data.id", timeout="1h")
    await step.wait_for_event("plain", event="plain/event", timeout="1h")


def make_closure() -> Callable[..., Any]:
    name = "closure/event"

    async def inner(event: Any, step: Any) -> None:
        await step.wait_for_event("c", event=name, match="data.id", timeout="1h")

    return inner


def sync_function(event: Any, step: Any) -> None:
    def helper_inside() -> None:
        step.wait_for_event("h", event="nested/helper", match="user.id", timeout="1h")

    helper_inside()
    step.wait_for_all("all", [Wait("a/b"), Wait("c/d", if_="async.data.k == 'v'")], timeout="1h")


def _decorate(*_: Any, **__: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*args: Any) -> Any:
            return await fn(*args)

        return wrapper

    return wrap


@_decorate(waits=[Wait(event="declared/in-decorator", match="data.x")])
async def decorated(event: Any, step: Any) -> None:
    await step.wait_for_event("d", event="body/event", match="data.id", timeout="1h")


# --------------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------------


def test_scan_gathered_waits() -> None:
    assert scan_function_source(gather_waits) == [
        ("cart/purchased", "data.cart_id"),
        ("review/posted", "data.product_id"),  # if_ with an equality against event.*
    ]


def test_scan_wait_list() -> None:
    assert scan_function_source(any_of_waits) == [
        ("order/shipped", "data.order_id"),  # positional Wait(event, match)
        ("order/shipped", None),  # str enum member; if_ without equality → per name
        ("invoice/paid", "data.invoice"),  # class attribute; match wins over if_
    ]


def test_scan_fstring_if_routes_per_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams._correlation"):
        assert scan_function_source(fstring_if) == [("refund/issued", None)]
    assert "if_ of wait_for_event(event='refund/issued') is not known statically" in caplog.text
    assert "fstring_if (line" in caplog.text


def test_scan_variable_match_routes_per_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams._correlation"):
        assert scan_function_source(variable_match) == [("thing/done", None)]
    assert "match of wait_for_event(event='thing/done') is not known statically" in caplog.text


def test_scan_local_constant() -> None:
    assert scan_function_source(local_constant_match) == [("job/done", "data.job_id")]


def test_scan_skips_unknown_event_name_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="streams._correlation"):
        assert scan_function_source(unknown_event_name) == [("plain/event", None)]
    assert "cannot tell statically which event" in caplog.text
    assert "waits=[Wait(event=..., match=...)]" in caplog.text


def test_scan_closure_variable() -> None:
    assert scan_function_source(make_closure()) == [("closure/event", "data.id")]


def test_scan_sync_function_and_nested_helper() -> None:
    assert scan_function_source(sync_function) == [
        ("nested/helper", "user.id"),
        ("a/b", None),
        ("c/d", "data.k"),
    ]


def test_scan_ignores_decorators_and_unwraps() -> None:
    assert scan_function_source(decorated) == [("body/event", "data.id")]


def test_scan_without_source_warns(caplog: pytest.LogCaptureFixture) -> None:
    namespace: dict[str, Any] = {}
    exec("async def generated(event, step):\n    await step.wait_for_event('x', event='a/b')\n", namespace)
    with caplog.at_level(logging.WARNING, logger="streams._correlation"):
        assert scan_function_source(namespace["generated"]) == []
    assert "cannot read the source" in caplog.text


def test_scan_lambda() -> None:
    fn = lambda event, step: step.wait_for_event("l", event="lambda/event", match="data.id", timeout="1h")  # noqa: E731
    assert scan_function_source(fn) == [("lambda/event", "data.id")]


# --------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeFunction:
    id: str
    fn: Callable[..., Any]
    cancel_on: tuple[CancelOn, ...] = ()
    waits: tuple[Wait, ...] = ()


def test_from_functions_combines_all_sources() -> None:
    functions = [
        FakeFunction(
            "cart-abandonment",
            gather_waits,
            cancel_on=(
                CancelOn(event="cart/product.added", match="data.cart_id"),
                CancelOn(event="cart/emptied"),  # cancels every run: per name
                CancelOn(event="cart/closed", if_="async.data.cart == event.data.cart_id"),
            ),
            waits=(Wait(event="helper/event", match="data.ref"),),
        ),
        FakeFunction("other", any_of_waits),
    ]
    index = CorrelationIndex.from_functions(functions)
    assert list(index) == [
        ("cart/closed", "data.cart"),
        ("cart/emptied", None),
        ("cart/product.added", "data.cart_id"),
        ("cart/purchased", "data.cart_id"),
        ("helper/event", "data.ref"),
        ("invoice/paid", "data.invoice"),
        ("order/shipped", None),
        ("order/shipped", "data.order_id"),
        ("review/posted", "data.product_id"),
    ]


def test_routes_covers_union() -> None:
    a = CorrelationIndex.build([("e", "data.x"), ("e", None), ("f", "data.y")])
    b = CorrelationIndex([("e", "data.a"), ("g", None)])
    assert a.routes("e") == [None, "data.x"]
    assert a.routes("unknown") == []
    assert a.covers("e", "data.x") and a.covers("e", None)
    assert not a.covers("f", None) and not a.covers("f", "data.x")
    union = a.union(b)
    assert union.routes("e") == [None, "data.a", "data.x"]
    assert union.event_names() == {"e", "f", "g"}
    assert len(union) == 5
    assert ("g", None) in union
    assert union == CorrelationIndex(list(union))
    assert hash(union) == hash(CorrelationIndex(list(union)))


def test_index_validates_entries() -> None:
    with pytest.raises(UsageError, match="non-empty"):
        CorrelationIndex([("", None)])
    with pytest.raises(UsageError, match="empty segment"):
        CorrelationIndex([("e", "data..x")])


def test_route_keys() -> None:
    index = CorrelationIndex([("e", None), ("e", "data.x"), ("e", "data.missing"), ("f", "data.x")])
    event = {"name": "e", "data": {"x": 'q"\\'}, "id": "1", "ts": 1}
    assert index.route_keys(event) == [name_key("e"), match_key("e", "data.x", 'q"\\')]
    assert index.route_keys({"name": "nobody", "data": {}}) == []


def test_raise_if_not_routed_explains_how_to_declare() -> None:
    index = CorrelationIndex([("e", "data.x")])
    index.raise_if_not_routed("e", "data.x", "fn")
    with pytest.raises(UsageError) as info:
        index.raise_if_not_routed("cart/purchased", "data.cart_id", "cart-abandonment")
    message = str(info.value)
    assert "'cart-abandonment'" in message
    assert "@app.function(..., waits=[Wait(event='cart/purchased', match='data.cart_id')])" in message
    with pytest.raises(UsageError, match=r"waits=\[Wait\(event='e', if_=<the same if_>\)\]"):
        index.raise_if_not_routed("e", None, "fn")


def test_records_round_trip() -> None:
    index = CorrelationIndex([("e", "data.x"), ("e", None)])
    records = index.to_records(published_by="worker-1/0.1.0", published_ms=123)
    assert records == [
        (b"e\x00", {"event_name": "e", "path": None, "published_by": "worker-1/0.1.0", "published_ms": 123}),
        (
            b"e\x00data.x",
            {"event_name": "e", "path": "data.x", "published_by": "worker-1/0.1.0", "published_ms": 123},
        ),
    ]
    assert CorrelationIndex.from_records([value for _, value in records] + [None]) == index


def test_record_values_match_the_avro_schema() -> None:
    fastavro = pytest.importorskip("fastavro")
    import json
    from pathlib import Path

    schema_path = Path(__file__).parents[2] / "schemas" / "correlation.avsc"
    if not schema_path.exists():
        pytest.skip("schemas/correlation.avsc not written yet")
    schema = fastavro.parse_schema(json.loads(schema_path.read_text()))
    for _, value in CorrelationIndex([("e", "data.x"), ("e", None)]).to_records(
        published_by="w", published_ms=1
    ):
        assert fastavro.validate(value, schema)


@pytest.mark.parametrize(
    ("match", "if_", "expected"),
    [
        ("data.x", None, "data.x"),
        ("data.x", "async.data.y == 1", "data.x"),
        (None, "async.data.y == event.data.y && async.data.z", "data.y"),
        (None, "async.data.y > 1", None),
        (None, None, None),
    ],
)
def test_route_path(match: str | None, if_: str | None, expected: str | None) -> None:
    assert route_path(match, if_) == expected


# --------------------------------------------------------------------------------------------------
# Planning waits
# --------------------------------------------------------------------------------------------------

TRIGGER = {"name": "cart/product.added", "data": {"cart_id": 'c"1\\', "min": 10}, "id": "t", "ts": 1}


def _matches(plan: WaitPlan, candidate: dict[str, Any], index: CorrelationIndex) -> bool:
    """What router + matcher do: forward under the index's keys, then check key and condition."""
    if plan.key not in index.route_keys(candidate):
        return False
    if plan.condition is None:
        return True
    return evaluate(
        compile_expression(plan.condition, variables=STORED_VARIABLES), async_event=candidate
    ).matched


def test_plan_match() -> None:
    index = CorrelationIndex([("cart/purchased", "data.cart_id")])
    plan = plan_wait("cart/purchased", match="data.cart_id", if_=None, trigger=TRIGGER, index=index)
    assert plan == WaitPlan(
        "cart/purchased", "data.cart_id", match_key("cart/purchased", "data.cart_id", 'c"1\\'), None
    )
    assert _matches(plan, {"name": "cart/purchased", "data": {"cart_id": 'c"1\\'}}, index)
    assert not _matches(plan, {"name": "cart/purchased", "data": {"cart_id": "c1"}}, index)


def test_plan_match_and_if_both_hold() -> None:
    index = CorrelationIndex([("cart/purchased", "data.cart_id")])
    plan = plan_wait(
        "cart/purchased",
        match="data.cart_id",
        if_="async.data.total >= event.data.min",
        trigger=TRIGGER,
        index=index,
    )
    assert plan.condition == "async.data.total >= 10"
    assert _matches(plan, {"name": "cart/purchased", "data": {"cart_id": 'c"1\\', "total": 10}}, index)
    assert not _matches(plan, {"name": "cart/purchased", "data": {"cart_id": 'c"1\\', "total": 9}}, index)
    assert not _matches(plan, {"name": "cart/purchased", "data": {"cart_id": "x", "total": 99}}, index)


def test_plan_if_equality_keys_on_substituted_value() -> None:
    index = CorrelationIndex([("cart/purchased", "data.cart")])
    plan = plan_wait(
        "cart/purchased",
        match=None,
        if_="async.data.total > 5 && async.data.cart == event.data.cart_id",
        trigger=TRIGGER,
        index=index,
    )
    assert plan.path == "data.cart"
    assert plan.key == match_key("cart/purchased", "data.cart", 'c"1\\')
    assert _matches(plan, {"name": "cart/purchased", "data": {"cart": 'c"1\\', "total": 6}}, index)
    assert not _matches(plan, {"name": "cart/purchased", "data": {"cart": 'c"1\\', "total": 5}}, index)


def test_plan_trigger_missing_match_field_is_unsatisfiable() -> None:
    plan = plan_wait("e", match="data.nope", if_=None, trigger=TRIGGER)
    assert not plan.satisfiable
    assert plan.condition == "false"
    plan = plan_wait("e", match=None, if_="async.data.a == event.data.nope", trigger=TRIGGER)
    assert not plan.satisfiable and plan.path == "data.a"


def test_plan_per_name() -> None:
    index = CorrelationIndex([("e", None)])
    plan = plan_wait("e", match=None, if_="async.data.total > event.data.min", trigger=TRIGGER, index=index)
    assert plan == WaitPlan("e", None, name_key("e"), "async.data.total > 10")
    assert _matches(plan, {"name": "e", "data": {"total": 11}}, index)
    cancel_all = plan_wait("e", match=None, if_=None, trigger=TRIGGER, index=index)
    assert cancel_all.key == name_key("e") and cancel_all.condition is None


def test_plan_falls_back_to_per_name_with_match_in_condition() -> None:
    index = CorrelationIndex([("thing/done", None)])  # e.g. from a match the scan could not read
    plan = plan_wait("thing/done", match="data.cart_id", if_="async.data.ok", trigger=TRIGGER, index=index)
    assert plan.path is None and plan.key == name_key("thing/done")
    assert plan.condition == 'async.data.cart_id == "c\\"1\\\\" && (async.data.ok)'
    assert _matches(plan, {"name": "thing/done", "data": {"cart_id": 'c"1\\', "ok": True}}, index)
    assert not _matches(plan, {"name": "thing/done", "data": {"cart_id": "c1", "ok": True}}, index)


def test_plan_not_routed_fails_fast() -> None:
    with pytest.raises(UsageError, match=r"waits=\[Wait\(event='x', match='data.cart_id'\)\]"):
        plan_wait(
            "x", match="data.cart_id", if_=None, trigger=TRIGGER, index=CorrelationIndex(), function_id="f"
        )


def test_plan_compile_error_fails() -> None:
    with pytest.raises(ExpressionError, match="line 1, column"):
        plan_wait("x", match=None, if_="async.data.x ==", trigger=TRIGGER)


@pytest.mark.parametrize(
    ("match", "if_"),
    [
        ("data.cart_id", None),
        ("data.cart_id", "async.data.total > 1"),
        (None, "async.data.cart_id == event.data.cart_id && async.data.total > 1"),
        (None, "async.data.total > 1"),
        (None, None),
    ],
)
def test_every_matching_event_reaches_the_wait(match: str | None, if_: str | None) -> None:
    """The routing invariant: an event that satisfies the wait is forwarded under the wait's key."""
    index = CorrelationIndex([("e", route_path(match, if_))])
    plan = plan_wait("e", match=match, if_=if_, trigger=TRIGGER, index=index)
    good = {"name": "e", "data": {"cart_id": 'c"1\\', "total": 2.0}, "id": "x", "ts": 2}
    assert plan.key in index.route_keys(good)
    assert _matches(plan, good, index)
