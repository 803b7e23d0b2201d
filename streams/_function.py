"""Function definitions: triggers, cancellation rules, declared waits, and their validation.

Everything a user passes to ``@app.function(...)`` is checked here, once, when the module defining the
function is imported, so a typo fails at start-up rather than when the first event arrives. CEL
expressions (``if_``, ``idempotency``) are stored as text; :meth:`FunctionDef.expressions` lists every
one of them so the app can compile them all in one place (``streams._expr.compile_expression``).
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from streams._duration import DurationLike, parse_duration
from streams.errors import UsageError

#: Function ids: a letter or digit, then letters, digits, ``-``, ``_`` or ``.``; at most 128 characters.
FUNCTION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: ``match`` paths: ``data`` or ``user`` followed by one or more ``.key`` segments.
MATCH_PATH_RE = re.compile(r"^(data|user)(\.[A-Za-z0-9_-]+)+$")
#: Most retries a function may ask for (21 attempts per step).
MAX_RETRIES = 20
#: Retries when none are given: 4 retries, 5 attempts.
DEFAULT_RETRIES = 4
#: Longest event name, as the event envelope allows.
MAX_EVENT_NAME_CHARS = 256
#: ``cancel_on`` timeout when none is given: the longest a run can be waited on.
DEFAULT_CANCEL_TIMEOUT = "366d"

_T = TypeVar("_T")


def validate_event_name(name: object, what: str) -> str:
    """Checks an event name given in a trigger, wait or cancel rule.

    Args:
        name: The value to check.
        what: Names the value in error messages.

    Returns:
        The name.

    Raises:
        UsageError: It is not a non-blank printable string of at most 256 characters.
    """
    if not isinstance(name, str):
        raise UsageError(f"{what}: event name must be a string, got {type(name).__name__}")
    if not name or name.isspace() or not name.isprintable() or len(name) > MAX_EVENT_NAME_CHARS:
        raise UsageError(
            f"{what}: event name must be 1 to {MAX_EVENT_NAME_CHARS} printable characters, got {name!r:.80}"
        )
    return name


def validate_match_path(path: object, what: str) -> str:
    """Checks a ``match`` path such as ``"data.cart_id"``.

    ``match="data.x"`` means "the candidate event's ``data.x`` equals the trigger event's ``data.x``".

    Args:
        path: The value to check.
        what: Names the value in error messages.

    Returns:
        The path.

    Raises:
        UsageError: It is not a dotted path into ``data`` or ``user``.
    """
    if not isinstance(path, str):
        raise UsageError(f"{what}: match must be a string such as 'data.cart_id', got {type(path).__name__}")
    if MATCH_PATH_RE.match(path):
        return path
    if path.startswith(("event.", "async.")):
        raise UsageError(
            f"{what}: match {path!r} must not name the event; write {path.split('.', 1)[1]!r} "
            "(it compares that field of the trigger and of the awaited event)"
        )
    raise UsageError(
        f"{what}: match {path!r} is not a dotted path into the event such as 'data.cart_id' or "
        "'user.id' (keys of letters, digits, '_' or '-')"
    )


def validate_expression(source: object, what: str) -> str:
    """Checks that a CEL expression is a non-blank string; compiling happens in ``streams._expr``."""
    if not isinstance(source, str) or not source.strip():
        raise UsageError(f"{what}: expected a non-empty CEL expression string, got {source!r:.80}")
    return source


@dataclass(frozen=True, slots=True)
class Trigger:
    """An event that starts runs of a function.

    Attributes:
        event: The event name.
        if_: Optional CEL filter over ``event``; the run starts only when it is true.
    """

    event: str
    if_: str | None = None

    def __post_init__(self) -> None:
        validate_event_name(self.event, "trigger")
        if self.if_ is not None:
            validate_expression(self.if_, f"trigger {self.event!r} if_")


@dataclass(frozen=True, slots=True)
class CancelOn:
    """Cancels a run when a matching event arrives before ``timeout``.

    Without ``match`` and ``if_`` every run of the function whose trigger came before the event is
    cancelled. With both, both must hold.

    Attributes:
        event: The event name that cancels.
        match: Dotted path compared between the trigger and the cancelling event, e.g. ``"data.cart_id"``.
        if_: CEL over ``event`` (the trigger) and ``async`` (the cancelling event).
        timeout: How long after the run starts the rule applies, at most 366 days.
    """

    event: str
    match: str | None = None
    if_: str | None = None
    timeout: DurationLike = DEFAULT_CANCEL_TIMEOUT

    def __post_init__(self) -> None:
        validate_event_name(self.event, "cancel_on")
        what = f"cancel_on {self.event!r}"
        if self.match is not None:
            validate_match_path(self.match, what)
        if self.if_ is not None:
            validate_expression(self.if_, f"{what} if_")
        parse_duration(self.timeout, what=f"{what} timeout")

    @property
    def timeout_ms(self) -> int:
        """The timeout in milliseconds."""
        return parse_duration(self.timeout, what=f"cancel_on {self.event!r} timeout")


@dataclass(frozen=True, slots=True)
class Wait:
    """One awaited event: an argument of ``wait_for_any``/``wait_for_all`` and of ``waits=[...]``.

    Attributes:
        event: The awaited event's name.
        match: Dotted path that must be equal in the trigger and the awaited event, e.g. ``"data.id"``.
        if_: CEL over ``event`` (the trigger) and ``async`` (the candidate); with ``match``, both must hold.
        lookback: How far before the wait starts an event may have happened and still match; ``0`` means
            only events from the wait's start on; ``None`` means everything after what the run has
            already observed (see ``docs/execution-model.md``). At most 366 days.
    """

    event: str
    match: str | None = None
    if_: str | None = None
    lookback: DurationLike | None = None

    def __post_init__(self) -> None:
        validate_event_name(self.event, "wait")
        what = f"wait for {self.event!r}"
        if self.match is not None:
            validate_match_path(self.match, what)
        if self.if_ is not None:
            validate_expression(self.if_, f"{what} if_")
        if self.lookback is not None:
            parse_duration(self.lookback, what=f"{what} lookback", allow_zero=True)

    @property
    def lookback_ms(self) -> int | None:
        """The lookback in milliseconds, or ``None`` for the default."""
        if self.lookback is None:
            return None
        return parse_duration(self.lookback, what=f"wait for {self.event!r} lookback", allow_zero=True)


@dataclass(frozen=True, slots=True)
class FunctionDef:
    """A validated durable function. Build it with :func:`define_function`.

    Attributes:
        id: Stable id; it names the function in run ids, history and system events.
        triggers: Events that start runs (at least one).
        fn: The user's function, called as ``fn(event, step)``.
        retries: Retries per step (and for the function body), 0 to 20.
        idempotency: CEL over ``event`` whose value dedupes run creation for 24 h, or ``None`` (the
            event id dedupes).
        on_failure: Called as ``on_failure(event, step)`` with the ``streams/function.failed`` event when
            a run fails for good, or ``None``.
        cancel_on: Rules that cancel runs.
        waits: Waits declared up front, so the correlation index knows them before the first run.
        is_async: Whether ``fn`` is a coroutine function (it gets a ``Step``; else a ``SyncStep``).
    """

    id: str
    triggers: tuple[Trigger, ...]
    fn: Callable[..., Any]
    retries: int = DEFAULT_RETRIES
    idempotency: str | None = None
    on_failure: Callable[..., Any] | None = None
    cancel_on: tuple[CancelOn, ...] = ()
    waits: tuple[Wait, ...] = ()
    is_async: bool = True

    def expressions(self) -> Iterator[tuple[str, str]]:
        """Yields ``(where, source)`` for every CEL expression of the function, for compiling up front.

        ``where`` is a human-readable location such as ``"trigger 'a/b' if_"`` for error messages.
        """
        for trigger in self.triggers:
            if trigger.if_ is not None:
                yield f"function {self.id!r} trigger {trigger.event!r} if_", trigger.if_
        if self.idempotency is not None:
            yield f"function {self.id!r} idempotency", self.idempotency
        for rule in self.cancel_on:
            if rule.if_ is not None:
                yield f"function {self.id!r} cancel_on {rule.event!r} if_", rule.if_
        for wait in self.waits:
            if wait.if_ is not None:
                yield f"function {self.id!r} wait for {wait.event!r} if_", wait.if_

    def failure_handler(self) -> FunctionDef | None:
        """Returns ``on_failure`` as a function definition the engine can replay, or ``None``.

        Its id is ``"<id>.on-failure"``. It is triggered by the ``streams/function.failed`` system
        event of this function (``event.data.function_id`` is this id; ``event.data.event`` is the
        failed run's trigger and ``event.data.error`` the error), keeps the retries and has no
        cancel rules.
        """
        if self.on_failure is None:
            return None
        return FunctionDef(
            id=f"{self.id}.on-failure",
            triggers=(
                Trigger("streams/function.failed", if_=f"event.data.function_id == {json.dumps(self.id)}"),
            ),
            fn=self.on_failure,
            retries=self.retries,
            is_async=_is_coroutine_callable(self.on_failure),
        )

    @property
    def trigger_events(self) -> tuple[str, ...]:
        """The names of the triggering events, in declaration order."""
        return tuple(trigger.event for trigger in self.triggers)


def define_function(
    fn: Callable[..., Any],
    *,
    id: str,
    trigger: str | Trigger | Iterable[str | Trigger],
    retries: int = DEFAULT_RETRIES,
    idempotency: str | None = None,
    on_failure: Callable[..., Any] | None = None,
    cancel_on: Iterable[CancelOn] | CancelOn = (),
    waits: Iterable[Wait] | Wait = (),
) -> FunctionDef:
    """Validates the options of ``@app.function(...)`` and builds the :class:`FunctionDef`.

    Args:
        fn: ``async def f(event, step)`` or ``def f(event, step)``.
        id: Function id matching :data:`FUNCTION_ID_RE`.
        trigger: One event name, a :class:`Trigger`, or a list of them.
        retries: Retries per step, 0 to 20.
        idempotency: CEL key expression over ``event``, or ``None``.
        on_failure: ``(event, step)`` callable run when a run fails for good, or ``None``.
        cancel_on: :class:`CancelOn` rules.
        waits: :class:`Wait` declarations for the correlation index.

    Returns:
        The function definition.

    Raises:
        UsageError: An option is invalid; the message names it and what is allowed.
    """
    if not isinstance(id, str) or not FUNCTION_ID_RE.match(id):
        raise UsageError(
            f"function id {id!r}: must be 1 to 128 characters, start with a letter or digit and contain "
            "only letters, digits, '.', '_' or '-'"
        )
    where = f"function {id!r}"
    is_async = _check_handler(fn, f"{where}: the function")
    if on_failure is not None:
        _check_handler(on_failure, f"{where}: on_failure")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise UsageError(f"{where}: retries must be an integer from 0 to {MAX_RETRIES}, got {retries!r}")
    if idempotency is not None:
        validate_expression(idempotency, f"{where} idempotency")
    return FunctionDef(
        id=id,
        triggers=_triggers(trigger, where),
        fn=fn,
        retries=retries,
        idempotency=idempotency,
        on_failure=on_failure,
        cancel_on=_items(cancel_on, CancelOn, f"{where} cancel_on"),
        waits=_items(waits, Wait, f"{where} waits"),
        is_async=is_async,
    )


def _triggers(trigger: str | Trigger | Iterable[str | Trigger], where: str) -> tuple[Trigger, ...]:
    raw: list[str | Trigger] = [trigger] if isinstance(trigger, str | Trigger) else list(trigger)
    if not raw:
        raise UsageError(f"{where}: needs at least one trigger event")
    out: list[Trigger] = []
    for item in raw:
        if isinstance(item, str):
            item = Trigger(event=validate_event_name(item, f"{where} trigger"))
        elif not isinstance(item, Trigger):
            raise UsageError(f"{where}: a trigger must be an event name or a Trigger, got {item!r:.80}")
        if item in out:
            raise UsageError(f"{where}: trigger {item.event!r} is listed twice")
        out.append(item)
    return tuple(out)


def _items(items: Iterable[_T] | _T, kind: type[_T], where: str) -> tuple[_T, ...]:
    seq = [items] if isinstance(items, kind) else list(items)  # type: ignore[arg-type]
    for item in seq:
        if not isinstance(item, kind):
            raise UsageError(f"{where}: expected {kind.__name__} objects, got {item!r:.80}")
    return tuple(seq)


def _check_handler(fn: object, what: str) -> bool:
    """Checks ``fn`` can be called as ``fn(event, step)``; returns whether it is a coroutine function."""
    if not callable(fn):
        raise UsageError(f"{what} must be callable, got {type(fn).__name__}")
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise UsageError(f"{what} must be a plain or async function, not a generator")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None  # Builtins without a signature: trust them.
    if signature is not None:
        try:
            signature.bind(None, None)
        except TypeError:
            raise UsageError(
                f"{what} must accept two positional arguments (event, step); its signature is {signature}"
            ) from None
    return _is_coroutine_callable(fn)


def _is_coroutine_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # Callable objects with an ``async def __call__``.
    call = getattr(type(fn), "__call__", None)  # noqa: B004
    return not inspect.isfunction(fn) and call is not None and inspect.iscoroutinefunction(call)
