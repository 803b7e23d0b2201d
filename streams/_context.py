"""The seam between step tools and the engine: step requests, the ``_Runtime`` ABC and its context var.

``Step`` and ``SyncStep`` (in ``streams._step``) validate their arguments, build one of the request
records below and hand it to the current :class:`_Runtime`, found through a context variable. The engine
(``processors.replay``) implements the runtime: it looks the step up in the run's memoized results and
either returns the memoized output or records the request as a planned step and ends the pass. This
module imports nothing from ``processors``.

A second context variable marks code running *inside* a ``step.run`` callable, where step tools are
forbidden: a step's body is one unit of retry and memoization and cannot contain steps itself.
"""

from __future__ import annotations

import contextvars
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from streams._event import Event
from streams._function import Wait
from streams.errors import UsageError


class StepKind(StrEnum):
    """What a step does; memoized results record it so a changed function is detected."""

    RUN = "run"
    SLEEP = "sleep"
    SEND = "send"
    WAIT = "wait"


class WaitMode(StrEnum):
    """How a wait step resolves: on its one event, the first of several, or all of several."""

    ONE = "one"
    ANY = "any"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class RunStep:
    """``step.run``: call ``fn(*args, **kwargs)`` once (with retries) and memoize its JSON output.

    Attributes:
        step_id: The step id (as written by the user in a request; with its ``:N`` suffix once planned).
        fn: The callable, sync or async.
        args: Positional arguments for ``fn``.
        kwargs: Keyword arguments for ``fn``.
    """

    kind: ClassVar[StepKind] = StepKind.RUN
    step_id: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SleepStep:
    """``step.sleep``/``step.sleep_until``: resume the run at ``until_ms``.

    Attributes:
        step_id: The step id.
        until_ms: When to resume, in milliseconds since the Unix epoch (may be in the past: due at once).
    """

    kind: ClassVar[StepKind] = StepKind.SLEEP
    step_id: str
    until_ms: int


@dataclass(frozen=True, slots=True)
class SendStep:
    """``step.send_event``: produce ``events`` once; the memoized output is the list of their ids.

    Attributes:
        step_id: The step id.
        events: The events to send, at least one.
    """

    kind: ClassVar[StepKind] = StepKind.SEND
    step_id: str
    events: tuple[Event, ...]


@dataclass(frozen=True, slots=True)
class WaitStep:
    """``step.wait_for_event``/``wait_for_any``/``wait_for_all``: wait for events or the deadline.

    Attributes:
        step_id: The step id.
        waits: The awaited events (one for ``ONE``).
        deadline_ms: When the wait times out (resolves with ``None``), ms since the Unix epoch.
        mode: ``ONE``, ``ANY`` (first of the waits) or ``ALL`` (every wait).
    """

    kind: ClassVar[StepKind] = StepKind.WAIT
    step_id: str
    waits: tuple[Wait, ...]
    deadline_ms: int
    mode: WaitMode = WaitMode.ONE


#: Any step request; once the runtime has given it its unique id, a planned step.
StepRequest = RunStep | SleepStep | SendStep | WaitStep


class _Runtime(ABC):
    """What step tools call. The engine implements it; users never see it.

    Both methods take a request whose ``step_id`` is the user's id and return the memoized output as
    JSON text. They raise :class:`~streams.errors.StepError` for a memoized failure and a
    ``BaseException`` interrupt to end the pass at an unmemoized step.
    """

    @property
    @abstractmethod
    def now_ms(self) -> int:
        """The pass's clock, in ms since the Unix epoch; relative durations start from it."""

    @abstractmethod
    async def step(self, request: StepRequest) -> str:
        """Resolves a step for the async ``Step``; unmemoized steps suspend until the pass ends."""

    @abstractmethod
    def step_sync(self, request: StepRequest) -> str:
        """Resolves a step for ``SyncStep``; an unmemoized step raises the interrupt at once."""


_current_runtime: contextvars.ContextVar[_Runtime | None] = contextvars.ContextVar(
    "streams_runtime", default=None
)
_current_step_run: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "streams_inside_step_run", default=None
)


def current_runtime(tool: str, step_id: str) -> _Runtime:
    """Returns the runtime of the run executing in this context.

    Args:
        tool: The step tool being called, for the error message (e.g. ``"step.sleep"``).
        step_id: The id it was called with.

    Raises:
        UsageError: Called inside a ``step.run`` callable, or outside any function run.
    """
    outer = _current_step_run.get()
    if outer is not None:
        raise UsageError(
            f"{tool}({step_id!r}) was called inside step.run({outer!r}); steps cannot be nested: return a "
            "value from the step and call the next step from the function body"
        )
    runtime = _current_runtime.get()
    if runtime is None:
        raise UsageError(
            f"{tool}({step_id!r}) was called outside a function run; step tools work only inside the "
            "function the engine is executing (and not in threads it starts)"
        )
    return runtime


def context_with_runtime(runtime: _Runtime) -> contextvars.Context:
    """Returns a copy of the current context in which ``runtime`` is the current runtime.

    The engine runs the user's function in it (``Context.run`` or ``create_task(..., context=...)``) so
    the runtime never leaks into the caller's context.
    """
    ctx = contextvars.copy_context()
    ctx.run(_current_runtime.set, runtime)
    ctx.run(_current_step_run.set, None)
    return ctx


@contextmanager
def inside_step_run(step_id: str) -> Iterator[None]:
    """Marks the enclosed code as the body of ``step.run(step_id)``: step tools raise ``UsageError``."""
    token = _current_step_run.set(step_id)
    try:
        yield
    finally:
        _current_step_run.reset(token)
