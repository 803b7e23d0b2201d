"""Deterministic replay: one pass of a durable function over its memoized steps.

Responsibilities:

1. :func:`replay` runs the user's function from the top with a runtime that answers every step call
   from the run's memoized results (:class:`Memo`), so completed steps return at once.
2. It discovers every unmemoized step the function reaches, including steps awaited together
   (``asyncio.gather``), and ends the pass when the function can make no more progress.
3. It reports one :data:`PassResult`: :class:`Completed`, :class:`Failed` or :class:`Planned`.
4. :func:`execute_step` runs a planned ``step.run`` callable (off the processing loop) and maps its
   outcome to :class:`StepSucceeded` or :class:`StepFailed`; :func:`backoff_ms` spaces the retries.

How a pass ends (async functions)::

    Step 1  the function runs as a task on a private event loop, one loop iteration at a time
    Step 2  after each iteration: function done -> its result is the pass result
    Step 3  no ready callbacks and >= 1 step pending -> quiescent: every step that can be reached
            has been reached; the pending steps are the plan
    Step 4  the pending step futures fail with StepInterrupt (a BaseException, so the user's
            ``except Exception`` cannot swallow it); the loop runs until every task is done,
            leftovers are cancelled, exceptions are marked retrieved, the loop is closed

Plain ``def`` functions get a :class:`~streams._step.SyncStep` and run in the calling thread: the first
unmemoized step raises the interrupt at once, so they plan one step per pass.

The same function, trigger, memos and ``now_ms`` give the same plan: the engine must pass the time of
the record that caused the pass, not the wall clock, and must treat a planned step whose id is already
in flight as in flight (a pass plans every unmemoized step it reaches, including ones planned before).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Coroutine, Generator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeAlias, TypeVar

from streams._context import (
    RunStep,
    SendStep,
    SleepStep,
    StepKind,
    StepRequest,
    WaitMode,
    WaitStep,
    _Runtime,
    context_with_runtime,
    inside_step_run,
)
from streams._duration import resolve_deadline
from streams._event import Event
from streams._function import FunctionDef
from streams._step import (
    MAX_STEP_OUTPUT_BYTES,
    MAX_STEPS_PER_RUN,
    Step,
    StepIdAllocator,
    SyncStep,
    encode_json_output,
    encode_step_output,
)
from streams.errors import DurationError, NonRetriableError, RetryAfterError, StepError, UsageError

__all__ = [
    "DEFAULT_BACKOFF_BASE_MS",
    "DEFAULT_BACKOFF_CAP_MS",
    "Completed",
    "Failed",
    "Memo",
    "MemoStatus",
    "PassResult",
    "Planned",
    "PlannedStep",
    "RunStep",
    "SendStep",
    "SleepStep",
    "StepFailed",
    "StepInterrupt",
    "StepKind",
    "StepOutcome",
    "StepSucceeded",
    "WaitMode",
    "WaitStep",
    "backoff_ms",
    "describe_result",
    "describe_step",
    "execute_step",
    "replay",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: First retry delay ceiling; each retry doubles it (full jitter picks uniformly below it).
DEFAULT_BACKOFF_BASE_MS = 1000
#: Largest retry delay ceiling.
DEFAULT_BACKOFF_CAP_MS = 10 * 60 * 1000
#: How long a function body may await something other than a step before the pass fails.
DEFAULT_IDLE_TIMEOUT_S = 60.0
#: Longest stack trace kept in a :class:`StepFailed`.
_MAX_STACK_CHARS = 16 * 1024
#: Loop iterations allowed for the function's tasks to unwind after the interrupt (then cancel).
_SETTLE_ITERATIONS = 1000

#: A step reached in a pass and not memoized, with its unique id (``:N`` suffix applied).
PlannedStep: TypeAlias = StepRequest


class StepInterrupt(BaseException):
    """Ends a replay pass at an unmemoized step. User code must not catch it (it is not an ``Exception``).

    Attributes:
        step_id: The step whose request ended the pass.
    """

    def __init__(self, step_id: str) -> None:
        super().__init__(f"replay pass ended at step {step_id!r}")
        self.step_id = step_id


# ----------------------------------------------------------------------------------------------------------
# Memoized results
# ----------------------------------------------------------------------------------------------------------


class MemoStatus(StrEnum):
    """How a memoized step ended."""

    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Memo:
    """The recorded result of one step of a run.

    Attributes:
        kind: The step's kind when it ran; a different kind on replay means the code changed.
        status: ``COMPLETED`` (``output_json`` is set) or ``FAILED`` (``error_type``/``error_message``).
        output_json: The output as JSON text (shapes in ``streams._step``).
        error_type: Class name of the last error, for a failed step.
        error_message: Its message.
    """

    kind: StepKind
    status: MemoStatus
    output_json: str | None = None
    error_type: str | None = None
    error_message: str | None = None

    def __post_init__(self) -> None:
        # Plain strings ("run", "completed") are accepted and normalized to the enums.
        object.__setattr__(self, "kind", StepKind(self.kind))
        object.__setattr__(self, "status", MemoStatus(self.status))
        if self.status is MemoStatus.COMPLETED and self.output_json is None:
            raise ValueError("a completed memo needs output_json")
        if self.status is MemoStatus.FAILED and (self.error_type is None or self.error_message is None):
            raise ValueError("a failed memo needs error_type and error_message")

    @classmethod
    def completed(cls, kind: StepKind, output_json: str) -> Memo:
        """A completed step with its JSON output."""
        return cls(kind=kind, status=MemoStatus.COMPLETED, output_json=output_json)

    @classmethod
    def failed(cls, kind: StepKind, error_type: str, error_message: str) -> Memo:
        """A step that failed for good."""
        return cls(kind=kind, status=MemoStatus.FAILED, error_type=error_type, error_message=error_message)

    def to_dict(self) -> dict[str, Any]:
        """The memo as a JSON object (for stores and history)."""
        out: dict[str, Any] = {"kind": self.kind.value, "status": self.status.value}
        if self.status is MemoStatus.COMPLETED:
            out["output"] = self.output_json
        else:
            out["error_type"] = self.error_type
            out["error_message"] = self.error_message
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Memo:
        """Reads :meth:`to_dict`'s form back."""
        return cls(
            kind=StepKind(obj["kind"]),
            status=MemoStatus(obj["status"]),
            output_json=obj.get("output"),
            error_type=obj.get("error_type"),
            error_message=obj.get("error_message"),
        )


# ----------------------------------------------------------------------------------------------------------
# Pass results
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """The function returned.

    Attributes:
        output_json: Its return value as JSON text.
    """

    output_json: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The function raised (or broke a rule of the replay contract).

    Attributes:
        error_type: The exception's class name.
        message: Its message.
        retriable: ``False`` for ``NonRetriableError``, ``StepError`` (the step already used its retries),
            ``UsageError`` and rule violations; ``True`` otherwise.
        retry_at_ms: For ``RetryAfterError``: retry no earlier than this (ms since the Unix epoch).
    """

    error_type: str
    message: str
    retriable: bool
    retry_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Planned:
    """The function reached steps that are not memoized yet.

    Attributes:
        steps: Every unmemoized step reached in the pass, in request order (one for a ``SyncStep``).
    """

    steps: tuple[PlannedStep, ...]


#: The outcome of one pass.
PassResult: TypeAlias = Completed | Failed | Planned


# ----------------------------------------------------------------------------------------------------------
# The runtime and the pass driver
# ----------------------------------------------------------------------------------------------------------


class _ReplayLoop(asyncio.SelectorEventLoop):
    """A private event loop that remembers its tasks and can run one iteration at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[asyncio.Task[Any]] = []

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[_T]:
        task = super().create_task(coro, name=name, context=context)
        self.tasks.append(task)
        return task

    def has_ready(self) -> bool:
        """Whether callbacks are ready to run: the only way to see quiescence; CPython keeps them here."""
        return bool(self._ready)  # type: ignore[attr-defined]

    def run_once(self) -> None:
        """Runs the callbacks that are ready now (not the ones they schedule), without blocking."""
        self.call_soon(self.stop)
        self.run_forever()


class _ReplayRuntime(_Runtime):
    """Answers step calls from memos; records unmemoized ones as the plan."""

    def __init__(self, memos: Mapping[str, Memo], now_ms: int, max_steps: int) -> None:
        self._memos = memos
        self._now_ms = now_ms
        self._ids = StepIdAllocator(max_steps)
        self.planned: list[PlannedStep] = []
        self.pending: list[tuple[str, asyncio.Future[str]]] = []
        self.fatal: UsageError | None = None
        self.ended = False
        self.loop: _ReplayLoop | None = None
        self.progress: asyncio.Future[None] | None = None
        self.idle_timed_out = False

    @property
    def now_ms(self) -> int:
        return self._now_ms

    def _resolve(self, request: StepRequest) -> tuple[str, str | None]:
        """Returns ``(unique id, memoized output or None)``; raises for memoized failures and rule breaks."""
        if self.ended or self.fatal is not None:
            # The pass is over (or failing): nothing the function does from here on counts.
            raise StepInterrupt(request.step_id)
        try:
            step_id = self._ids.allocate(request.step_id)
            memo = self._memos.get(step_id)
            if memo is not None and memo.kind is not request.kind:
                raise UsageError(
                    f"non-deterministic function: step {step_id!r} ran as a {memo.kind.value!r} step but is "
                    f"now reached as a {request.kind.value!r} step; a function must reach the same steps in "
                    "the same order on every replay (give changed steps new ids)"
                )
        except UsageError as err:
            self._fail(err)
            raise
        if memo is None:
            self.planned.append(replace(request, step_id=step_id))
            return step_id, None
        if memo.status is MemoStatus.FAILED:
            raise StepError(step_id, memo.error_type or "Error", memo.error_message or "")
        assert memo.output_json is not None
        return step_id, memo.output_json

    def _fail(self, err: UsageError) -> None:
        self.fatal = err
        self.notify()

    def notify(self) -> None:
        if self.progress is not None and not self.progress.done():
            self.progress.set_result(None)

    def on_main_done(self, _: asyncio.Task[Any]) -> None:
        self.notify()

    async def step(self, request: StepRequest) -> str:
        step_id, output = self._resolve(request)
        if output is not None:
            return output
        if self.loop is None:
            raise UsageError(
                f"step {step_id!r}: the async Step works only in an async def function; a plain def "
                "function gets a SyncStep"
            )
        future: asyncio.Future[str] = self.loop.create_future()
        self.pending.append((step_id, future))
        self.notify()
        return await future

    def step_sync(self, request: StepRequest) -> str:
        step_id, output = self._resolve(request)
        if output is None:
            self.ended = True
            raise StepInterrupt(step_id)
        return output

    def end_pass(self) -> None:
        """Fails every pending step with the interrupt; later step calls are interrupted at once."""
        self.ended = True
        for step_id, future in self.pending:
            if not future.done():
                future.set_exception(StepInterrupt(step_id))


def replay(
    function: FunctionDef,
    event: Event,
    memos: Mapping[str, Memo],
    now_ms: int,
    *,
    max_steps: int = MAX_STEPS_PER_RUN,
    max_output_bytes: int = MAX_STEP_OUTPUT_BYTES,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
) -> PassResult:
    """Runs one replay pass of ``function`` for the run triggered by ``event``.

    Blocks until the pass ends; call it from a thread without a running event loop
    (``asyncio.to_thread``). It never runs a ``step.run`` callable (see :func:`execute_step`).

    Args:
        function: The function definition (``function.fn`` is called as ``fn(event, step)``).
        event: The run's trigger event.
        memos: Memoized results by unique step id.
        now_ms: The pass's clock (the time of the record that caused it); relative sleeps and timeouts
            are resolved against it.
        max_steps: Steps-per-run limit.
        max_output_bytes: Limit of the function's JSON output.
        idle_timeout_s: How long the function body may await something other than a step.

    Returns:
        ``Completed``, ``Failed`` or ``Planned``.

    Raises:
        RuntimeError: Called from a thread whose event loop is running.
    """
    _raise_if_loop_running("replay()")
    runtime = _ReplayRuntime(memos, now_ms, max_steps)
    what = f"output of function {function.id!r}"
    if not function.is_async:
        return _drive_sync(function, event, runtime, what, max_output_bytes)
    return _drive_async(function, event, runtime, what, max_output_bytes, idle_timeout_s)


def _drive_sync(
    function: FunctionDef, event: Event, runtime: _ReplayRuntime, what: str, max_output_bytes: int
) -> PassResult:
    ctx = context_with_runtime(runtime)
    value: Any = None
    error: Exception | None = None
    try:
        value = ctx.run(function.fn, event, SyncStep())
    except StepInterrupt:
        pass
    except Exception as exc:
        error = exc
    if inspect.iscoroutine(value):
        value.close()
        error = UsageError(
            f"function {function.id!r} is a plain def but returned a coroutine; declare it with async def"
        )
    if runtime.fatal is not None:
        return _failed(runtime.fatal, runtime.now_ms)
    if runtime.ended:
        return Planned(tuple(runtime.planned))
    if error is not None:
        return _failed(error, runtime.now_ms)
    return _completed(value, what, max_output_bytes)


async def _invoke(function: FunctionDef, event: Event) -> Any:
    result = function.fn(event, Step())
    if inspect.isawaitable(result):
        result = await result
    return result


def _drive_async(
    function: FunctionDef,
    event: Event,
    runtime: _ReplayRuntime,
    what: str,
    max_output_bytes: int,
    idle_timeout_s: float,
) -> PassResult:
    loop = _ReplayLoop()
    loop.set_exception_handler(_log_loop_error)
    runtime.loop = loop
    try:
        # Step 1
        main = loop.create_task(_invoke(function, event), context=context_with_runtime(runtime))
        _run_until_quiescent(loop, main, runtime, idle_timeout_s)
        finished = main.done()
        # Step 4
        runtime.end_pass()
        _settle(loop, runtime)
        # Step 2 / Step 3
        if runtime.fatal is not None:
            return _failed(runtime.fatal, runtime.now_ms)
        if finished:
            return _task_result(main, runtime.now_ms, what, max_output_bytes)
        if runtime.planned:
            return Planned(tuple(runtime.planned))
        if runtime.idle_timed_out:
            return Failed(
                "TimeoutError",
                f"function {function.id!r} awaited something other than a step for more than "
                f"{idle_timeout_s:g} s; do I/O inside step.run",
                retriable=True,
            )
        return _task_result(main, runtime.now_ms, what, max_output_bytes)
    finally:
        _close(loop)


def _run_until_quiescent(
    loop: _ReplayLoop, main: asyncio.Task[Any], runtime: _ReplayRuntime, idle_timeout_s: float
) -> None:
    """Runs the loop until the function is done, fails a rule, is quiescent, or idles too long."""
    while True:
        loop.run_once()
        if main.done() or runtime.fatal is not None:
            return
        if loop.has_ready():
            continue
        if runtime.pending:
            return
        # Nothing ready and no step pending: the body awaits a timer, I/O or a thread. Block until the
        # function finishes or reaches a step, for at most idle_timeout_s.
        progress: asyncio.Future[None] = loop.create_future()
        runtime.progress = progress

        def on_idle_timeout() -> None:
            runtime.idle_timed_out = True
            runtime.notify()

        timer = loop.call_later(idle_timeout_s, on_idle_timeout)
        main.add_done_callback(runtime.on_main_done)
        try:
            loop.run_until_complete(progress)
        finally:
            timer.cancel()
            main.remove_done_callback(runtime.on_main_done)
            runtime.progress = None
        if runtime.idle_timed_out:
            return


def _settle(loop: _ReplayLoop, runtime: _ReplayRuntime) -> None:
    """Lets every task of the pass unwind, cancels stragglers, and marks their exceptions retrieved."""
    for cancel in (False, True):
        if cancel:
            for task in loop.tasks:
                task.cancel()
        for _ in range(_SETTLE_ITERATIONS):
            if all(task.done() for task in loop.tasks):
                break
            if not loop.has_ready() and not cancel:
                break
            loop.run_once()
        if all(task.done() for task in loop.tasks):
            break
    for future in [*loop.tasks, *(future for _, future in runtime.pending)]:
        if future.done() and not future.cancelled():
            future.exception()  # Marks it retrieved: no "exception was never retrieved" log.


def _close(loop: _ReplayLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    logger.warning("replay loop: %s", context.get("message"), exc_info=context.get("exception"))


def _task_result(task: asyncio.Task[Any], now_ms: int, what: str, max_output_bytes: int) -> PassResult:
    if task.cancelled():
        return Failed("CancelledError", "the function's task was cancelled", retriable=False)
    error = task.exception()
    if error is not None:
        return _failed(error, now_ms)
    return _completed(task.result(), what, max_output_bytes)


def _completed(value: Any, what: str, max_output_bytes: int) -> PassResult:
    try:
        return Completed(encode_json_output(value, what, max_bytes=max_output_bytes))
    except UsageError as err:
        return Failed(type(err).__name__, str(err), retriable=False)


def _failed(error: BaseException, now_ms: int) -> Failed:
    retry_at_ms: int | None = None
    if isinstance(error, RetryAfterError):
        retry_at_ms = _retry_at(error, now_ms)
    return Failed(
        type(error).__name__,
        str(error),
        retriable=isinstance(error, Exception) and _is_retriable(error),
        retry_at_ms=retry_at_ms,
    )


def _is_retriable(error: Exception) -> bool:
    return not isinstance(error, NonRetriableError | StepError | UsageError)


def _retry_at(error: RetryAfterError, now_ms: int) -> int | None:
    try:
        return resolve_deadline(
            error.retry_after, now_ms, what="RetryAfterError.retry_after", allow_zero=True
        )
    except DurationError:
        return None


def _raise_if_loop_running(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks and cannot run on an event loop's thread; use asyncio.to_thread")


# ----------------------------------------------------------------------------------------------------------
# Executing step.run
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepSucceeded:
    """A ``step.run`` attempt returned.

    Attributes:
        step_id: The step's unique id.
        output_json: Its output as JSON text, ready to memoize.
    """

    step_id: str
    output_json: str


@dataclass(frozen=True, slots=True)
class StepFailed:
    """A ``step.run`` attempt raised.

    Attributes:
        step_id: The step's unique id.
        error_type: The exception's class name.
        message: Its message.
        retriable: ``False`` for ``NonRetriableError`` and usage errors (bad output, nested steps): the
            step fails for good at once. ``True``: retry if attempts remain.
        retry_at_ms: For ``RetryAfterError``: retry no earlier than this; else ``None`` (use
            :func:`backoff_ms`).
        stack: The formatted traceback (at most 16 KiB, most recent frames kept), for history.
    """

    step_id: str
    error_type: str
    message: str
    retriable: bool
    retry_at_ms: int | None = None
    stack: str | None = None


#: The outcome of one attempt of a ``step.run``.
StepOutcome: TypeAlias = StepSucceeded | StepFailed


def execute_step(
    step: RunStep, *, now_ms: int | None = None, max_output_bytes: int = MAX_STEP_OUTPUT_BYTES
) -> StepOutcome:
    """Runs one attempt of a planned ``step.run``: calls the callable and encodes its output.

    Sync callables run inline (call this from a worker thread); async callables, and sync ones that
    return an awaitable, run to completion on a fresh event loop in this thread. Step tools called
    inside raise ``UsageError``.

    Args:
        step: The planned step.
        now_ms: The clock for ``RetryAfterError`` with a relative delay; defaults to the wall clock.
        max_output_bytes: Limit of the JSON output (4 MiB by default).

    Returns:
        ``StepSucceeded`` with the output JSON, or ``StepFailed``.

    Raises:
        RuntimeError: Called from a thread whose event loop is running.
    """
    _raise_if_loop_running("execute_step()")
    try:
        with inside_step_run(step.step_id):
            value = step.fn(*step.args, **step.kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run(_await(value))
    except (Exception, asyncio.CancelledError) as exc:
        return _step_failed(step.step_id, exc, time.time_ns() // 1_000_000 if now_ms is None else now_ms)
    try:
        return StepSucceeded(
            step.step_id, encode_step_output(step.step_id, value, max_bytes=max_output_bytes)
        )
    except UsageError as err:
        return StepFailed(step.step_id, type(err).__name__, str(err), retriable=False)


async def _await(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


def _step_failed(step_id: str, exc: BaseException, now_ms: int) -> StepFailed:
    stack = "".join(traceback.format_exception(exc))[-_MAX_STACK_CHARS:]
    retry_at_ms = _retry_at(exc, now_ms) if isinstance(exc, RetryAfterError) else None
    return StepFailed(
        step_id,
        type(exc).__name__,
        str(exc),
        retriable=not isinstance(exc, NonRetriableError | UsageError),
        retry_at_ms=retry_at_ms,
        stack=stack,
    )


def backoff_ms(
    attempt: int,
    *,
    base_ms: int = DEFAULT_BACKOFF_BASE_MS,
    cap_ms: int = DEFAULT_BACKOFF_CAP_MS,
    rng: random.Random | None = None,
) -> int:
    """Delay before the next attempt: exponential with full jitter.

    Uniform in ``[0, min(cap_ms, base_ms * 2 ** (attempt - 1))]``. The engine passes ``base_ms`` and
    ``cap_ms`` from its configuration, so tests can shrink retries to milliseconds.

    Args:
        attempt: The number of the attempt that just failed, from 1.
        base_ms: Ceiling after the first failure.
        cap_ms: Largest ceiling.
        rng: Random source (``random`` module's by default).

    Returns:
        The delay in milliseconds.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    ceiling = min(cap_ms, base_ms << min(attempt - 1, 62))
    return (rng or random).randint(0, max(ceiling, 0))


# ----------------------------------------------------------------------------------------------------------
# JSON descriptions (history, logs, golden tests)
# ----------------------------------------------------------------------------------------------------------


def describe_step(step: PlannedStep) -> dict[str, Any]:
    """A JSON object describing a planned step; ``run`` arguments that are not JSON appear as ``repr``."""
    out: dict[str, Any] = {"kind": step.kind.value, "step_id": step.step_id}
    if isinstance(step, RunStep):
        out["fn"] = getattr(step.fn, "__qualname__", repr(step.fn))
        out["args"] = [_jsonish(arg) for arg in step.args]
        out["kwargs"] = {key: _jsonish(value) for key, value in step.kwargs.items()}
    elif isinstance(step, SleepStep):
        out["until_ms"] = step.until_ms
    elif isinstance(step, SendStep):
        out["events"] = [event.to_dict() for event in step.events]
    else:
        out["mode"] = step.mode.value
        out["deadline_ms"] = step.deadline_ms
        out["waits"] = [
            {"event": wait.event, "match": wait.match, "if": wait.if_, "lookback_ms": wait.lookback_ms}
            for wait in step.waits
        ]
    return out


def describe_result(result: PassResult) -> dict[str, Any]:
    """A JSON object describing a pass result."""
    if isinstance(result, Completed):
        return {"result": "completed", "output": json.loads(result.output_json)}
    if isinstance(result, Failed):
        return {
            "result": "failed",
            "error_type": result.error_type,
            "message": result.message,
            "retriable": result.retriable,
            "retry_at_ms": result.retry_at_ms,
        }
    return {"result": "planned", "steps": [describe_step(step) for step in result.steps]}


def _jsonish(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError):
        return repr(value)
