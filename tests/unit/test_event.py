from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Any

import pytest
from ulid import ULID

from streams._event import MAX_JSON_DEPTH, MAX_TS_MS, MIN_TS_MS, Event
from streams.errors import EventValidationError, UsageError

TS = 1_700_000_000_000


def _error(field: str, **kwargs: Any) -> EventValidationError:
    with pytest.raises(EventValidationError) as info:
        Event(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"event field {field!r}: ")
    return info.value


# --- defaults ---------------------------------------------------------------------------------


def test_defaults() -> None:
    before = time.time_ns() // 1_000_000
    event = Event(name="cart/product.added")
    after = time.time_ns() // 1_000_000
    assert event.data == {}
    assert before <= event.ts <= after
    assert event.v is None and event.user is None
    assert str(ULID.from_str(event.id)) == event.id
    assert len(event.id) == 26


def test_ids_are_unique() -> None:
    ids = [Event(name="a").id for _ in range(1000)]
    assert len(set(ids)) == 1000


def test_name_and_data_by_keyword() -> None:
    event = Event(name="cart/purchased", data={"cart_id": "c1"})
    assert event.name == "cart/purchased"
    assert event.data == {"cart_id": "c1"}


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        Event("cart/purchased")  # type: ignore[misc]


def test_frozen() -> None:
    event = Event(name="a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "b"  # type: ignore[misc]


def test_equality_and_hash() -> None:
    a = Event(name="a", data={"x": [1, {"y": 2}]}, id="e1", ts=TS)
    b = Event(name="a", data={"x": [1, {"y": 2}]}, id="e1", ts=TS)
    c = Event(name="a", data={"x": [1, {"y": 3}]}, id="e1", ts=TS)
    assert a == b
    assert a != c
    assert hash(a) == hash(b)
    assert {a, b} == {a}


def test_validation_error_is_a_usage_error() -> None:
    assert issubclass(EventValidationError, UsageError)


# --- name -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("", "1 to 256 characters, got 0"),
        ("x" * 257, "1 to 256 characters, got 257"),
        ("   ", "printable"),
        ("a\nb", "printable"),
        ("a\x00b", "printable"),
    ],
)
def test_name_invalid(name: str, needle: str) -> None:
    assert needle in str(_error("name", name=name))


def test_name_not_a_string() -> None:
    assert "expected a string, got integer" in str(_error("name", name=5))
    assert "got null" in str(_error("name", name=None))


def test_name_limits_ok() -> None:
    assert Event(name="x" * 256).name == "x" * 256
    assert Event(name="ünïcödé/événement ✓").name == "ünïcödé/événement ✓"


# --- data -------------------------------------------------------------------------------------


def test_data_all_json_types() -> None:
    data = {
        "s": "x",
        "i": -3,
        "big": 2**70,
        "f": 1.5,
        "t": True,
        "n": None,
        "l": [1, "a", [], {}],
        "d": {"k": {}},
    }
    assert Event(name="a", data=data).data == data


def test_data_not_an_object() -> None:
    assert "expected a JSON object (dict), got array" in str(_error("data", name="a", data=[1]))
    assert "got string" in str(_error("data", name="a", data="{}"))
    assert "got null" in str(_error("data", name="a", data=None))


def test_data_other_mapping_becomes_dict() -> None:
    event = Event(name="a", data=MappingProxyType({"x": 1}))
    assert type(event.data) is dict
    assert event.data == {"x": 1}
    json.dumps(event.to_dict())


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"x": float("nan")}, "at data.x: nan is not allowed"),
        ({"x": [1, float("inf")]}, "at data.x[1]: inf is not allowed"),
        ({"a b": {"c": -float("inf")}}, "at data['a b'].c: -inf"),
        ({"x": (1, 2)}, "at data.x: tuple is not a JSON value; use a list"),
        ({"x": {1, 2}}, "at data.x: set is not a JSON value"),
        ({"x": b"raw"}, "at data.x: bytes is not a JSON value"),
        ({"x": object()}, "at data.x: object is not a JSON value"),
        ({"x": {1: "a"}}, "at data.x: object key 1 is not a string (integer); JSON keys must be strings"),
        ({2: "a"}, "at data: object key 2"),
        ({"x": "\ud800"}, "at data.x: string holds a lone surrogate"),
    ],
)
def test_data_invalid_values(data: dict[Any, Any], needle: str) -> None:
    error = _error("data", name="a", data=data)
    assert needle in str(error)


def test_data_depth_limit() -> None:
    ok: dict[str, Any] = {}
    node = ok
    for _ in range(MAX_JSON_DEPTH - 1):
        node["x"] = {}
        node = node["x"]
    Event(name="a", data=ok)
    too_deep: Any = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        too_deep = [too_deep]
    assert "nested deeper than" in str(_error("data", name="a", data={"x": too_deep}))


def test_data_subclasses_of_json_types_are_accepted() -> None:
    class Color(StrEnum):
        RED = "red"

    class Level(IntEnum):
        HIGH = 3

    event = Event(name="a", data={"c": Color.RED, "l": Level.HIGH, "o": OrderedDict(a=1)})
    assert json.loads(json.dumps(event.to_dict()))["data"] == {"c": "red", "l": 3, "o": {"a": 1}}


# --- id ---------------------------------------------------------------------------------------


def test_id_invalid() -> None:
    assert "1 to 256 characters, got 0" in str(_error("id", name="a", id=""))
    assert "got 257" in str(_error("id", name="a", id="x" * 257))
    assert "expected a string, got integer" in str(_error("id", name="a", id=12))


def test_id_any_string() -> None:
    assert Event(name="a", id="order-42/v1").id == "order-42/v1"


# --- ts ---------------------------------------------------------------------------------------


def test_ts_bounds() -> None:
    assert Event(name="a", ts=MIN_TS_MS).ts == MIN_TS_MS
    assert Event(name="a", ts=MAX_TS_MS - 1).ts == MAX_TS_MS - 1
    assert "outside 1980-01-01..2100-01-01" in str(_error("ts", name="a", ts=MIN_TS_MS - 1))
    assert "outside" in str(_error("ts", name="a", ts=MAX_TS_MS))
    assert "outside" in str(_error("ts", name="a", ts=-5))


def test_ts_unit_hints() -> None:
    assert "looks like seconds" in str(_error("ts", name="a", ts=TS // 1000))
    assert "looks like microseconds" in str(_error("ts", name="a", ts=TS * 1000))


@pytest.mark.parametrize(
    ("ts", "kind"), [("1", "string"), (1.7e12, "number"), (True, "boolean"), (None, "null")]
)
def test_ts_wrong_type(ts: Any, kind: str) -> None:
    assert f"expected integer ms since epoch, got {kind}" in str(_error("ts", name="a", ts=ts))


# --- v and user -------------------------------------------------------------------------------


def test_v() -> None:
    assert Event(name="a", v="2024-01-01.1").v == "2024-01-01.1"
    assert "expected a string" in str(_error("v", name="a", v=3))
    assert "at most 256" in str(_error("v", name="a", v="x" * 257))


def test_user() -> None:
    assert Event(name="a", user={"id": "u1"}).user == {"id": "u1"}
    assert Event(name="a", user={}).user == {}
    assert "expected a JSON object or None, got array" in str(_error("user", name="a", user=[]))
    assert "at user.x: nan" in str(_error("user", name="a", user={"x": float("nan")}))


# --- Inngest JSON -----------------------------------------------------------------------------


def test_to_dict_is_inngest_json() -> None:
    event = Event(name="app/user.signup", data={"email": "a@b.c"}, id="evt-1", ts=TS)
    assert event.to_dict() == {"name": "app/user.signup", "data": {"email": "a@b.c"}, "id": "evt-1", "ts": TS}
    full = Event(name="a", id="e", ts=TS, v="1", user={"id": 1})
    assert full.to_dict() == {"name": "a", "data": {}, "id": "e", "ts": TS, "v": "1", "user": {"id": 1}}


def test_from_dict_round_trip() -> None:
    event = Event(name="a", data={"q": 'say "hi" \\ bye'}, id="e", ts=TS, v="1", user={"id": 1})
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_from_dict_inngest_sdk_payload() -> None:
    # What inngest-py 0.4/0.5 sends: id "" and ts 0 mean "let the server choose".
    payload = {"name": "shop/cart.created", "data": {"cart_id": "c1"}, "id": "", "ts": 0, "user": {}}
    before = time.time_ns() // 1_000_000
    event = Event.from_dict(payload)
    assert event.name == "shop/cart.created"
    assert event.data == {"cart_id": "c1"}
    assert len(event.id) == 26
    assert event.ts >= before
    assert event.user == {}


def test_from_dict_lenient_defaults() -> None:
    event = Event.from_dict({"name": "a", "data": None, "unknown": [1], "v": None})
    assert event.data == {}
    assert event.v is None
    assert Event.from_dict({"name": "a", "ts": 1.7e12}).ts == 1_700_000_000_000


def test_from_dict_deterministic_defaults() -> None:
    event = Event.from_dict({"name": "a"}, default_id="events-0-17", default_ts=TS)
    assert (event.id, event.ts) == ("events-0-17", TS)
    given = Event.from_dict({"name": "a", "id": "mine", "ts": TS + 1}, default_id="x", default_ts=TS)
    assert (given.id, given.ts) == ("mine", TS + 1)


@pytest.mark.parametrize(
    ("obj", "field", "needle"),
    [
        ([], "<record>", "expected a JSON object, got array"),
        ({}, "name", "is required"),
        ({"name": None}, "name", "is required"),
        ({"name": 1}, "name", "expected a string, got integer"),
        ({"name": "a", "data": []}, "data", "got array"),
        ({"name": "a", "id": 5}, "id", "expected a string, got integer"),
        ({"name": "a", "ts": "2024-01-01"}, "ts", "expected integer ms since epoch, got string"),
        ({"name": "a", "ts": 1.5e12 + 0.5}, "ts", "got number"),
        ({"name": "a", "v": 1}, "v", "expected a string"),
        ({"name": "a", "user": "u"}, "user", "got string"),
    ],
)
def test_from_dict_type_checks(obj: Any, field: str, needle: str) -> None:
    with pytest.raises(EventValidationError) as info:
        Event.from_dict(obj)
    assert info.value.field == field
    assert needle in str(info.value)
