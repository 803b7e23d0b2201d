"""The replay driver's edge cases: parallel discovery, interrupts, limits, cleanup, determinism."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from processors.replay import (
    Completed,
    Failed,
    Memo,
    MemoStatus,
    Planned,
    RunStep,
    SleepStep,
    StepInterrupt,
    StepKind,
    WaitMode,
    WaitStep,
    describe_result,
    replay,
)
from streams._context import current_runtime
from streams._event import Event
from streams._function import FunctionDef, Wait, define_function
from streams._step import (
    MAX_STEPS_PER_RUN,
    Step,
    StepIdAllocator,
    SyncStep,
    encode_send_output,
    encode_wait_output,
)
from streams.errors import StepError, UsageError

NOW = 1_700_000_000_000
EVENT = Event(name="app/test", data={"k": "v"}, id="evt-1", ts=NOW)


def noop(*args: Any, **kwargs: Any) -> int:
    return 1


def fdef(fn: Any) -> FunctionDef:
    return define_function(fn, id="f", trigger="app/test")


def run_memo(value: Any = 1) -> Memo:
    return Memo.completed(StepKind.RUN, json.dumps(value))


def planned_ids(result: Any) -> list[str]:
    assert isinstance(result, Planned), result
    return [step.step_id for step in result.steps]


@pytest.fixture(autouse=True)
def no_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fails a test that leaves 'never retrieved'/'destroyed but pending' logs or warnings behind."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield
        gc.collect()
    noisy = [r for r in caplog.records if r.name in ("asyncio", "processors.replay") and r.levelno >= 30]
    assert not noisy, [r.getMessage() for r in noisy]


# -- parallel discovery ------------------------------------------------------------------------------------


def test_gather_discovers_every_branch_in_one_pass() -> None:
    async def fn(event: Event, step: Step) -> None:
        async def branch(i: int) -> None:
            await step.run(f"first-{i}", noop)
            await step.run(f"second-{i}", noop)

        await asyncio.gather(*(branch(i) for i in range(3)))

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert planned_ids(result) == ["first-0", "first-1", "first-2"]
    memos = {f"first-{i}": run_memo() for i in range(3)}
    assert planned_ids(replay(fdef(fn), EVENT, memos, NOW)) == ["second-0", "second-1", "second-2"]


def test_task_group_discovers_every_branch() -> None:
    async def fn(event: Event, step: Step) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(step.run("a", noop))
            group.create_task(step.sleep("b", "1s"))

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert planned_ids(result) == ["a", "b"]


def test_wait_for_and_asyncio_wait_around_steps() -> None:
    async def fn(event: Event, step: Step) -> None:
        await asyncio.wait_for(step.run("a", noop), timeout=10)
        tasks = [asyncio.ensure_future(step.run(x, noop)) for x in ("b", "c")]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await step.run("d", noop)

    assert planned_ids(replay(fdef(fn), EVENT, {}, NOW)) == ["a"]
    assert planned_ids(replay(fdef(fn), EVENT, {"a": run_memo()}, NOW)) == ["b", "c"]
    # b done: FIRST_COMPLETED returns; c is still pending and is planned again beside d.
    memos = {"a": run_memo(), "b": run_memo()}
    assert planned_ids(replay(fdef(fn), EVENT, memos, NOW)) == ["c", "d"]


def test_unawaited_task_does_not_block_completion() -> None:
    async def fn(event: Event, step: Step) -> str:
        asyncio.get_running_loop().create_task(step.run("orphan", noop))
        await asyncio.sleep(0)
        return "done"

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert result == Completed('"done"')


def test_body_awaiting_a_timer_still_reaches_its_steps() -> None:
    async def fn(event: Event, step: Step) -> None:
        await asyncio.sleep(0.01)
        await step.run("after-sleep", noop)

    assert planned_ids(replay(fdef(fn), EVENT, {}, NOW)) == ["after-sleep"]


def test_body_awaiting_forever_times_out() -> None:
    async def fn(event: Event, step: Step) -> None:
        await asyncio.get_running_loop().create_future()

    result = replay(fdef(fn), EVENT, {}, NOW, idle_timeout_s=0.05)
    assert isinstance(result, Failed)
    assert result.error_type == "TimeoutError" and result.retriable


# -- interrupts --------------------------------------------------------------------------------------------


def test_interrupt_is_not_an_exception() -> None:
    assert not issubclass(StepInterrupt, Exception)


def test_catching_base_exception_cannot_turn_a_plan_into_a_result() -> None:
    async def fn(event: Event, step: Step) -> str:
        try:
            await step.run("a", noop)
        except BaseException:
            await step.run("b", noop)  # interrupted at once: the pass is over
        return "finished"

    assert planned_ids(replay(fdef(fn), EVENT, {}, NOW)) == ["a"]


def test_sync_function_catching_base_exception() -> None:
    def fn(event: Event, step: SyncStep) -> str:
        with contextlib.suppress(BaseException):
            step.run("a", noop)
        step.run("b", noop)
        return "finished"

    assert planned_ids(replay(fdef(fn), EVENT, {}, NOW)) == ["a"]


def test_finally_blocks_run_on_interrupt() -> None:
    seen: list[str] = []

    async def fn(event: Event, step: Step) -> None:
        try:
            await step.run("a", noop)
        finally:
            seen.append("finally")

    replay(fdef(fn), EVENT, {}, NOW)
    assert seen == ["finally"]


def test_async_generator_in_body_is_closed() -> None:
    async def numbers(step: Step) -> Any:
        yield await step.run("a", noop)
        yield await step.run("b", noop)

    async def fn(event: Event, step: Step) -> None:
        async for _ in numbers(step):
            pass

    assert planned_ids(replay(fdef(fn), EVENT, {"a": run_memo()}, NOW)) == ["b"]


# -- memo decoding, errors ---------------------------------------------------------------------------------


def test_failed_memo_of_any_kind_raises_step_error() -> None:
    async def fn(event: Event, step: Step) -> str:
        try:
            await step.wait_for_event("w", event="app/x", timeout="1h")
        except StepError as err:
            return f"{err.step_id}:{err.error_type}:{err.error_message}"
        return "no"

    memos = {"w": Memo.failed(StepKind.WAIT, "ExpressionError", "bad if_")}
    assert replay(fdef(fn), EVENT, memos, NOW) == Completed('"w:ExpressionError:bad if_"')


def test_wait_outputs_round_trip() -> None:
    got = Event(name="a/b", data={"x": 1}, id="e1", ts=NOW)

    async def fn(event: Event, step: Step) -> list[Any]:
        one = await step.wait_for_event("one", event="a/b", timeout="1h")
        anyof = await step.wait_for_any("any", [Wait(event="a/b")], timeout="1h")
        allof = await step.wait_for_all("all", [Wait(event="a/b"), Wait(event="a/b")], timeout="1h")
        ids = await step.send_event("send", got)
        return [one == got, anyof == (0, got), allof == [got, got], ids]

    memos = {
        "one": Memo.completed(StepKind.WAIT, encode_wait_output(WaitMode.ONE, got)),
        "any": Memo.completed(StepKind.WAIT, encode_wait_output(WaitMode.ANY, (0, got))),
        "all": Memo.completed(StepKind.WAIT, encode_wait_output(WaitMode.ALL, [got, got])),
        "send": Memo.completed(StepKind.SEND, encode_send_output(["e1"])),
    }
    assert replay(fdef(fn), EVENT, memos, NOW) == Completed('[true,true,true,["e1"]]')
    assert encode_wait_output(WaitMode.ALL, None) == "null"
    with pytest.raises(TypeError):
        encode_wait_output(WaitMode.ANY, got)


def test_planned_wait_carries_the_deadline_and_mode() -> None:
    async def fn(event: Event, step: Step) -> None:
        await step.wait_for_all("w", [Wait(event="a/b", match="data.k")], timeout="2h")

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert isinstance(result, Planned)
    (step,) = result.steps
    assert isinstance(step, WaitStep)
    assert (step.mode, step.deadline_ms, step.waits[0].match) == (WaitMode.ALL, NOW + 7_200_000, "data.k")


def test_planned_run_keeps_callable_and_arguments() -> None:
    async def fn(event: Event, step: Step) -> None:
        await step.run("r", noop, 1, "x", key=[1])

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert isinstance(result, Planned)
    assert result.steps == (RunStep(step_id="r", fn=noop, args=(1, "x"), kwargs={"key": [1]}),)


def test_same_memos_same_plan() -> None:
    async def fn(event: Event, step: Step) -> None:
        await asyncio.gather(*(step.run("s", noop, i) for i in range(5)), step.sleep("z", "1m"))

    plans = [describe_result(replay(fdef(fn), EVENT, {"s:2": run_memo()}, NOW)) for _ in range(5)]
    assert all(plan == plans[0] for plan in plans)
    assert [s["step_id"] for s in plans[0]["steps"]] == ["s", "s:1", "s:3", "s:4", "z"]


# -- limits and rule breaks --------------------------------------------------------------------------------


def test_more_than_1000_steps_fails_the_run() -> None:
    async def fn(event: Event, step: Step) -> None:
        for _ in range(MAX_STEPS_PER_RUN + 1):
            with contextlib.suppress(UsageError):  # swallowing it changes nothing
                await step.run("s", noop)

    memos = {("s" if i == 0 else f"s:{i}"): run_memo() for i in range(MAX_STEPS_PER_RUN)}
    result = replay(fdef(fn), EVENT, memos, NOW)
    assert isinstance(result, Failed)
    assert (result.error_type, result.retriable) == ("UsageError", False)
    assert "at most 1000 steps" in result.message


def test_1000_steps_are_fine() -> None:
    def fn(event: Event, step: SyncStep) -> int:
        return sum(step.run("s", noop) for _ in range(MAX_STEPS_PER_RUN))

    memos = {("s" if i == 0 else f"s:{i}"): run_memo() for i in range(MAX_STEPS_PER_RUN)}
    assert replay(fdef(fn), EVENT, memos, NOW) == Completed("1000")


def test_step_limit_is_configurable() -> None:
    async def fn(event: Event, step: Step) -> None:
        await asyncio.gather(*(step.run("s", noop) for _ in range(3)))

    result = replay(fdef(fn), EVENT, {}, NOW, max_steps=2)
    assert isinstance(result, Failed) and "at most 2 steps" in result.message


def test_non_determinism_in_a_sync_function() -> None:
    def fn(event: Event, step: SyncStep) -> None:
        step.sleep("x", "1s")

    result = replay(fdef(fn), EVENT, {"x": run_memo()}, NOW)
    assert isinstance(result, Failed) and "non-deterministic" in result.message


def test_function_output_over_the_limit() -> None:
    async def fn(event: Event, step: Step) -> str:
        return "x" * 100

    result = replay(fdef(fn), EVENT, {}, NOW, max_output_bytes=50)
    assert isinstance(result, Failed) and "over the limit of 50 bytes" in result.message


def test_plain_def_returning_a_coroutine_fails_clearly() -> None:
    async def body() -> None:
        pass

    def fn(event: Event, step: SyncStep) -> Any:
        return body()

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert isinstance(result, Failed) and "async def" in result.message and not result.retriable


def test_plain_exception_is_retriable() -> None:
    async def fn(event: Event, step: Step) -> None:
        raise KeyError("missing")

    assert replay(fdef(fn), EVENT, {}, NOW) == Failed("KeyError", "'missing'", retriable=True)


def test_step_tools_outside_a_run() -> None:
    with pytest.raises(UsageError, match="outside a function run"):
        SyncStep().sleep("x", "1s")
    with pytest.raises(UsageError, match="outside a function run"):
        current_runtime("step.run", "x")


def test_step_tool_argument_errors_are_usage_errors() -> None:
    def fn(event: Event, step: SyncStep) -> list[str]:
        errors = []
        for call in (
            lambda: step.run("", noop),
            lambda: step.run("x", "not callable"),  # type: ignore[call-overload]
            lambda: step.sleep("x", "soon"),
            lambda: step.sleep("x", -1),
            lambda: step.wait_for_event("x", event="a/b", timeout="0s"),
            lambda: step.wait_for_event("x", event="a/b", timeout="1h", match="cart_id"),
            lambda: step.wait_for_any("x", [], timeout="1h"),
            lambda: step.send_event("x", []),
            lambda: step.send_event("x", [{"name": "a"}]),  # type: ignore[list-item]
        ):
            try:
                call()
            except UsageError as err:
                errors.append(type(err).__name__)
        return errors

    result = replay(fdef(fn), EVENT, {}, NOW)
    assert isinstance(result, Completed)
    assert len(json.loads(result.output_json)) == 9


def test_replay_refuses_a_running_loop() -> None:
    async def fn(event: Event, step: Step) -> None:
        pass

    async def main() -> None:
        with pytest.raises(RuntimeError, match="to_thread"):
            replay(fdef(fn), EVENT, {}, NOW)

    asyncio.run(main())


def test_runtime_does_not_leak_into_the_caller() -> None:
    async def fn(event: Event, step: Step) -> None:
        await step.sleep("s", "1s")

    replay(fdef(fn), EVENT, {}, NOW)
    with pytest.raises(UsageError, match="outside a function run"):
        current_runtime("step.run", "x")


# -- memo records and ids ----------------------------------------------------------------------------------


def test_memo_round_trip_and_validation() -> None:
    for memo in (run_memo({"a": 1}), Memo.failed(StepKind.SLEEP, "X", "y")):
        assert Memo.from_dict(json.loads(json.dumps(memo.to_dict()))) == memo
    with pytest.raises(ValueError):
        Memo(kind=StepKind.RUN, status=MemoStatus.COMPLETED)
    with pytest.raises(ValueError):
        Memo(kind=StepKind.RUN, status=MemoStatus.FAILED, error_type="X")


def test_step_id_allocator() -> None:
    ids = StepIdAllocator(max_steps=6)
    got = [ids.allocate(x) for x in ("a", "a", "a:1", "a", "b", "a:1")]
    assert got == ["a", "a:1", "a:1:1", "a:2", "b", "a:1:2"]
    assert len(ids) == 6
    with pytest.raises(UsageError, match="at most 6 steps"):
        ids.allocate("c")


def test_sleep_step_is_frozen() -> None:
    step = SleepStep(step_id="s", until_ms=1)
    with pytest.raises(AttributeError):
        step.until_ms = 2  # type: ignore[misc]


def test_memo_accepts_plain_strings() -> None:
    memo = Memo(kind="run", status="completed", output_json="1")  # type: ignore[arg-type]
    assert memo.kind is StepKind.RUN and memo.status is MemoStatus.COMPLETED

    async def fn(event: Event, step: Step) -> int:
        return await step.run("a", noop)

    assert replay(fdef(fn), EVENT, {"a": memo}, NOW) == Completed("1")
