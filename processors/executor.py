r"""The executor: drives every run by deterministic replay, one ``runs`` partition per store partition.

Responsibilities:

- apply each ``RunCommand`` (start, step reports, sleeps, retries, wait resolutions, cancel, purge)
  to the run's state in the ``runs`` store: one header key per run plus one key per step, so no
  single value grows with the run;
- after each change, replay the function (:func:`processors.replay.replay`) and turn the steps it
  newly reaches into commands: ``step.run`` to the step runner (after the commit), sleeps and retry
  backoffs to ``timers``, waits to ``waits`` (+ their timeout timers), ``send_event`` to ``events``;
- finish runs: history, ``streams/function.*`` system events, and removal of everything the run left
  behind (timers, waits, ``cancel_on`` subscriptions); the header stays 24 h to dedupe run starts.

Run lifecycle (``RunStatus``)::

    (none) ──StartRun──▶ RUNNING ──function returns──────────▶ COMPLETED ─┐
                           │  └────raises, retries exhausted──▶ FAILED ────┼─24 h─▶ (purged)
                           └──────CancelRun / cancel_on match─▶ CANCELLED ─┘

Step lifecycle (``StepStatus``)::

    (none) ──reached──▶ PENDING ──report / timer / wait resolved──▶ COMPLETED | FAILED

Store keys (``\x00`` separates run id from step id; run ids are hex):

    h<run>              RunHeader
    s<run>\x00<step>    StepRecord (pending or memoized)
    q<run>\x00<step>    marker: a step.run attempt is executing (recovery re-dispatches these)
    p<run>\x00<step>\x00<i>  event JSON: one resolved wait of a wait_for_all
    w<run>\x00<wait>    the wait's match key (to cancel it when the run ends)
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.cancellation import cancel_subscriptions, cancel_timer_id
from processors.records import (
    CODEC,
    HISTORY_ENTRY,
    body,
    cancel_wait,
    event_from_record,
    register_wait,
    run_command,
    wait_expired,
    wait_timer_id,
)
from processors.replay import Completed, Failed, Memo, MemoStatus, Planned, backoff_ms, replay
from processors.runtime.context import Context, StoreView
from processors.runtime.processor import AvroDecoder, Processor, Record
from processors.steprunner import StepDispatcher
from processors.timers import cancel_timer_command, schedule_timer_command
from streams._codec import EventCodec
from streams._context import RunStep, SendStep, SleepStep, StepKind, WaitMode, WaitStep
from streams._correlation import CorrelationIndex, plan_wait
from streams._event import Event
from streams._function import FunctionDef
from streams._step import encode_send_output, encode_wait_output
from streams.errors import StreamsError, UsageError

logger = logging.getLogger(__name__)

RUN_HEADER = "streams.RunHeader"
STEP_RECORD = "streams.StepRecord"
SEP = b"\x00"

#: A replay that keeps resolving steps synchronously (sends, past sleeps) is bounded by the step limit.
_MAX_PASSES = 1001

_KIND_OF_STEP: dict[tuple[StepKind, WaitMode | None], str] = {
    (StepKind.RUN, None): "RUN",
    (StepKind.SLEEP, None): "SLEEP",
    (StepKind.SEND, None): "SEND_EVENT",
    (StepKind.WAIT, WaitMode.ONE): "WAIT_FOR_EVENT",
    (StepKind.WAIT, WaitMode.ANY): "WAIT_FOR_ANY",
    (StepKind.WAIT, WaitMode.ALL): "WAIT_FOR_ALL",
}
_MEMO_KIND = {
    "RUN": StepKind.RUN,
    "SLEEP": StepKind.SLEEP,
    "SEND_EVENT": StepKind.SEND,
    "WAIT_FOR_EVENT": StepKind.WAIT,
    "WAIT_FOR_ANY": StepKind.WAIT,
    "WAIT_FOR_ALL": StepKind.WAIT,
}
_WAIT_MODE = {"WAIT_FOR_EVENT": WaitMode.ONE, "WAIT_FOR_ANY": WaitMode.ANY, "WAIT_FOR_ALL": WaitMode.ALL}


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """Tunables of the executor.

    Attributes:
        retry_base_ms: Backoff ceiling after the first failed attempt (doubles per attempt).
        retry_cap_ms: Largest backoff ceiling.
        idempotency_window_ms: How long an ended run's header dedupes run starts.
        lookback_retention_ms: The matcher's event-buffer retention: how far before a wait's start the
            default lookback reaches.
        max_consumed_ids: Event ids remembered per run so consumed events never match again.
    """

    retry_base_ms: int = 1000
    retry_cap_ms: int = 10 * 60 * 1000
    idempotency_window_ms: int = 24 * 3600 * 1000
    lookback_retention_ms: int = 5 * 60 * 1000
    max_consumed_ids: int = 1000


@dataclass
class _Run:
    """One run being processed: its header, function and partition context."""

    run_id: str
    header: dict[str, Any]
    function: FunctionDef
    trigger: Event
    ctx: Context
    now_ms: int
    redispatch: set[str] = field(default_factory=set)

    @property
    def store(self) -> StoreView:
        return self.ctx.store("runs")


def _step_key(prefix: bytes, run_id: str, step_id: str) -> bytes:
    return prefix + run_id.encode() + SEP + step_id.encode()


class ExecutorProcessor(Processor[dict[str, Any]]):
    """Applies ``RunCommand`` records and drives runs forward.

    Args:
        functions: Every function of the app by id (failure handlers included).
        dispatcher: Runs ``step.run`` attempts off the loop (:class:`~processors.steprunner.StepRunner`).
        index: The correlation index; waits it does not cover fail fast. ``None`` skips the check.
        event_codec: Encodes events sent by ``step.send_event`` and system events.
        settings: Tunables.
    """

    name = "executor"
    input_topic = "runs"
    stores = ("runs",)

    def __init__(
        self,
        functions: Mapping[str, FunctionDef],
        dispatcher: StepDispatcher,
        *,
        index: CorrelationIndex | None = None,
        event_codec: EventCodec | None = None,
        settings: ExecutorSettings | None = None,
    ) -> None:
        self.decoder = AvroDecoder("streams.RunCommand")
        self._functions = dict(functions)
        self._dispatcher = dispatcher
        self._index = index
        self._event_codec = event_codec or EventCodec()
        self._settings = settings or ExecutorSettings()
        self._to_dispatch: list[tuple[str, str, RunStep, int]] = []
        self._needs_resume: set[int] = set()

    # -- runtime hooks ------------------------------------------------------------------------------

    def process(self, record: Record[dict[str, Any]], ctx: Context) -> None:
        """Applies one command to its run."""
        kind, fields = body(record.value)
        now_ms = record.timestamp_ms if record.timestamp_ms is not None else ctx.now()
        handler = getattr(self, f"_apply_{_snake(kind)}")
        handler(record.value["run_id"], record.value["function_id"], fields, ctx, now_ms)

    def on_partition_assigned(self, partition: int, ctx: Context) -> None:
        """Schedules recovery of steps that were executing when the partition last changed hands."""
        self._needs_resume.add(partition)

    def on_partition_revoked(self, partition: int) -> None:
        """Forgets a pending recovery of a partition that left."""
        self._needs_resume.discard(partition)

    def punctuate(self, now_ms: int, ctx: Context) -> None:
        """Sends the recovery marker of a newly assigned partition to that partition (see ResumeSteps)."""
        if ctx.partition in self._needs_resume:
            self._needs_resume.discard(ctx.partition)
            marker = run_command("", "", "ResumeSteps", {"token": uuid.uuid4().hex})
            ctx.produce("runs", b"", marker, partition=ctx.partition)

    def on_committed(self) -> None:
        """Starts the step attempts the committed transaction recorded.

        Never before the commit: an aborted transaction must not leave a step running that the
        retried one starts again.
        """
        pending, self._to_dispatch = self._to_dispatch, []
        for run_id, function_id, step, attempt in pending:
            self._dispatcher.submit(run_id, function_id, step, attempt)

    def on_aborted(self) -> None:
        """Drops dispatches of an aborted transaction; the retried input records them again."""
        self._to_dispatch = []

    # -- commands (alphabetical) ---------------------------------------------------------------------

    def _apply_cancel_run(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        run = self._load_running(run_id, ctx, now_ms)
        if run is None:
            return
        run.header["cancel_reason"] = fields["reason"]
        self._finish(run, "CANCELLED", error=fields["reason"])

    def _apply_purge_run(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        header = self._header(ctx.store("runs"), run_id)
        if header is not None and header["status"] != "RUNNING":
            ctx.store("runs").delete(b"h" + run_id.encode())

    def _apply_resume_steps(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        # Every report produced before this marker has been applied: steps still marked executing
        # and not running in this process were interrupted (crash, rebalance). Run them again.
        store = ctx.store("runs")
        by_run: dict[str, set[str]] = {}
        for key, _ in store.iter_prefix(b"q"):
            run_part, _, step_part = key[1:].partition(SEP)
            rid, sid = run_part.decode(), step_part.decode()
            if not self._dispatcher.is_running(rid, sid):
                by_run.setdefault(rid, set()).add(sid)
        for rid, step_ids in sorted(by_run.items()):
            run = self._load_running(rid, ctx, now_ms)
            if run is None:
                continue
            logger.info("re-dispatching interrupted steps %s of run %s", sorted(step_ids), rid)
            run.redispatch = step_ids
            self._advance(run)

    def _apply_retry_step(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        run = self._load_running(run_id, ctx, now_ms)
        if run is None:
            return
        step_id, attempt = fields["step_id"], fields["attempt"]
        if step_id == "":  # the function body itself is retried
            if run.header["attempt"] == attempt:
                self._advance(run)
            return
        rec = self._step(run, step_id)
        if rec is None or rec["status"] != "PENDING" or rec["kind"] != "RUN" or rec["attempt"] != attempt:
            return
        rec["timer_id"] = None
        self._put_step(run, rec)
        run.store.put(_step_key(b"q", run_id, step_id), b"")
        run.redispatch = {step_id}
        self._advance(run)

    def _apply_sleep_elapsed(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        run = self._load_running(run_id, ctx, now_ms)
        if run is None:
            return
        rec = self._step(run, fields["step_id"])
        if rec is None or rec["status"] != "PENDING" or rec["kind"] != "SLEEP":
            return
        self._complete(run, rec, "null")
        self._advance(run)

    def _apply_start_run(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        store = ctx.store("runs")
        if store.get(b"h" + run_id.encode()) is not None:
            return  # duplicate start within the idempotency window
        function = self._function(function_id)
        trigger = event_from_record(fields["event"])
        header = {
            "run_id": run_id,
            "function_id": function_id,
            "status": "RUNNING",
            "trigger": fields["event"],
            "clock_ts": trigger.ts,
            "consumed_event_ids": [trigger.id],
            "step_count": 0,
            "started_ms": now_ms,
            "updated_ms": now_ms,
            "ended_ms": None,
            "output_json": None,
            "error": None,
            "cancel_reason": None,
            "attempt": 0,
        }
        run = _Run(run_id, header, function, trigger, ctx, now_ms)
        self._history(run)
        self._advance(run)

    def _apply_step_completed(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        accepted = self._accept_report(run_id, fields, ctx, now_ms)
        if accepted is None:
            return
        run, rec = accepted
        self._complete(run, rec, fields["output_json"])
        self._advance(run)

    def _apply_step_failed(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        accepted = self._accept_report(run_id, fields, ctx, now_ms)
        if accepted is None:
            return
        run, rec = accepted
        step_id, attempt = rec["step_id"], rec["attempt"]
        if fields["retriable"] and attempt < run.function.retries:
            retry_at = fields["retry_at_ms"]
            if retry_at is None:
                retry_at = now_ms + backoff_ms(
                    attempt + 1, base_ms=self._settings.retry_base_ms, cap_ms=self._settings.retry_cap_ms
                )
            rec["attempt"] = attempt + 1
            rec["error_type"], rec["error_message"] = fields["error_type"], fields["error_message"]
            rec["timer_id"] = f"{run_id}/retry/{step_id}"
            self._put_step(run, rec)
            retry = run_command(
                run_id, run.function.id, "RetryStep", {"step_id": step_id, "attempt": attempt + 1}
            )
            self._schedule(run, rec["timer_id"], retry_at, "runs", run_id.encode(), retry)
            return
        rec.update(
            status="FAILED",
            error_type=fields["error_type"],
            error_message=fields["error_message"],
            ended_ms=now_ms,
            timer_id=None,
        )
        self._put_step(run, rec)
        self._advance(run)

    def _accept_report(
        self, run_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> tuple[_Run, dict[str, Any]] | None:
        """The run and step a ``step.run`` report applies to, or ``None`` for a report to ignore.

        A report of the step's current attempt ends that execution here. A duplicate report, or
        one for a step or run that no longer waits, is ignored (the first applied report is the
        memoized result). A report of an *earlier* attempt (from a process that died before its
        report was read) is ignored without forgetting the step: the current attempt may still be
        running in this process, and recovery must not start it a second time.
        """
        step_id = fields["step_id"]
        run = self._load_running(run_id, ctx, now_ms)
        rec = None if run is None else self._step(run, step_id)
        if run is None or rec is None or rec["status"] != "PENDING":
            self._dispatcher.forget(run_id, step_id)
            return None
        if rec["attempt"] != fields["attempt"]:
            return None
        self._dispatcher.forget(run_id, step_id)
        run.store.delete(_step_key(b"q", run_id, step_id))
        return run, rec

    def _apply_wait_resolved(
        self, run_id: str, function_id: str, fields: dict[str, Any], ctx: Context, now_ms: int
    ) -> None:
        run = self._load_running(run_id, ctx, now_ms)
        if run is None:
            return
        rec = self._step(run, fields["step_id"])
        wait_id = fields["wait_id"]
        if rec is None or rec["status"] != "PENDING" or wait_id not in rec["wait_ids"]:
            return  # the race's loser, or a wait of a step that already resolved
        wait_key = _step_key(b"w", run_id, wait_id)
        if run.store.get(wait_key) is None:
            return  # this wait already resolved (wait_for_all collects the others)
        run.store.delete(wait_key)
        mode = _WAIT_MODE[rec["kind"]]
        event = None if fields["event"] is None else event_from_record(fields["event"])
        if event is not None:
            self._observe(run, event)
        index = fields["index"] if fields["index"] is not None else 0
        output: str | None
        if event is None:
            output = encode_wait_output(mode, None)
        elif mode is WaitMode.ONE:
            output = encode_wait_output(mode, event)
        elif mode is WaitMode.ANY:
            output = encode_wait_output(mode, (index, event))
        else:
            output = self._collect_all(run, rec, index, event)
        if output is None:
            self._put_header(run)  # the logical clock moved; the step waits for the rest
            return
        self._release_waits(run, rec, keep=wait_id)
        self._complete(run, rec, output)
        self._advance(run)

    # -- driving the function ------------------------------------------------------------------------

    def _advance(self, run: _Run) -> None:
        """Replays the function until it blocks on something that is not done yet, or ends."""
        for _ in range(_MAX_PASSES):
            result = replay(run.function, run.trigger, self._memos(run), run.now_ms)
            if isinstance(result, Completed):
                self._finish(run, "COMPLETED", output_json=result.output_json)
                return
            if isinstance(result, Failed):
                self._fail_function(run, result)
                return
            assert isinstance(result, Planned)
            if not self._start_steps(run, result):
                self._put_header(run)
                return
        raise UsageError(f"run {run.run_id} did not block after {_MAX_PASSES} passes")

    def _start_steps(self, run: _Run, planned: Planned) -> bool:
        """Turns newly reached steps into commands; returns whether any step resolved at once."""
        progressed = False
        for step in planned.steps:
            rec = self._step(run, step.step_id)
            if rec is not None:
                if isinstance(step, RunStep) and step.step_id in run.redispatch:
                    self._dispatch(run, step, rec["attempt"])
                continue
            run.header["step_count"] += 1
            mode = step.mode if isinstance(step, WaitStep) else None
            rec = {
                "run_id": run.run_id,
                "step_id": step.step_id,
                "kind": _KIND_OF_STEP[(step.kind, mode)],
                "status": "PENDING",
                "attempt": 0,
                "output_json": None,
                "error_type": None,
                "error_message": None,
                "wait_ids": [],
                "timer_id": None,
                "started_ms": run.now_ms,
                "ended_ms": None,
            }
            if isinstance(step, RunStep):
                self._put_step(run, rec)
                run.store.put(_step_key(b"q", run.run_id, step.step_id), b"")
                self._dispatch(run, step, 0)
            elif isinstance(step, SleepStep):
                progressed |= self._start_sleep(run, rec, step)
            elif isinstance(step, SendStep):
                self._send(run, step)
                self._complete(run, rec, encode_send_output([event.id for event in step.events]))
                progressed = True
            else:
                assert isinstance(step, WaitStep)
                progressed |= self._start_wait(run, rec, step)
        return progressed

    def _start_sleep(self, run: _Run, rec: dict[str, Any], step: SleepStep) -> bool:
        if step.until_ms <= run.now_ms:
            self._complete(run, rec, "null")
            return True
        rec["timer_id"] = f"{run.run_id}/sleep/{step.step_id}"
        self._put_step(run, rec)
        elapsed = run_command(run.run_id, run.function.id, "SleepElapsed", {"step_id": step.step_id})
        self._schedule(run, rec["timer_id"], step.until_ms, "runs", run.run_id.encode(), elapsed)
        return False

    def _start_wait(self, run: _Run, rec: dict[str, Any], step: WaitStep) -> bool:
        trigger = run.trigger.to_dict()
        try:
            plans = [
                plan_wait(
                    wait.event,
                    match=wait.match,
                    if_=wait.if_,
                    trigger=trigger,
                    index=self._index,
                    function_id=run.function.id,
                )
                for wait in step.waits
            ]
        except StreamsError as err:
            rec.update(
                status="FAILED", error_type=type(err).__name__, error_message=str(err), ended_ms=run.now_ms
            )
            self._put_step(run, rec)
            return True
        clock = run.header["clock_ts"]
        for i, (wait, plan) in enumerate(zip(step.waits, plans, strict=True)):
            wait_id = step.step_id if step.mode is WaitMode.ONE else f"{step.step_id}#{i}"
            lookback = wait.lookback_ms
            if lookback is None:
                since_ts, from_ts = clock, run.now_ms - self._settings.lookback_retention_ms
            else:
                since_ts = from_ts = run.now_ms - lookback
            run.ctx.produce(
                "waits",
                plan.key,
                register_wait(
                    plan.key,
                    run_id=run.run_id,
                    function_id=run.function.id,
                    step_id=step.step_id,
                    wait_id=wait_id,
                    event_name=wait.event,
                    expression=plan.condition,
                    since_ts=since_ts,
                    lookback_from_ts=from_ts,
                    expires_at_ms=step.deadline_ms,
                    kind="WAIT",
                    exclude_event_ids=run.header["consumed_event_ids"],
                    index=None if step.mode is WaitMode.ONE else i,
                ),
            )
            run.store.put(_step_key(b"w", run.run_id, wait_id), plan.key)
            self._schedule(
                run,
                wait_timer_id(run.run_id, wait_id),
                step.deadline_ms,
                "waits",
                plan.key,
                wait_expired(plan.key, run.run_id, wait_id, step.deadline_ms),
                after_events_routed=True,
            )
            rec["wait_ids"].append(wait_id)
        self._put_step(run, rec)
        return False

    def _collect_all(self, run: _Run, rec: dict[str, Any], index: int, event: Event) -> str | None:
        """Stores one resolved wait of a ``wait_for_all``; returns the output once all are in."""
        prefix = _step_key(b"p", run.run_id, rec["step_id"]) + SEP
        run.store.put(prefix + index.to_bytes(4, "big"), json.dumps(event.to_dict()).encode())
        collected = list(run.store.iter_prefix(prefix))
        if len(collected) < len(rec["wait_ids"]):
            return None
        for key, _ in collected:
            run.store.delete(key)
        return encode_wait_output(WaitMode.ALL, [Event.from_dict(json.loads(v)) for _, v in collected])

    def _fail_function(self, run: _Run, result: Failed) -> None:
        attempt = run.header["attempt"]
        if result.retriable and attempt < run.function.retries:
            retry_at = result.retry_at_ms
            if retry_at is None:
                retry_at = run.now_ms + backoff_ms(
                    attempt + 1, base_ms=self._settings.retry_base_ms, cap_ms=self._settings.retry_cap_ms
                )
            run.header["attempt"] = attempt + 1
            self._put_header(run)
            retry = run_command(
                run.run_id, run.function.id, "RetryStep", {"step_id": "", "attempt": attempt + 1}
            )
            self._schedule(run, f"{run.run_id}/retry/", retry_at, "runs", run.run_id.encode(), retry)
            return
        self._finish(run, "FAILED", error=f"{result.error_type}: {result.message}")

    # -- ending runs ---------------------------------------------------------------------------------

    def _finish(
        self, run: _Run, status: str, *, output_json: str | None = None, error: str | None = None
    ) -> None:
        """Ends a run: cleans up what it left behind, records history, emits the system event."""
        store, run_id = run.store, run.run_id
        for key, value in list(store.iter_prefix(b"s" + run_id.encode() + SEP)):
            rec = CODEC.decode(STEP_RECORD, value)
            if rec["status"] == "PENDING":
                if rec["timer_id"]:
                    run.ctx.produce("timers", run_id, cancel_timer_command(rec["timer_id"]))
                self._release_waits(run, rec, keep=None)
                self._dispatcher.forget(run_id, rec["step_id"])
            store.delete(key)
        for prefix in (b"q", b"p", b"w"):
            for key, _ in list(store.iter_prefix(prefix + run_id.encode() + SEP)):
                store.delete(key)
        self._release_cancel_subscriptions(run)
        run.header.update(status=status, ended_ms=run.now_ms, output_json=output_json, error=error)
        self._put_header(run)
        self._history(run)
        self._system_event(run, status)
        purge = run_command(run_id, run.function.id, "PurgeRun", {})
        purge_at = run.now_ms + self._settings.idempotency_window_ms
        self._schedule(run, f"{run_id}/purge", purge_at, "runs", run_id.encode(), purge)

    def _release_waits(self, run: _Run, rec: dict[str, Any], *, keep: str | None) -> None:
        """Cancels a wait step's other waits and their timeout timers."""
        for wait_id in rec["wait_ids"]:
            if wait_id == keep:
                continue
            key = run.store.get(_step_key(b"w", run.run_id, wait_id))
            if key is not None:
                run.ctx.produce("waits", key, cancel_wait(key, run.run_id, wait_id))
                run.store.delete(_step_key(b"w", run.run_id, wait_id))
            run.ctx.produce("timers", run.run_id, cancel_timer_command(wait_timer_id(run.run_id, wait_id)))

    def _release_cancel_subscriptions(self, run: _Run) -> None:
        if not run.function.cancel_on:
            return
        try:
            subscriptions = cancel_subscriptions(run.function, run.trigger.to_dict(), self._index)
        except StreamsError:
            return  # the router could not register them either
        for sub in subscriptions:
            run.ctx.produce("waits", sub.plan.key, cancel_wait(sub.plan.key, run.run_id, sub.wait_id))
            run.ctx.produce(
                "timers", run.run_id, cancel_timer_command(cancel_timer_id(run.run_id, sub.wait_id))
            )

    def _history(self, run: _Run) -> None:
        header = run.header
        entry = {
            "run_id": run.run_id,
            "function_id": run.function.id,
            "status": header["status"],
            "trigger": header["trigger"],
            "output_json": header["output_json"],
            "error": header["error"],
            "started_ms": header["started_ms"],
            "ended_ms": header["ended_ms"],
        }
        run.ctx.produce("history", run.run_id, CODEC.encode(HISTORY_ENTRY, entry))

    def _system_event(self, run: _Run, status: str) -> None:
        name = {"COMPLETED": "finished", "FAILED": "failed", "CANCELLED": "cancelled"}[status]
        data: dict[str, Any] = {
            "function_id": run.function.id,
            "run_id": run.run_id,
            "event": run.trigger.to_dict(),
        }
        if status == "COMPLETED":
            data["output"] = json.loads(run.header["output_json"])
        else:
            data["error"] = run.header["error"]
        # Deterministic id and ts: a re-processed transaction sends the very same event.
        event = Event(name=f"streams/function.{name}", data=data, id=f"{run.run_id}-{name}", ts=run.now_ms)
        run.ctx.produce("events", event.id, self._event_codec.encode_json(event))

    # -- state helpers ------------------------------------------------------------------------------

    def _function(self, function_id: str) -> FunctionDef:
        function = self._functions.get(function_id)
        if function is None:
            raise UsageError(
                f"no function {function_id!r} in this worker (known: {', '.join(sorted(self._functions))}); "
                "deploy the code that defines it"
            )
        return function

    @staticmethod
    def _header(store: StoreView, run_id: str) -> dict[str, Any] | None:
        raw = store.get(b"h" + run_id.encode())
        return None if raw is None else CODEC.decode(RUN_HEADER, raw)

    def _load(self, run_id: str, ctx: Context, now_ms: int) -> _Run | None:
        header = self._header(ctx.store("runs"), run_id)
        if header is None:
            return None
        function = self._function(header["function_id"])
        return _Run(run_id, header, function, event_from_record(header["trigger"]), ctx, now_ms)

    def _load_running(self, run_id: str, ctx: Context, now_ms: int) -> _Run | None:
        """The run if it is still running; commands for ended or unknown runs are no-ops."""
        run = self._load(run_id, ctx, now_ms)
        return run if run is not None and run.header["status"] == "RUNNING" else None

    def _put_header(self, run: _Run) -> None:
        run.header["updated_ms"] = run.now_ms
        run.store.put(b"h" + run.run_id.encode(), CODEC.encode(RUN_HEADER, run.header))

    @staticmethod
    def _step(run: _Run, step_id: str) -> dict[str, Any] | None:
        raw = run.store.get(_step_key(b"s", run.run_id, step_id))
        return None if raw is None else CODEC.decode(STEP_RECORD, raw)

    @staticmethod
    def _put_step(run: _Run, rec: dict[str, Any]) -> None:
        run.store.put(_step_key(b"s", run.run_id, rec["step_id"]), CODEC.encode(STEP_RECORD, rec))

    def _complete(self, run: _Run, rec: dict[str, Any], output_json: str) -> None:
        rec.update(status="COMPLETED", output_json=output_json, ended_ms=run.now_ms, timer_id=None)
        self._put_step(run, rec)

    def _memos(self, run: _Run) -> dict[str, Memo]:
        memos: dict[str, Memo] = {}
        for _, value in run.store.iter_prefix(b"s" + run.run_id.encode() + SEP):
            rec = CODEC.decode(STEP_RECORD, value)
            kind = _MEMO_KIND[rec["kind"]]
            if rec["status"] == "COMPLETED":
                memos[rec["step_id"]] = Memo(kind, MemoStatus.COMPLETED, output_json=rec["output_json"])
            elif rec["status"] == "FAILED":
                memos[rec["step_id"]] = Memo(
                    kind, MemoStatus.FAILED, error_type=rec["error_type"], error_message=rec["error_message"]
                )
        return memos

    def _observe(self, run: _Run, event: Event) -> None:
        """Advances the run's logical clock past an event one of its waits consumed."""
        header = run.header
        header["clock_ts"] = max(header["clock_ts"], event.ts)
        consumed = [*header["consumed_event_ids"], event.id]
        header["consumed_event_ids"] = consumed[-self._settings.max_consumed_ids :]

    def _dispatch(self, run: _Run, step: RunStep, attempt: int) -> None:
        self._to_dispatch.append((run.run_id, run.function.id, step, attempt))

    def _send(self, run: _Run, step: SendStep) -> None:
        for event in step.events:
            run.ctx.produce("events", event.id, self._event_codec.encode_json(event))

    @staticmethod
    def _schedule(
        run: _Run,
        timer_id: str,
        fire_at_ms: int,
        topic: str,
        key: bytes,
        payload: bytes,
        *,
        after_events_routed: bool = False,
    ) -> None:
        command = schedule_timer_command(
            timer_id, fire_at_ms, topic, key, payload, after_events_routed=after_events_routed
        )
        run.ctx.produce("timers", run.run_id, command)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
