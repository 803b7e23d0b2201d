from __future__ import annotations

import json
from typing import Any

import pytest

from streams._json import canonical_json, compact_json
from streams.errors import SerializationError


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("c1", '"c1"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ('\\"', '"\\\\\\""'),
        ("tab\tnew\nline\x00", '"tab\\tnew\\nline\\u0000"'),
        ("é✓🙂", '"é✓🙂"'),
        (42, "42"),
        (-0.0, "0"),
        (1.0, "1"),
        (1.5, "1.5"),
        (1e20, "100000000000000000000"),
        (2**70, str(2**70)),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ({"b": 1, "a": [1.0, {"d": 2.0, "c": None}]}, '{"a":[1,{"c":null,"d":2}],"b":1}'),
        ([], "[]"),
        ({}, "{}"),
    ],
)
def test_canonical_json(value: Any, text: str) -> None:
    assert canonical_json(value) == text
    assert json.loads(text) == value


def test_equal_json_values_have_equal_text() -> None:
    assert canonical_json({"x": 1, "y": [1.0]}) == canonical_json({"y": [1], "x": 1.0})
    assert canonical_json(1) != canonical_json("1")
    assert canonical_json(True) != canonical_json(1)
    assert canonical_json('a"') != canonical_json("a\\")


def test_quotes_and_backslashes_never_collide() -> None:
    values = ['"', "\\", '\\"', '"\\', "\\\\", '""', "a", 'a"', "a\\"]
    assert len({canonical_json(v) for v in values}) == len(values)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}, {"x": object()}, b"x"])
def test_rejects_non_json(value: Any) -> None:
    with pytest.raises(SerializationError):
        canonical_json(value)
    with pytest.raises(SerializationError):
        compact_json(value)


def test_compact_json_keeps_floats() -> None:
    assert compact_json({"b": 1.0, "a": "é"}) == '{"a":"é","b":1.0}'
