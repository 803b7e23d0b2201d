from __future__ import annotations

import math
from typing import Any

import cel
import pytest

from streams._expr import (
    STORED_VARIABLES,
    TRIGGER_VARIABLES,
    Bindings,
    Evaluation,
    cel_literal,
    cel_path,
    compile_expression,
    equality_key,
    equality_path,
    evaluate,
    evaluate_bound,
    matches_trigger,
    substitute_event,
)
from streams.errors import ExpressionError, UsageError

TRIGGER: dict[str, Any] = {
    "name": "cart/product.added",
    "id": "01HTRIGGER",
    "ts": 1_700_000_000_000,
    "data": {
        "cart_id": "c-42",
        "quote": 'say "hi"',
        "backslash": "C:\\dir\\",
        "both": '\\"',
        "unicode": "héllo 😀 \u2028 end",
        "control": "a\x00b\x1fc\x7f",
        "newline": "line1\nline2\r\t",
        "n": -5,
        "f": 1.0,
        "pi": 3.25,
        "t": True,
        "none": None,
        "items": [{"sku": "s1", "qty": 2}, {"sku": "s2", "qty": 1}],
        "tags": ["a", "b"],
        "event": "field named event",
        "odd-key": "dash",
        "nested": {"deep": {"er": [1, 2.5, None, False, "x"]}},
        "big": 2**63,
        "min": -(2**63),
    },
}


# --------------------------------------------------------------------------------------------------
# compile
# --------------------------------------------------------------------------------------------------


def test_compile_returns_reusable_cached_program() -> None:
    first = compile_expression("async.data.total > 100")
    assert first is compile_expression("async.data.total > 100")
    assert first.source == "async.data.total > 100"
    assert evaluate(first, async_event={"data": {"total": 101}}).matched
    assert not evaluate(first, async_event={"data": {"total": 99}}).matched


def test_compile_error_carries_expression_and_position() -> None:
    src = 'async.data.x == "abc" && async.data.y > '
    with pytest.raises(ExpressionError) as info:
        compile_expression(src)
    assert info.value.expression == src
    message = str(info.value)
    assert "line 1, column 41" in message
    assert "Syntax error" in message
    assert "^" in message  # the caret display under the source
    assert "Failed to parse" not in message  # the library's repetition of the source is dropped
    assert isinstance(info.value, UsageError)


def test_compile_error_on_second_line() -> None:
    with pytest.raises(ExpressionError, match="line 2, column"):
        compile_expression("async.data.x == 1 &&\n  async.data.y ==")


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("asyn.data.x == 1", "unknown variable 'asyn'"),
        ("data.x == 1", "unknown variable 'data'"),
        ("[1].exists(event, event > 0)", "loop variable"),
    ],
)
def test_compile_rejects(src: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(src)


def test_compile_rejects_non_string() -> None:
    with pytest.raises(ExpressionError, match="expected a CEL expression string"):
        compile_expression(123)  # type: ignore[arg-type]


def test_compile_allows_loop_variables() -> None:
    compiled = compile_expression(
        "async.data.items.exists(i, i.sku == 's1') && async.data.m.all(k, v, v > 0)"
    )
    assert compiled.variables == ("async", "event")


def test_trigger_variables_reject_async() -> None:
    with pytest.raises(ExpressionError, match="can read only 'event'"):
        compile_expression("async.data.x == 1", variables=TRIGGER_VARIABLES)


# --------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "data", "expected"),
    [
        ('async.data.currency in ["EUR", "USD"]', {"currency": "EUR"}, True),
        ('async.data.currency in ["EUR", "USD"]', {"currency": "GBP"}, False),
        ('"vip" in async.data.tags', {"tags": ["new", "vip"]}, True),
        ('"k" in async.data.m', {"m": {"k": 1}}, True),
        ('"z" in async.data.m', {"m": {"k": 1}}, False),
        ("async.data.n in [1, 2, 3]", {"n": 2.0}, True),  # CEL compares numbers across int/double
    ],
)
def test_in_operator(src: str, data: dict[str, Any], expected: bool) -> None:
    assert evaluate(compile_expression(src), async_event={"data": data}).matched is expected


def test_missing_key_is_no_match_with_error() -> None:
    outcome = evaluate(compile_expression("async.data.x == 1"), async_event={"data": {}})
    assert outcome == Evaluation(False, outcome.error)
    assert not outcome
    assert outcome.error is not None and "x" in outcome.error


def test_non_bool_result_is_no_match() -> None:
    outcome = evaluate(compile_expression("async.data.x"), async_event={"data": {"x": 1}})
    assert not outcome.matched
    assert outcome.error is not None and "not a bool" in outcome.error


def test_plain_false_has_no_error() -> None:
    outcome = evaluate(compile_expression("async.data.x == 2"), async_event={"data": {"x": 1}})
    assert outcome == Evaluation(False, None)


def test_unbound_variable_is_no_match() -> None:
    outcome = evaluate(compile_expression("event.data.x == 1"), async_event={"data": {}})
    assert not outcome
    assert outcome.error is not None


def test_bindings_are_reusable() -> None:
    bindings = Bindings(async_event={"data": {"x": 1, "y": "a"}}, event={"data": {"x": 1}})
    assert evaluate_bound(compile_expression("async.data.x == event.data.x"), bindings)
    assert evaluate_bound(compile_expression('async.data.y == "a"'), bindings)
    assert not evaluate_bound(compile_expression('async.data.y == "b"'), bindings)


def test_matches_trigger() -> None:
    compiled = compile_expression("event.data.total >= 100", variables=TRIGGER_VARIABLES)
    assert matches_trigger(compiled, {"name": "a", "data": {"total": 100}})
    assert not matches_trigger(compiled, {"name": "a", "data": {"total": 99}})
    assert not matches_trigger(compiled, {"name": "a", "data": {}})  # runtime error → no match


# --------------------------------------------------------------------------------------------------
# literals
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -5,
        2**63 - 1,
        -(2**63),
        1.0,
        -0.5,
        1e20,
        1.5e-7,
        "",
        'quote " inside',
        "back \\ slash",
        '\\"',
        "\\u0041 not an escape",
        "héllo 😀",
        "\u2028\u2029\x00\x1f\x7f\x85",
        "tab\tnl\ncr\r",
        [1, "a", None, [True]],
        {"k": {"nested": [1.5, {"x": None}]}, "a b": 1},
        {},
        [],
    ],
)
def test_literal_round_trips_through_cel(value: Any) -> None:
    result = cel.evaluate(cel_literal(value))
    assert result == value
    assert type(result) is type(value)


def test_literal_floats_stay_floats_and_uint_range() -> None:
    assert cel_literal(1.0) == "1.0"
    assert cel_literal(-2) == "(-2)"
    assert cel_literal(2**63) == "9223372036854775808u"
    assert cel.evaluate(f"{cel_literal(2**63)} == x", {"x": 2**63}) is True
    assert cel.evaluate(f"{cel_literal(2**70)} == x", {"x": 2**70}) is True  # the library makes it a double
    assert math.isnan(cel.evaluate(cel_literal(float("nan"))))
    assert cel.evaluate(cel_literal(float("-inf"))) == float("-inf")


def test_literal_of_bytes() -> None:
    assert cel.evaluate(cel_literal(b'a"\\\x00\xff')) == b'a"\\\x00\xff'


def test_literal_rejects_lone_surrogate_and_objects() -> None:
    with pytest.raises(ExpressionError, match="surrogate"):
        cel_literal("\ud800")
    with pytest.raises(ExpressionError, match="no CEL literal"):
        cel_literal(object())


def test_cel_path() -> None:
    assert cel_path("async", ["data", "cart_id"]) == "async.data.cart_id"
    assert cel_path("async", ["data", "odd-key", "in", 0]) == 'async.data["odd-key"]["in"][0]'


# --------------------------------------------------------------------------------------------------
# substitution
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("async.data.cart_id == event.data.cart_id", 'async.data.cart_id == "c-42"'),
        ("event.data.quote == async.data.q", r'"say \"hi\"" == async.data.q'),
        ("event.data.backslash == async.data.q", r'"C:\\dir\\" == async.data.q'),
        ("event.data.both == async.data.q", r'"\\\"" == async.data.q'),
        ("event.data.unicode == async.data.q", '"héllo 😀 \\u2028 end" == async.data.q'),
        ("event.data.control == async.data.q", '"a\\u0000b\\u001fc\\u007f" == async.data.q'),
        ("event.data.newline == async.data.q", '"line1\\nline2\\r\\t" == async.data.q'),
        ("async.data.n == event.data.n", "async.data.n == (-5)"),
        ("async.data.f == event.data.f", "async.data.f == 1.0"),
        ("event.data.t && event.data.none == null", "true && null == null"),
        ("async.data.tags == event.data.tags", 'async.data.tags == ["a", "b"]'),
        ("event.data.items[1].sku == async.data.sku", '"s2" == async.data.sku'),
        ('event.data["odd-key"] == async.data.k', '"dash" == async.data.k'),
        ("event.data.nested.deep == async.x", '{"er": [1, 2.5, null, false, "x"]} == async.x'),
        ("event.data.big == async.x", "9223372036854775808u == async.x"),
        ("event.name == async.name", '"cart/product.added" == async.name'),
        # ``event`` inside string literals and comments, fields named ``event``, functions named event.
        ('async.data.event == "event.data.cart_id"', 'async.data.event == "event.data.cart_id"'),
        ("async.data.event.size() > 0", "async.data.event.size() > 0"),
        (
            "'event' + r\"event.x\" + '''event''' == async.s",
            "'event' + r\"event.x\" + '''event''' == async.s",
        ),
        ('"a \\" event.data.x" == async.s', '"a \\" event.data.x" == async.s'),
        ("async.s == 'it\\'s event'", "async.s == 'it\\'s event'"),
        ("async.x == 1 // event.data.cart_id\n", "async.x == 1 // event.data.cart_id\n"),
        ("event.data.event == async.e", '"field named event" == async.e'),
        # Method calls and computed indexes keep the longest constant prefix.
        ("event.data.tags.size() == 2", '["a", "b"].size() == 2'),
        ("event.data.n.foo()", "(-5).foo()"),
        ("event.data.tags[async.data.i] == 'a'", '["a", "b"][async.data.i] == \'a\''),
        # ``has`` becomes a boolean.
        ("has(event.data.cart_id) && !has(event.data.nope)", "true && !false"),
        ("has(event.data.nested.deep.er)", "true"),
        # Missing fields become an evaluation error, not null.
        ("async.data.x == event.data.missing", 'async.data.x == {}["event.data.missing"]'),
        ("event.data.cart_id.sub == async.x", '{}["event.data.cart_id.sub"] == async.x'),
        ("event.data.items[5] == async.x", '{}["event.data.items[5]"] == async.x'),
        ("has(event.nope.x)", '{}["event.nope"]'),
        # Whitespace between the parts of a reference.
        ("event . data . cart_id == async.c", '"c-42" == async.c'),
    ],
)
def test_substitute_event(src: str, expected: str) -> None:
    compile_expression(src)
    out = substitute_event(src, TRIGGER)
    assert out == expected
    compile_expression(out, variables=STORED_VARIABLES)


def test_substitute_whole_event() -> None:
    trigger = {"name": "a", "data": {"x": [1, {"y": None}]}, "id": "i", "ts": 1}
    out = substitute_event("event == async", trigger)
    assert cel.evaluate(out, {"async": trigger}) is True


def test_substitute_leaves_expression_without_event_unchanged() -> None:
    src = 'async.data.x == "event" && async.data.event == 1'
    assert substitute_event(src, TRIGGER) == src


def test_substitute_rejects_event_as_loop_variable() -> None:
    with pytest.raises(ExpressionError, match="loop variable"):
        substitute_event("async.data.items.exists(event, event.sku == 's1')", TRIGGER)


def test_substitute_rejects_unrepresentable_value() -> None:
    with pytest.raises(ExpressionError, match=r"event\.data\.bad"):
        substitute_event("async.x == event.data.bad", {"data": {"bad": "\udcff"}})


CANDIDATES: list[dict[str, Any]] = [
    {"name": "c", "data": {"cart_id": "c-42", "q": 'say "hi"', "sku": "s2", "tags": ["a", "b"], "n": -5}},
    {"name": "c", "data": {"cart_id": "other", "q": "C:\\dir\\", "sku": "s1", "tags": [], "n": 1}},
    {"name": "c", "data": {"x": None, "i": 1}},
    {"name": "c", "data": {}},
]

EQUIVALENCE_EXPRESSIONS = [
    "async.data.cart_id == event.data.cart_id",
    "async.data.q == event.data.quote || async.data.q == event.data.backslash",
    "event.data.items.exists(i, i.sku == async.data.sku)",
    "async.data.tags == event.data.tags && async.data.n == event.data.n",
    "async.data.x == event.data.missing",
    "async.data.x == event.data.missing || true",
    "!(async.data.x == event.data.missing)",
    "has(event.data.cart_id) && has(async.data.cart_id)",
    "event.data.tags[async.data.i] == 'b'",
    "size(event.data.items) == 2 && async.data.n < event.data.pi",
    "event.data.f == 1 && event.data.min < 0 && event.data.big > 0u",
    "async.data.cart_id in [event.data.cart_id, 'other']",
    'event.data.unicode.startsWith("hé") && event.data.control.size() == 6',
]


@pytest.mark.parametrize("src", EQUIVALENCE_EXPRESSIONS)
def test_substitution_evaluates_like_binding_the_trigger(src: str) -> None:
    original = compile_expression(src)
    stored = compile_expression(substitute_event(src, TRIGGER), variables=STORED_VARIABLES)
    for candidate in CANDIDATES:
        before = evaluate(original, async_event=candidate, event=TRIGGER)
        after = evaluate(stored, async_event=candidate)
        assert before.matched == after.matched, (src, candidate)
        assert (before.error is None) == (after.error is None), (src, candidate, before, after)


# --------------------------------------------------------------------------------------------------
# equality keys
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ('async.data.completionId == "abc" && async.data.x > 1', ("data.completionId", "abc")),
        ('"abc" == async.data.completionId', ("data.completionId", "abc")),
        ("async.data.x > 1 && async.data.id == 7", ("data.id", 7)),
        ("(async.data.a == 1 && async.data.b == 2) && async.data.c > 0", ("data.a", 1)),
        ("((async.data.a == true))", ("data.a", True)),
        ("async.data.a == null", ("data.a", None)),
        ('async.data.b == [1, {"k": null}]', ("data.b", [1, {"k": None}])),
        ('async.data["cart-id"] == "x"', ("data.cart-id", "x")),
        ("async.data.a == (-5)", ("data.a", -5)),
        ("async.data.a == 1u", ("data.a", 1)),
        ("async.name == 'n'", ("name", "n")),
        ("async.data.items.exists(i, i == 1) && async.data.id == 'z'", ("data.id", "z")),
        ('async.data.x == "a\\"b\\\\c"', ("data.x", 'a"b\\c')),
    ],
)
def test_equality_key_found(src: str, expected: tuple[str, Any]) -> None:
    compile_expression(src)
    assert equality_key(src) == expected
    assert equality_path(src) == expected[0]


@pytest.mark.parametrize(
    "src",
    [
        "async.data.a == 1 || async.data.b == 2",  # under ||
        "!(async.data.a == 1)",  # under !
        "async.data.a == 1 ? true : false",  # under ?:
        "async.data.a != 1",
        "async.data.a in ['x']",
        "size(async.data.a) == 1",
        "async.data.a == async.data.b",
        'async.data["a.b"] == "x"',  # a key with a dot has no dotted path
        "async.event.x == 1",  # no event has a top-level ``event`` field
        'async.data.a == {}["event.data.x"]',  # a missing trigger field after substitution
        'async.data.a == double("NaN")',  # nothing equals NaN
        'async.data.a == b"x"',  # bytes never equal a JSON value
        'async.data.id == "z" == true',
        "async.data.a > 1",
        "true",
    ],
)
def test_equality_key_absent(src: str) -> None:
    compile_expression(src, variables=("async",))
    assert equality_key(src) is None


def test_equality_key_after_substitution() -> None:
    src = "async.data.id == event.data.cart_id && async.data.n > 1"
    assert equality_key(src) is None  # not a constant before substitution
    assert equality_path(src) == "data.id"
    assert equality_key(substitute_event(src, TRIGGER)) == ("data.id", "c-42")


def test_equality_key_restricted_to_path() -> None:
    src = 'async.data.a == 1 && async.data.b == "x"'
    assert equality_key(src, path="data.b") == ("data.b", "x")
    assert equality_key(src, path="data.c") is None


@pytest.mark.parametrize(
    "src",
    [
        'async.data.x == "a" || true',
        '(async.data.x == "a" || true) && async.data.y > 1',
        "async.data.b ? async.data.x == 1 : false",
    ],
)
def test_no_equality_key_under_a_disjunction_or_conditional(src: str) -> None:
    # ``==`` binds tighter than ``||``: the equality does not have to hold for a match.
    assert equality_path(src) is None
    assert equality_key(src) is None
