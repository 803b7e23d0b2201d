"""The correlation index: which events the router forwards to the matcher, and under which keys.

An event can resolve a wait (or cancel a run) only if the router forwarded it to the ``waits`` topic under
the key the wait is stored under. The index lists the ``(event name, path)`` pairs to forward:

- ``(name, "data.cart_id")``: forward every ``name`` event that has ``data.cart_id``, keyed by
  :func:`~streams._matchkey.match_key` of its value;
- ``(name, None)``: forward every ``name`` event keyed by :func:`~streams._matchkey.name_key` (per-name
  routing, for waits whose condition gives no key: an ``if_`` without a top-level ``async.x == value``
  term, a ``match`` unknown until run time, or a ``cancel_on`` without ``match``/``if_``).

It is built at start-up from code (:meth:`CorrelationIndex.from_functions`):

1. ``cancel_on`` rules;
2. ``step.wait_for_event(...)`` calls and ``Wait(...)`` constructions found in each function's source by
   :func:`scan_function_source` (literal arguments and module-level string constants);
3. explicit ``waits=[Wait(...)]`` declarations, for waits the scan cannot see (a helper function, a
   computed event name).

A wait that is not covered fails fast (:meth:`CorrelationIndex.raise_if_not_routed`) with a message saying
how to declare it. Workers publish their index to the compacted ``correlations`` topic
(:meth:`CorrelationIndex.to_records`) so routers of an older deployment forward pairs that only newer code
waits on.

:func:`plan_wait` turns a wait (or a ``cancel_on`` rule) and the run's trigger into the key it is stored
under and the condition the matcher checks, consistently with the index.
"""

from __future__ import annotations

import ast
import enum
import inspect
import logging
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from streams._expr import (
    STORED_VARIABLES,
    cel_literal,
    cel_path,
    compile_expression,
    equality_key,
    equality_path,
    substitute_event,
)
from streams._matchkey import (
    MISSING,
    correlation_key,
    extract,
    match_key,
    name_key,
    parse_path,
)
from streams.errors import UsageError

__all__ = [
    "CorrelationIndex",
    "CorrelationRule",
    "FunctionLike",
    "WaitPlan",
    "plan_wait",
    "route_path",
    "scan_function_source",
]

logger = logging.getLogger(__name__)

#: An index entry: event name and field path (``None`` = per-name routing).
Entry = tuple[str, str | None]


class CorrelationRule(Protocol):
    """What the index reads from a ``Wait`` or ``CancelOn``."""

    @property
    def event(self) -> str:
        """The event name."""

    @property
    def match(self) -> str | None:
        """The ``match`` path, if any."""

    @property
    def if_(self) -> str | None:
        """The ``if_`` expression, if any."""


class FunctionLike(Protocol):
    """What the index reads from a function definition (``streams._function.FunctionDef``)."""

    @property
    def fn(self) -> Callable[..., Any]:
        """The user's function."""

    @property
    def cancel_on(self) -> Iterable[CorrelationRule] | None:
        """Its cancellation rules."""

    @property
    def waits(self) -> Iterable[CorrelationRule] | None:
        """Its declared waits."""


def route_path(match: str | None, if_: str | None) -> str | None:
    """Returns the path a wait or ``cancel_on`` rule is routed under, from its options alone.

    ``match`` wins; else the path of the first top-level ``async.<path> == <constant or event.*>`` term of
    ``if_`` (:func:`~streams._expr.equality_path`); else ``None`` (per-name routing).

    Args:
        match: The ``match`` path, e.g. ``"data.cart_id"``.
        if_: The ``if_`` expression as written (before substitution).

    Returns:
        The path or ``None``.

    Raises:
        UsageError: ``match`` is not a valid path.
    """
    if match is not None:
        parse_path(match)
        return match
    if if_ is not None:
        return equality_path(if_)
    return None


# --------------------------------------------------------------------------------------------------
# The index
# --------------------------------------------------------------------------------------------------


class CorrelationIndex:
    """An immutable set of ``(event name, path | None)`` pairs the router forwards to ``waits``.

    Args:
        entries: The pairs.

    Raises:
        UsageError: A name is empty or a path is malformed.
    """

    __slots__ = ("_by_name", "_entries")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        checked: set[Entry] = set()
        for name, path in entries:
            if not isinstance(name, str) or not name:
                raise UsageError(f"correlation index: event name must be a non-empty string, got {name!r}")
            if path is not None:
                parse_path(path)
            checked.add((name, path))
        self._entries = frozenset(checked)
        by_name: dict[str, list[str | None]] = {}
        for name, path in sorted(checked, key=_entry_order):
            by_name.setdefault(name, []).append(path)
        self._by_name = {name: tuple(paths) for name, paths in by_name.items()}

    @classmethod
    def build(cls, entries: Iterable[Entry]) -> CorrelationIndex:
        """Builds an index from pairs (same as the constructor)."""
        return cls(entries)

    @classmethod
    def from_functions(cls, functions: Iterable[FunctionLike]) -> CorrelationIndex:
        """Builds the index of an app's functions: ``cancel_on``, waits in the source, declared ``waits``.

        Args:
            functions: Function definitions (anything with ``fn``, ``cancel_on`` and ``waits``).

        Returns:
            The index.
        """
        entries: list[Entry] = []
        for function in functions:
            for rule in (*(function.cancel_on or ()), *(function.waits or ())):
                entries.append((rule.event, route_path(rule.match, rule.if_)))
            entries.extend(scan_function_source(function.fn))
        return cls(entries)

    @classmethod
    def from_records(cls, values: Iterable[Mapping[str, Any] | None]) -> CorrelationIndex:
        """Builds an index from ``correlations`` record values (tombstones, ``None``, are skipped).

        Args:
            values: Dicts with ``event_name`` and ``path`` (the ``schemas/correlation.avsc`` record).

        Returns:
            The index.
        """
        return cls((value["event_name"], value.get("path")) for value in values if value is not None)

    @property
    def entries(self) -> frozenset[Entry]:
        """All pairs."""
        return self._entries

    def event_names(self) -> frozenset[str]:
        """The event names with at least one route."""
        return frozenset(self._by_name)

    def routes(self, event_name: str) -> list[str | None]:
        """The paths an event of this name is forwarded under, ``None`` (per name) first, then sorted."""
        return list(self._by_name.get(event_name, ()))

    def route_keys(self, event: Mapping[str, Any]) -> list[bytes]:
        """The ``waits`` keys the router forwards an event under (one record per key).

        Args:
            event: The event as a dict (``Event.to_dict()``).

        Returns:
            A name key for per-name routing and a match key for each routed path the event has a value
            at; an event missing a path's field is not forwarded under it. Empty when nothing waits on the
            event's name.
        """
        name = event["name"]
        keys: list[bytes] = []
        for path in self._by_name.get(name, ()):
            if path is None:
                keys.append(name_key(name))
                continue
            value = extract(event, path)
            if value is not MISSING:
                keys.append(match_key(name, path, value))
        return keys

    def covers(self, event_name: str, path: str | None) -> bool:
        """Whether events of this name are forwarded under this path (``None``: per name)."""
        return (event_name, path) in self._entries

    def raise_if_not_routed(self, event_name: str, path: str | None, function_id: str) -> None:
        """Fails fast when a wait would never see its event.

        Args:
            event_name: The awaited event name.
            path: The path the wait is keyed on, or ``None`` for per-name.
            function_id: The waiting function, for the message.

        Raises:
            UsageError: The pair is not in the index; the message says how to declare it.
        """
        if self.covers(event_name, path):
            return
        if path is None:
            what = "by event name (its if_ has no top-level `async.<field> == <value>` term)"
            declaration = f"Wait(event={event_name!r}, if_=<the same if_>)"
        else:
            what = f"matched on {path!r}"
            declaration = f"Wait(event={event_name!r}, match={path!r})"
        raise UsageError(
            f"function {function_id!r} waits for {event_name!r} {what}, but no router forwards that to "
            "the matcher, so no event could ever resolve it. Waits are found in the function's own body "
            "when the event name and match are literals or module-level constants; this one is probably "
            "called from a helper or with computed values. Declare it: "
            f"@app.function(..., waits=[{declaration}])"
        )

    def union(self, other: CorrelationIndex) -> CorrelationIndex:
        """Returns an index with the pairs of both."""
        return CorrelationIndex(self._entries | other._entries)

    def to_records(self, *, published_by: str, published_ms: int) -> list[tuple[bytes, dict[str, Any]]]:
        """Returns the ``correlations`` records publishing this index, in a stable order.

        Args:
            published_by: Who publishes (worker host/process id and code version).
            published_ms: When, in ms since the epoch.

        Returns:
            ``(key, value)`` pairs: key ``event name ∥ 0x00 ∥ path`` (see
            :func:`~streams._matchkey.correlation_key`), value a dict with the fields of
            ``schemas/correlation.avsc`` (``event_name``, ``path``, ``published_by``, ``published_ms``).
        """
        return [
            (
                correlation_key(name, path),
                {
                    "event_name": name,
                    "path": path,
                    "published_by": published_by,
                    "published_ms": published_ms,
                },
            )
            for name, path in self
        ]

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries, key=_entry_order))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: object) -> bool:
        return entry in self._entries

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CorrelationIndex):
            return NotImplemented
        return self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self._entries)

    def __repr__(self) -> str:
        return f"CorrelationIndex({list(self)!r})"


def _entry_order(entry: Entry) -> tuple[str, int, str]:
    name, path = entry
    return (name, 0, "") if path is None else (name, 1, path)


# --------------------------------------------------------------------------------------------------
# Waits at run time
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WaitPlan:
    """Where a wait (or ``cancel_on`` rule) is stored and what the matcher checks.

    The matcher resolves the wait with an event forwarded under ``key`` when ``condition`` is ``None`` or
    evaluates to true with ``async`` bound to the event. With a ``match`` routed by path, equal keys mean
    equal values (canonical JSON), so no condition is needed for ``match`` itself.

    Attributes:
        event_name: The awaited event name.
        path: The routed path, or ``None`` when routed per name.
        key: The ``waits`` key to store the wait under.
        condition: CEL over ``async`` only (the trigger already substituted), or ``None``.
        satisfiable: ``False`` when no event can ever match (the trigger lacks the ``match`` field or the
            field an ``if_`` equality compares with); the wait then only times out and ``condition`` is
            ``"false"``.
    """

    event_name: str
    path: str | None
    key: bytes
    condition: str | None
    satisfiable: bool = True


def plan_wait(
    event_name: str,
    *,
    match: str | None,
    if_: str | None,
    trigger: Mapping[str, Any],
    index: CorrelationIndex | None = None,
    function_id: str = "?",
) -> WaitPlan:
    """Plans a wait when it starts: substitutes the trigger, picks the key, checks it is routed.

    The path is :func:`route_path` of the options, the same as the index was built with. If the index
    lacks ``(event_name, path)`` but routes the name per name, the wait falls back to per-name routing
    with ``match`` turned into a condition; if it lacks both, the wait fails fast.

    Args:
        event_name: The awaited event name.
        match: The ``match`` path, if any.
        if_: The ``if_`` expression as written, if any.
        trigger: The run's trigger event as a dict.
        index: The correlation index to check against, or ``None`` to skip the check.
        function_id: The waiting function, for error messages.

    Returns:
        The plan.

    Raises:
        ExpressionError: ``if_`` does not compile.
        UsageError: ``match`` is malformed, or the wait is not routed (see
            :meth:`CorrelationIndex.raise_if_not_routed`).
    """
    condition: str | None = None
    if if_ is not None:
        compile_expression(if_)
        condition = substitute_event(if_, trigger)
        compile_expression(condition, variables=STORED_VARIABLES)
    path = route_path(match, if_)

    if index is not None and not index.covers(event_name, path):
        if path is not None and index.covers(event_name, None):
            path = None  # the name is routed as a whole: check the match in the condition instead
        else:
            index.raise_if_not_routed(event_name, path, function_id)

    if path is None:
        if match is not None:
            value = extract(trigger, match)
            if value is MISSING:
                return _unsatisfiable(event_name, None)
            term = f"{cel_path('async', parse_path(match))} == {cel_literal(value)}"
            condition = term if condition is None else f"{term} && ({condition})"
        return WaitPlan(event_name, None, name_key(event_name), condition)

    if match is not None:
        value = extract(trigger, path)
        if value is MISSING:
            return _unsatisfiable(event_name, path)
        return WaitPlan(event_name, path, match_key(event_name, path, value), condition)

    assert condition is not None  # a path without match comes from if_
    found = equality_key(condition, path=path)
    if found is None:
        # The term ``async.<path> == event.<field>`` now reads a field the trigger lacks (or a value no
        # JSON event can equal), so the whole conjunction can never be true.
        return _unsatisfiable(event_name, path)
    return WaitPlan(event_name, path, match_key(event_name, path, found[1]), condition)


def _unsatisfiable(event_name: str, path: str | None) -> WaitPlan:
    return WaitPlan(event_name, path, name_key(event_name), "false", satisfiable=False)


# --------------------------------------------------------------------------------------------------
# Source scanning
# --------------------------------------------------------------------------------------------------


class _Unknown(enum.Enum):
    UNKNOWN = "UNKNOWN"


_UNKNOWN: Final = _Unknown.UNKNOWN

#: Positional parameters after the step id, by callee. ``wait_for_event`` takes keywords only.
_POSITIONAL: dict[str, tuple[str, ...]] = {
    "wait_for_event": (),
    "Wait": ("event", "match", "if_", "lookback"),
}
_WAIT_FOR_EVENT_FIRST_ARG = 1  # ``step_id`` comes first


def scan_function_source(fn: Callable[..., Any]) -> list[Entry]:
    """Finds the waits in a function's body: ``wait_for_event(...)`` calls and ``Wait(...)`` values.

    Arguments are read when they are literals or names of string constants visible to the function
    (module globals, closure variables, ``Class.ATTR`` / ``module.NAME`` attributes, ``str`` enum
    members). Decorators are not scanned (their ``cancel_on``/``waits`` are read as values).

    - A wait whose event name is not known statically is skipped with a warning: declare it with
      ``waits=[Wait(...)]``.
    - A ``match`` not known statically, an ``if_`` not known statically (an f-string, a variable) or an
      ``if_`` without a top-level equality term routes the event per name (every event of that name
      goes to the matcher); :func:`plan_wait` then checks the match in the condition.

    Args:
        fn: The user's function (wrappers are unwrapped).

    Returns:
        The pairs found, in source order, without duplicates. Empty when the source is unavailable
        (a warning is logged).
    """
    target = inspect.unwrap(fn)
    qualname = getattr(target, "__qualname__", repr(target))
    try:
        lines, first_line = inspect.getsourcelines(target)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError) as exc:
        logger.warning(
            "cannot read the source of %s to find its waits (%s); declare them with waits=[Wait(...)]",
            qualname,
            exc,
        )
        return []
    body = _function_node(tree, getattr(target, "__name__", ""))
    if body is None:
        return []
    namespace = {**_namespace(target), **_local_constants(body)}
    found: list[Entry] = []
    for node in _walk_body(body):
        if not isinstance(node, ast.Call):
            continue
        callee = _callee_name(node.func)
        if callee not in _POSITIONAL:
            continue
        where = f"{qualname} (line {first_line + node.lineno - 1})" if first_line else qualname
        entry = _entry_for_call(node, callee, namespace, where)
        if entry is not None and entry not in found:
            found.append(entry)
    return found


def _function_node(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | None:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node
    if name == "<lambda>":
        for node in ast.walk(tree):
            if isinstance(node, ast.Lambda):
                return node
    return None


def _walk_body(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> Iterator[ast.AST]:
    if isinstance(node, ast.Lambda):
        yield from ast.walk(node.body)
        return
    for statement in node.body:
        yield from ast.walk(statement)


def _local_constants(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> dict[str, Any]:
    """Local names bound exactly once, to a string literal (``key = "data.id"``); others are unknown."""
    bindings: dict[str, list[ast.AST]] = {}
    for child in _walk_body(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store | ast.Del):
            bindings.setdefault(child.id, []).append(child)
        elif isinstance(child, ast.arg):
            bindings.setdefault(child.arg, []).extend([child, child])  # parameters are never constant
    if not isinstance(node, ast.Lambda):
        for argument in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
            bindings.setdefault(argument.arg, []).extend([argument, argument])
    constants: dict[str, Any] = {}
    for child in _walk_body(node):
        if (
            isinstance(child, ast.Assign)
            and len(child.targets) == 1
            and isinstance(child.targets[0], ast.Name)
            and isinstance(child.value, ast.Constant)
            and isinstance(child.value.value, str)
            and len(bindings.get(child.targets[0].id, ())) == 1
        ):
            constants[child.targets[0].id] = child.value.value
    for name, nodes in bindings.items():
        if name not in constants and nodes:
            constants[name] = _UNKNOWN  # a local that shadows any global of the same name
    return constants


def _namespace(fn: Callable[..., Any]) -> dict[str, Any]:
    namespace: dict[str, Any] = dict(getattr(fn, "__globals__", {}))
    try:
        closure = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return namespace
    namespace.update(closure.nonlocals)
    return namespace


def _callee_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _entry_for_call(call: ast.Call, callee: str, namespace: dict[str, Any], where: str) -> Entry | None:
    arguments: dict[str, ast.expr] = {}
    positional = _POSITIONAL[callee]
    args = call.args[_WAIT_FOR_EVENT_FIRST_ARG:] if callee == "wait_for_event" else call.args
    for name, value in zip(positional, args, strict=False):
        arguments[name] = value
    has_star = any(isinstance(arg, ast.Starred) for arg in call.args) or any(
        keyword.arg is None for keyword in call.keywords
    )
    for keyword in call.keywords:
        if keyword.arg is not None:
            arguments[keyword.arg] = keyword.value

    event = _constant(arguments.get("event"), namespace) if "event" in arguments else _UNKNOWN
    if not isinstance(event, str) or not event:
        logger.warning(
            "%s: cannot tell statically which event %s(...) waits for; "
            "declare it with @app.function(..., waits=[Wait(event=..., match=...)])",
            where,
            callee,
        )
        return None
    match = _constant(arguments["match"], namespace) if "match" in arguments else None
    if_ = _constant(arguments["if_"], namespace) if "if_" in arguments else None
    if has_star and "match" not in arguments and "if_" not in arguments:
        match = _UNKNOWN
    if match is _UNKNOWN or (match is None and if_ is _UNKNOWN):
        logger.warning(
            "%s: the %s of %s(event=%r) is not known statically; every %r event "
            "will be routed to the matcher. Pass a literal to route only matching ones.",
            where,
            "match" if match is _UNKNOWN else "if_",
            callee,
            event,
            event,
        )
        return (event, None)
    if match is not None and not isinstance(match, str):
        return None  # not a valid match; the call itself will fail with a clear error
    if if_ is not None and not isinstance(if_, str):
        return None
    try:
        return (event, route_path(match, if_))
    except UsageError as exc:
        logger.warning("%s: %s", where, exc)
        return None


def _constant(node: ast.expr | None, namespace: Mapping[str, Any]) -> str | _Unknown | None:
    """The value of a literal or constant-name argument when it is a ``str`` or ``None``."""
    if node is None:
        return None
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) or node.value is None else _UNKNOWN
    value: Any = _UNKNOWN
    if isinstance(node, ast.Name):
        value = namespace.get(node.id, _UNKNOWN)
    elif isinstance(node, ast.Attribute):
        chain: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in namespace:
            return _UNKNOWN
        value = namespace[base.id]
        for attr in reversed(chain):
            if not (inspect.ismodule(value) or inspect.isclass(value)):
                return _UNKNOWN  # never run properties of arbitrary objects
            value = inspect.getattr_static(value, attr, _UNKNOWN)
    if isinstance(value, _Unknown):
        return _Unknown.UNKNOWN
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return None
    if isinstance(value, str):
        return str.__str__(value)  # a plain ``str`` even for ``str`` subclasses
    return _UNKNOWN
