"""Step tools: ``Step`` for ``async def`` functions and ``SyncStep`` for plain ``def`` functions.

Both share one core, :class:`_StepTools`: it validates arguments, builds the step request, and decodes
the memoized output the runtime returns. The two public classes differ only in how they hand the request
to the runtime (``await runtime.step(...)`` or ``runtime.step_sync(...)``), so each public method is a
two-line facade. Parallel discovery (``asyncio.gather`` of several steps) needs the async ``Step``; a
``SyncStep`` ends the pass at its first unmemoized step.

Memoized outputs are JSON text. Their shapes, which the engine writes and :class:`_StepTools` reads:

=================  ==============================================================
kind / mode        output
=================  ==============================================================
run                the callable's return value
sleep              ``null``
send               ``["<event id>", ...]``
wait, ONE          ``null`` (timeout) or the event object
wait, ANY          ``null`` or ``{"index": i, "event": {...}}``
wait, ALL          ``null`` or ``[{...}, ...]`` in the order of the waits
=================  ==============================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, ParamSpec, TypeVar, cast, overload

from streams._context import (
    RunStep,
    SendStep,
    SleepStep,
    StepRequest,
    WaitMode,
    WaitStep,
    current_runtime,
)
from streams._duration import DeadlineLike, DurationLike, resolve_deadline
from streams._event import Event
from streams._function import Wait
from streams.errors import DurationError, UsageError

#: Most steps one run may reach (its ids after ``:N`` suffixes).
MAX_STEPS_PER_RUN = 1000
#: Largest memoized step output: 4 MiB of UTF-8 JSON.
MAX_STEP_OUTPUT_BYTES = 4 * 1024 * 1024
#: Longest step id a user may write.
MAX_STEP_ID_CHARS = 256

P = ParamSpec("P")
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# Step ids
# ----------------------------------------------------------------------------------------------------------


def validate_step_id(step_id: object, tool: str) -> str:
    """Checks a user's step id: a non-blank printable string of at most 256 characters."""
    if not isinstance(step_id, str):
        raise UsageError(f"{tool}: the step id must be a string, got {type(step_id).__name__}")
    if not step_id or step_id.isspace() or not step_id.isprintable() or len(step_id) > MAX_STEP_ID_CHARS:
        raise UsageError(
            f"{tool}: the step id must be 1 to {MAX_STEP_ID_CHARS} printable characters, got {step_id!r:.80}"
        )
    return step_id


class StepIdAllocator:
    """Gives each step reached in a run its unique id, and enforces the steps-per-run limit.

    The first use of an id keeps it; later uses in the same run get ``id:1``, ``id:2``, ... in call
    order. An explicit id that collides with a generated one is itself treated as a repeat
    (``"a:1"`` written after the second ``"a"`` becomes ``"a:1:1"``), so ids never collide.
    """

    def __init__(self, max_steps: int = MAX_STEPS_PER_RUN) -> None:
        self._max_steps = max_steps
        self._next: dict[str, int] = {}
        self._used: set[str] = set()

    def allocate(self, step_id: str) -> str:
        """Returns the unique id for the next use of ``step_id``.

        Raises:
            UsageError: The run would exceed the steps-per-run limit.
        """
        if len(self._used) >= self._max_steps:
            raise UsageError(
                f"step {step_id!r} would be step {len(self._used) + 1} of this run; a run may have at most "
                f"{self._max_steps} steps (split the work across runs, e.g. with step.send_event)"
            )
        n = self._next.get(step_id, 0)
        candidate = step_id if n == 0 else f"{step_id}:{n}"
        while candidate in self._used:
            n += 1
            candidate = f"{step_id}:{n}"
        self._next[step_id] = n + 1
        self._used.add(candidate)
        return candidate

    def __len__(self) -> int:
        return len(self._used)


# ----------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def encode_json_output(value: Any, what: str, *, max_bytes: int = MAX_STEP_OUTPUT_BYTES) -> str:
    """Encodes a memoized value (a step's or a function's output) as JSON text.

    JSON rules apply: tuples become lists and ``int`` dict keys become strings, and the function always
    receives the decoded value, so it sees the same value on every pass.

    Args:
        value: The value.
        what: Names it in errors, e.g. ``"output of step 'fetch'"``.
        max_bytes: Size limit of the UTF-8 text.

    Returns:
        Compact JSON text.

    Raises:
        UsageError: The value is not JSON-serializable or its JSON is larger than ``max_bytes``.
    """
    try:
        text = _encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        where = _find_non_json(value)
        raise UsageError(
            f"{what} is not a JSON value{f' at {where}' if where else ''}: {exc}; return only dicts with "
            "str keys, lists, str, int, finite float, bool or None"
        ) from None
    # A character is 1 to 4 bytes of UTF-8: encode only when the text might be over the limit.
    size = len(text.encode("utf-8")) if len(text) * 4 > max_bytes else len(text)
    if size > max_bytes:
        raise UsageError(
            f"{what} is {size} bytes of JSON, over the limit of {max_bytes} bytes "
            f"({max_bytes / 1048576:g} MiB); store large data elsewhere and return a reference"
        )
    return text


def encode_step_output(step_id: str, value: Any, *, max_bytes: int = MAX_STEP_OUTPUT_BYTES) -> str:
    """Encodes a step's return value for memoization.

    Raises:
        UsageError: Naming the step, when the value is not JSON or its JSON is over ``max_bytes``
            (4 MiB by default).
    """
    return encode_json_output(value, f"output of step {step_id!r}", max_bytes=max_bytes)


def encode_send_output(event_ids: Sequence[str]) -> str:
    """The memoized output of a ``send_event`` step: the ids of the sent events."""
    return _encode(list(event_ids))


def encode_wait_output(mode: WaitMode, result: Event | tuple[int, Event] | Sequence[Event] | None) -> str:
    """The memoized output of a wait step.

    Args:
        mode: The wait's mode.
        result: ``None`` on timeout; else an event (``ONE``), ``(index, event)`` (``ANY``), or the events
            in the order of the waits (``ALL``).
    """
    if result is None:
        return "null"
    if mode is WaitMode.ONE and isinstance(result, Event):
        return _encode(result.to_dict())
    if mode is WaitMode.ANY and isinstance(result, tuple):
        index, event = result
        return _encode({"index": index, "event": event.to_dict()})
    if mode is WaitMode.ALL and isinstance(result, Sequence) and not isinstance(result, tuple):
        return _encode([event.to_dict() for event in result])
    raise TypeError(f"wait output for mode {mode.value!r} cannot be {result!r:.80}")


def _find_non_json(value: Any) -> str | None:
    """Returns the JSON path of the first value that JSON cannot hold, for error messages."""
    stack: list[tuple[Any, str]] = [(value, "$")]
    seen: set[int] = set()
    while stack:
        item, path = stack.pop()
        if isinstance(item, str | bool | int) or item is None:
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return path
            continue
        if id(item) in seen:
            return path  # circular
        seen.add(id(item))
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                if not isinstance(key, str | int | float | bool) and key is not None:
                    return f"{path} (key {key!r})"
                stack.append((child, f"{path}.{key}"))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
        else:
            return f"{path} ({type(item).__name__})"
    return None


# ----------------------------------------------------------------------------------------------------------
# The shared core
# ----------------------------------------------------------------------------------------------------------


class _StepTools:
    """Argument validation, request building and output decoding shared by ``Step`` and ``SyncStep``."""

    __slots__ = ()

    @staticmethod
    def _run_request(
        step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> RunStep:
        validate_step_id(step_id, "step.run")
        if not callable(fn):
            raise UsageError(f"step.run({step_id!r}): expected a callable, got {type(fn).__name__}")
        return RunStep(step_id=step_id, fn=fn, args=args, kwargs=kwargs)

    @staticmethod
    def _sleep_request(step_id: str, duration: DurationLike, now_ms: int) -> SleepStep:
        validate_step_id(step_id, "step.sleep")
        if isinstance(duration, datetime):
            raise DurationError(
                f"step.sleep({step_id!r}): got a datetime; use step.sleep_until for a point in time"
            )
        until = resolve_deadline(duration, now_ms, what=f"step.sleep({step_id!r}) duration", allow_zero=True)
        return SleepStep(step_id=step_id, until_ms=until)

    @staticmethod
    def _sleep_until_request(step_id: str, when: datetime, now_ms: int) -> SleepStep:
        validate_step_id(step_id, "step.sleep_until")
        what = f"step.sleep_until({step_id!r})"
        if not isinstance(when, datetime):
            raise DurationError(f"{what}: expected a timezone-aware datetime, got {type(when).__name__}")
        until = resolve_deadline(when, now_ms, what=what)
        return SleepStep(step_id=step_id, until_ms=until)

    @staticmethod
    def _send_request(step_id: str, events: Event | Sequence[Event]) -> SendStep:
        validate_step_id(step_id, "step.send_event")
        batch = (events,) if isinstance(events, Event) else tuple(events)
        if not batch:
            raise UsageError(f"step.send_event({step_id!r}): needs at least one event")
        for item in batch:
            if not isinstance(item, Event):
                raise UsageError(f"step.send_event({step_id!r}): expected Event objects, got {item!r:.80}")
        return SendStep(step_id=step_id, events=batch)

    @staticmethod
    def _wait_request(
        step_id: str, tool: str, waits: Sequence[Wait], timeout: DeadlineLike, mode: WaitMode, now_ms: int
    ) -> WaitStep:
        validate_step_id(step_id, tool)
        batch = tuple(waits)
        if not batch:
            raise UsageError(f"{tool}({step_id!r}): needs at least one Wait")
        for item in batch:
            if not isinstance(item, Wait):
                raise UsageError(f"{tool}({step_id!r}): expected Wait objects, got {item!r:.80}")
        deadline = resolve_deadline(timeout, now_ms, what=f"{tool}({step_id!r}) timeout")
        return WaitStep(step_id=step_id, waits=batch, deadline_ms=deadline, mode=mode)

    @staticmethod
    def _one_wait(
        step_id: str, event: str, match: str | None, if_: str | None, lookback: DurationLike | None
    ) -> tuple[Wait]:
        validate_step_id(step_id, "step.wait_for_event")
        return (Wait(event=event, match=match, if_=if_, lookback=lookback),)

    @staticmethod
    def _decode(request: StepRequest, text: str) -> Any:
        """Turns a memoized output back into what the step tool returns."""
        value = json.loads(text)
        if not isinstance(request, WaitStep) or value is None:
            return value
        if request.mode is WaitMode.ONE:
            return Event.from_dict(value)
        if request.mode is WaitMode.ANY:
            return int(value["index"]), Event.from_dict(value["event"])
        return [Event.from_dict(item) for item in value]


# ----------------------------------------------------------------------------------------------------------
# Public classes
# ----------------------------------------------------------------------------------------------------------


class Step(_StepTools):
    """The step tools of an ``async def`` function; its second argument.

    Each tool takes a step id, unique within the run by convention (repeats get ``:1``, ``:2``, ...).
    A step's result is memoized: when the function is replayed, a completed step returns its recorded
    result without running again. Steps awaited together (``asyncio.gather``) are started together.
    """

    __slots__ = ()

    @overload
    async def run(
        self, step_id: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...

    @overload
    async def run(self, step_id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` once, with retries, and returns its memoized JSON output.

        Args:
            step_id: The step id.
            fn: A sync or async callable. It must not call step tools. Its return value must be a JSON
                value of at most 4 MiB; it comes back decoded (tuples as lists).
            *args: Positional arguments for ``fn``.
            **kwargs: Keyword arguments for ``fn``.

        Returns:
            The output, decoded from JSON.

        Raises:
            StepError: ``fn`` failed on every attempt (or raised ``NonRetriableError``).
            UsageError: Invalid arguments, or called inside another step.
        """
        runtime = current_runtime("step.run", step_id)
        request = self._run_request(step_id, fn, args, kwargs)
        return self._decode(request, await runtime.step(request))

    async def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pauses the run for ``duration`` (``"30s"``, ``"1h30m"``, a ``timedelta``; at most 366 days).

        Raises:
            DurationError: The duration is invalid, negative or over 366 days.
        """
        runtime = current_runtime("step.sleep", step_id)
        await runtime.step(self._sleep_request(step_id, duration, runtime.now_ms))

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pauses the run until ``when``, a timezone-aware datetime at most 366 days away.

        Raises:
            DurationError: ``when`` is naive or too far away.
        """
        runtime = current_runtime("step.sleep_until", step_id)
        await runtime.step(self._sleep_until_request(step_id, when, runtime.now_ms))

    async def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Sends one or several events, once; returns their ids."""
        runtime = current_runtime("step.send_event", step_id)
        request = self._send_request(step_id, events)
        return cast(list[str], self._decode(request, await runtime.step(request)))

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: DeadlineLike,
        match: str | None = None,
        if_: str | None = None,
        lookback: DurationLike | None = None,
    ) -> Event | None:
        """Waits for an event; returns it, or ``None`` once ``timeout`` passes.

        Args:
            step_id: The step id.
            event: The awaited event's name.
            timeout: A duration or an aware datetime, at most 366 days away.
            match: Dotted path equal in the trigger and the awaited event, e.g. ``"data.cart_id"``.
            if_: CEL over ``event`` (the trigger) and ``async`` (the candidate); with ``match`` both hold.
            lookback: How far back before the wait starts an event may match (``0``: only new ones).

        Returns:
            The matching event, or ``None`` on timeout.
        """
        runtime = current_runtime("step.wait_for_event", step_id)
        waits = self._one_wait(step_id, event, match, if_, lookback)
        request = self._wait_request(
            step_id, "step.wait_for_event", waits, timeout, WaitMode.ONE, runtime.now_ms
        )
        return cast(Event | None, self._decode(request, await runtime.step(request)))

    async def wait_for_any(
        self, step_id: str, waits: Sequence[Wait], *, timeout: DeadlineLike
    ) -> tuple[int, Event] | None:
        """Waits for the first of several events; returns ``(index into waits, event)`` or ``None``."""
        runtime = current_runtime("step.wait_for_any", step_id)
        request = self._wait_request(
            step_id, "step.wait_for_any", waits, timeout, WaitMode.ANY, runtime.now_ms
        )
        return cast(tuple[int, Event] | None, self._decode(request, await runtime.step(request)))

    async def wait_for_all(
        self, step_id: str, waits: Sequence[Wait], *, timeout: DeadlineLike
    ) -> list[Event] | None:
        """Waits for every one of several events; returns them in the order of ``waits``, or ``None``.

        On timeout the events that did arrive are not returned.
        """
        runtime = current_runtime("step.wait_for_all", step_id)
        request = self._wait_request(
            step_id, "step.wait_for_all", waits, timeout, WaitMode.ALL, runtime.now_ms
        )
        return cast(list[Event] | None, self._decode(request, await runtime.step(request)))


class SyncStep(_StepTools):
    """The step tools of a plain ``def`` function: the same tools as :class:`Step`, without ``await``.

    A plain function cannot start steps in parallel: each unmemoized step ends the pass.
    """

    __slots__ = ()

    @overload
    def run(self, step_id: str, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def run(self, step_id: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def run(self, step_id: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` once, with retries, and returns its output; see :meth:`Step.run`."""
        runtime = current_runtime("step.run", step_id)
        request = self._run_request(step_id, fn, args, kwargs)
        return self._decode(request, runtime.step_sync(request))

    def sleep(self, step_id: str, duration: DurationLike) -> None:
        """Pauses the run for ``duration``; see :meth:`Step.sleep`."""
        runtime = current_runtime("step.sleep", step_id)
        runtime.step_sync(self._sleep_request(step_id, duration, runtime.now_ms))

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pauses the run until ``when``; see :meth:`Step.sleep_until`."""
        runtime = current_runtime("step.sleep_until", step_id)
        runtime.step_sync(self._sleep_until_request(step_id, when, runtime.now_ms))

    def send_event(self, step_id: str, events: Event | Sequence[Event]) -> list[str]:
        """Sends one or several events, once; returns their ids."""
        runtime = current_runtime("step.send_event", step_id)
        request = self._send_request(step_id, events)
        return cast(list[str], self._decode(request, runtime.step_sync(request)))

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: DeadlineLike,
        match: str | None = None,
        if_: str | None = None,
        lookback: DurationLike | None = None,
    ) -> Event | None:
        """Waits for an event; see :meth:`Step.wait_for_event`."""
        runtime = current_runtime("step.wait_for_event", step_id)
        waits = self._one_wait(step_id, event, match, if_, lookback)
        request = self._wait_request(
            step_id, "step.wait_for_event", waits, timeout, WaitMode.ONE, runtime.now_ms
        )
        return cast(Event | None, self._decode(request, runtime.step_sync(request)))

    def wait_for_any(
        self, step_id: str, waits: Sequence[Wait], *, timeout: DeadlineLike
    ) -> tuple[int, Event] | None:
        """Waits for the first of several events; see :meth:`Step.wait_for_any`."""
        runtime = current_runtime("step.wait_for_any", step_id)
        request = self._wait_request(
            step_id, "step.wait_for_any", waits, timeout, WaitMode.ANY, runtime.now_ms
        )
        return cast(tuple[int, Event] | None, self._decode(request, runtime.step_sync(request)))

    def wait_for_all(
        self, step_id: str, waits: Sequence[Wait], *, timeout: DeadlineLike
    ) -> list[Event] | None:
        """Waits for every one of several events; see :meth:`Step.wait_for_all`."""
        runtime = current_runtime("step.wait_for_all", step_id)
        request = self._wait_request(
            step_id, "step.wait_for_all", waits, timeout, WaitMode.ALL, runtime.now_ms
        )
        return cast(list[Event] | None, self._decode(request, runtime.step_sync(request)))
