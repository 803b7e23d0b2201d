"""kill -9 of a worker running durable functions: every run ends exactly once, with the right result.

A worker subprocess (``crash_app.py``: router, matcher, executor and timers on threads) runs the
functions of ``crash_app``; the test SIGKILLs it at chosen and random moments (while a ``step.run``
executes, at a random time, or in the middle of a commit through the runtime's crash hook) and
restarts it on the same state directory, sometimes with its stores wiped so they restore in full
from their changelogs. Every step execution appends to a side-effect log, so executions are
counted across process deaths.

What "exactly once" is checked against, per step (see :func:`_check_executions`):

- the memoized result is the *first* ``StepCompleted`` report of the step in its ``runs`` partition
  (the executor applies reports in partition order and ignores later ones); the run's output
  carries that execution's token;
- no execution of a step starts after its winning report was produced (a step whose completion was
  recorded never runs again);
- an execution other than the winner is either an injected failure (reported as ``StepFailed``, then
  retried) or was interrupted by a kill: its process was SIGKILLed after it started and it produced
  no report. So "executions > 1" is allowed exactly when a kill hit the step.

and per run: one ``RUNNING`` and one ``COMPLETED`` history entry (``read_committed``), one
``streams/function.finished`` event, and for waits one ``WaitResolved`` command.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from processors.records import CODEC, HISTORY_ENTRY, RUN_COMMAND, WAIT_COMMAND, body, event_from_record
from streams import App, Event, StreamsConfig
from streams._codec import EventCodec

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import crash_app  # noqa: E402

pytestmark = pytest.mark.kafka

APP_SCRIPT = HERE / "crash_app.py"


# -- the worker subprocess ----------------------------------------------------------------------------


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    died: float | None = None
    #: How it ended: "sigkill" (by the test), "hook" (killed itself mid-commit), "sigterm".
    ended_by: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class Workers:
    """Starts, kills and restarts the one worker of a test; remembers when each one died."""

    config: StreamsConfig
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[Worker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.root / "state"
        self.effects = self.root / "effects.log"
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def start(self, *, wipe: str | None = None, crash_after: int | None = None) -> Worker:
        """Starts a worker; ``wipe="stores"`` deletes its stores (keeping instance ids) first,
        ``wipe="all"`` the whole state directory."""
        assert not any(w.alive() for w in self.started), "one worker at a time"
        if wipe == "stores":
            _wipe_stores(self.state / self.config.namespace)
        elif wipe == "all":
            shutil.rmtree(self.state, ignore_errors=True)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **{f"STREAMS_PARTITIONS_{t.upper()}": str(n) for t, n in self.config.partitions.items()},
            **self.env,
        }
        env.pop("CRASH_APP_CRASH_AFTER", None)
        if crash_after is not None:
            env["CRASH_APP_CRASH_AFTER"] = str(crash_after)
            env["CRASH_APP_CRASH_POINT"] = "random"
        log = self.logs / f"worker-{len(self.started)}.log"
        assert self.config.bootstrap_servers is not None
        command = [
            sys.executable,
            str(APP_SCRIPT),
            "--namespace",
            self.config.namespace,
            "--bootstrap",
            self.config.bootstrap_servers,
            "--state-dir",
            str(self.state),
            "--log",
            str(self.effects),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        worker = Worker(process, log, time.time())
        self.started.append(worker)
        return worker

    def kill(self, worker: Worker) -> None:
        if worker.alive():
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(30)
            # After it is gone: an execution that started while the signal was underway counts as killed.
            worker.died = time.time()
            worker.ended_by = "sigkill"

    def stop(self, worker: Worker, timeout: float = 60.0) -> int:
        worker.process.send_signal(signal.SIGTERM)
        code = worker.process.wait(timeout)
        worker.ended_by = "sigterm"
        return code

    def deaths(self) -> dict[int, float]:
        """pid -> when it died, of every worker killed by SIGKILL (by the test or itself)."""
        return {w.pid: w.died for w in self.started if w.ended_by in ("sigkill", "hook") and w.died}

    def close(self) -> None:
        for worker in self.started:
            if worker.alive():
                worker.process.kill()
                worker.process.wait(30)


def _wipe_stores(namespace_dir: Path) -> None:
    """Deletes every processor's RocksDB stores (and so their checkpoints) but keeps the instance ids:
    the next start restores every store from offset 0 of its changelog, as a new volume would, while
    fencing its predecessor at once (a new id would wait out the session and transaction timeouts)."""
    if not namespace_dir.exists():
        return
    for processor_dir in namespace_dir.iterdir():
        for entry in processor_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)


# -- the side-effect log ----------------------------------------------------------------------------


@dataclass
class Execution:
    n: int
    step: str
    token: str
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None  # "E" returned, "F" raised, None: never finished
    value: Any = None
    note: Any = None


def read_effects(path: Path) -> dict[str, Execution]:
    """Every step execution of the log, by token."""
    executions: dict[str, Execution] = {}
    if not path.exists():
        return executions
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry["kind"] == "S":
            executions[entry["token"]] = Execution(
                entry["n"], entry["step"], entry["token"], entry["pid"], entry["t"], note=entry.get("note")
            )
        else:
            execution = executions[entry["token"]]
            execution.end, execution.outcome, execution.value = entry["t"], entry["kind"], entry.get("value")
    return executions


def open_execution(path: Path, pid: int) -> Execution | None:
    """An execution of process ``pid`` that started and has not finished, if any."""
    for execution in read_effects(path).values():
        if execution.pid == pid and execution.outcome is None:
            return execution
    return None


def _executions_of(path: Path, pid: int, step: str | None = None, note: Any = ...) -> list[Execution]:
    return [
        e
        for e in read_effects(path).values()
        if e.pid == pid and (step is None or e.step == step) and (note is ... or e.note == note)
    ]


# -- reading topics ---------------------------------------------------------------------------------


def read_topic(config: StreamsConfig, topic: str, isolation: str = "read_committed") -> list[Message]:
    """Every record of a topic (logical name) up to its end (the LSO for ``read_committed``)."""
    name = config.topic(topic)
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.crash-reader.{uuid.uuid4().hex}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(name, timeout=30).topics[name].partitions)
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Message] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + 60
        while len(at_end) < len(partitions):
            assert time.monotonic() < deadline, f"could not read {name} to its end"
            for message in consumer.consume(1000, 0.5):
                error = message.error()
                if error is None:
                    out.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise AssertionError(f"reading {name}: {error}")
        return out
    finally:
        consumer.close()


def history_entries(config: StreamsConfig) -> list[dict[str, Any]]:
    entries = []
    for message in read_topic(config, "history"):
        entry = CODEC.decode(HISTORY_ENTRY, message.value())
        entry["n"] = event_from_record(entry["trigger"]).data.get("n")
        entries.append(entry)
    return entries


@dataclass
class Report:
    """A command of the ``runs`` topic, in partition order."""

    run_id: str
    kind: str
    fields: dict[str, Any]
    partition: int
    offset: int
    ts_ms: int


def run_commands(config: StreamsConfig, isolation: str = "read_committed") -> list[Report]:
    out = []
    for message in read_topic(config, "runs", isolation):
        value = CODEC.decode(RUN_COMMAND, message.value())
        kind, fields = body(value)
        out.append(
            Report(
                value["run_id"], kind, fields, message.partition(), message.offset(), message.timestamp()[1]
            )
        )
    out.sort(key=lambda r: (r.partition, r.offset))
    return out


class Progress:
    """Follows ``history`` (read_committed) while the test runs: which runs completed."""

    def __init__(self, config: StreamsConfig) -> None:
        self.consumer = Consumer(
            {
                **config.client_config(),
                "group.id": f"{config.namespace}.crash-progress",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.consumer.subscribe([config.topic("history")])
        self.completed: set[str] = set()

    def poll(self) -> int:
        for message in self.consumer.consume(500, 0.2):
            if message.error() is None:
                entry = CODEC.decode(HISTORY_ENTRY, message.value())
                if entry["status"] != "RUNNING":
                    self.completed.add(entry["run_id"])
        return len(self.completed)

    def close(self) -> None:
        self.consumer.close()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, worker: Worker | None = None
) -> bool:
    """Polls ``condition``; returns False on timeout, raises if the worker exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if worker is not None and not worker.alive():
            raise AssertionError(
                f"worker {worker.pid} exited ({worker.process.returncode}) waiting for {what}"
            )
        time.sleep(0.01)
    return False


def wait_ready(worker: Worker, timeout: float = 60.0) -> None:
    """Until all four processor loops run (and SIGTERM stops the worker cleanly)."""

    def ready() -> bool:
        text = worker.log.read_text(errors="replace")
        return all(f"{role}: started (" in text for role in ("router", "matcher", "executor", "timers"))

    assert wait_until(ready, timeout, "the worker's loops", worker), f"worker not ready; see {worker.log}"


# -- evidence ---------------------------------------------------------------------------------------


def dump_evidence(config: StreamsConfig, workers: Workers, note: str) -> Path:
    """Writes what every internal topic holds (uncommitted vs committed) and the logs' errors."""
    path = workers.root / "evidence.txt"
    lines = [note, ""]
    for topic in ("runs", "waits", "timers", "history", "dlq"):
        for isolation in ("read_uncommitted", "read_committed"):
            messages = read_topic(config, topic, isolation)
            lines.append(f"== {topic} {isolation}: {len(messages)} records")
            for m in messages:
                schema = {"runs": RUN_COMMAND, "waits": WAIT_COMMAND, "history": HISTORY_ENTRY}.get(topic)
                try:
                    decoded: Any = CODEC.decode(schema, m.value()) if schema else m.value()
                except Exception as exc:  # keep dumping
                    decoded = f"<{exc}>"
                lines.append(
                    f"  p{m.partition()}@{m.offset()} ts={m.timestamp()[1]} key={m.key()!r} {decoded}"
                )
    for worker in workers.started:
        lines.append(f"== {worker.log.name} pid={worker.pid} ended_by={worker.ended_by} died={worker.died}")
        lines.extend(
            line for line in worker.log.read_text(errors="replace").splitlines() if " INFO " not in line
        )
    path.write_text("\n".join(lines))
    return path


# -- the exactly-once checks -------------------------------------------------------------------------


def _check_executions(
    executions: Iterable[Execution],
    reports: list[Report],
    n_of_run: dict[str, int],
    deaths: dict[int, float],
    steps: Iterable[str],
    *,
    may_fail: Callable[[int, str], bool] = lambda n, step: False,
) -> tuple[dict[tuple[int, str], Execution], list[str]]:
    """Checks every execution of ``steps`` against the reports; returns the winners and problems.

    Winner of (run, step) = the execution whose token is in the first ``StepCompleted`` report of the
    step in the ``runs`` partition: the result the executor memoized.
    """
    problems: list[str] = []
    by_step: dict[tuple[int, str], list[Execution]] = defaultdict(list)
    for execution in executions:
        by_step[execution.n, execution.step].append(execution)
    reported: dict[tuple[int, str], list[Report]] = defaultdict(list)
    for report in reports:
        if report.kind in ("StepCompleted", "StepFailed") and report.run_id in n_of_run:
            reported[n_of_run[report.run_id], report.fields["step_id"]].append(report)
    winners: dict[tuple[int, str], Execution] = {}
    step_ids = set(steps)
    for n in sorted(n_of_run.values()):
        for step in sorted(step_ids):
            runs_of_step = sorted(by_step.get((n, step), []), key=lambda e: e.start)
            completions = [r for r in reported.get((n, step), []) if r.kind == "StepCompleted"]
            if not completions:
                problems.append(
                    f"run {n} step {step}: no StepCompleted report ({len(runs_of_step)} executions)"
                )
                continue
            first = completions[0]
            token = json.loads(first.fields["output_json"])["token"]
            tokens = {e.token: e for e in runs_of_step}
            if token not in tokens or tokens[token].outcome != "E":
                problems.append(f"run {n} step {step}: winning report {token} matches no finished execution")
                continue
            winners[n, step] = tokens[token]
            report_tokens = Counter(
                json.loads(r.fields["output_json"])["token"]
                if r.kind == "StepCompleted"
                else r.fields["error_message"].rsplit(" ", 1)[-1]
                for r in reported[n, step]
            )
            for execution in runs_of_step:
                if execution.token == token:
                    continue
                # Whole milliseconds, like the report's timestamp (CreateTime, same host clock).
                if int(execution.start * 1000) > first.ts_ms:
                    problems.append(
                        f"run {n} step {step}: execution {execution.token} (pid {execution.pid}) started "
                        f"{execution.start * 1000 - first.ts_ms:.0f} ms after the winning report was produced"
                    )
                died = deaths.get(execution.pid)
                if execution.outcome == "F":
                    # Reported as StepFailed once, or not at all when a kill came before the report.
                    reports_of_it = report_tokens[execution.token]
                    if not may_fail(n, step) or reports_of_it > 1 or (reports_of_it == 0 and died is None):
                        problems.append(f"run {n} step {step}: unexpected failure {execution.token}")
                    continue
                if died is None or died < execution.start:
                    problems.append(
                        f"run {n} step {step}: ran again ({len(runs_of_step)} executions) though no kill "
                        f"interrupted execution {execution.token} of pid {execution.pid}"
                    )
                elif report_tokens[execution.token]:
                    problems.append(
                        f"run {n} step {step}: interrupted execution {execution.token} also reported "
                        f"(a second report after the winner)"
                    )
    return winners, problems


def _check_history(entries: list[dict[str, Any]], expected_runs: int, function_id: str) -> list[str]:
    problems = []
    statuses: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in entries:
        if entry["function_id"] == function_id:
            statuses[entry["run_id"]][entry["status"]] += 1
    if len(statuses) != expected_runs:
        problems.append(f"{len(statuses)} runs in history, expected {expected_runs}")
    for run_id, counts in statuses.items():
        if counts != Counter({"RUNNING": 1, "COMPLETED": 1}):
            problems.append(f"run {run_id}: history entries {dict(counts)}")
    return problems


def _check_finished_events(config: StreamsConfig, run_ids: Iterable[str]) -> list[str]:
    codec = EventCodec()
    finished = Counter(
        event.data["run_id"]
        for event in (codec.decode(m.value()) for m in read_topic(config, "events"))
        if event.name == "streams/function.finished"
    )
    return [f"run {r}: {finished[r]} function.finished events" for r in run_ids if finished[r] != 1]


def _completed_outputs(entries: list[dict[str, Any]], function_id: str) -> dict[int, Any]:
    return {
        e["n"]: json.loads(e["output_json"])
        for e in entries
        if e["function_id"] == function_id and e["status"] == "COMPLETED"
    }


def _require(ok: bool, config: StreamsConfig, workers: Workers, what: str) -> None:
    if not ok:
        _fail_with_evidence(config, workers, [what], "stuck")


def _fail_with_evidence(config: StreamsConfig, workers: Workers, problems: list[str], summary: str) -> None:
    if problems:
        text = "\n".join(problems[:60])
        path = dump_evidence(config, workers, f"{summary}\n{text}")
        raise AssertionError(f"{len(problems)} problems ({summary}):\n{text}\nevidence: {path}")


# -- test 1: kill -9 between and during steps ---------------------------------------------------------


def _kill_between_and_during_steps(
    config: StreamsConfig, tmp_path: Path, *, runs: int, plan: list[tuple[str | None, str]], seed: int
) -> None:
    """``plan``: per killed worker, (wipe before its start, how it dies: step|random|hook)."""
    rng = random.Random(seed)
    workers = Workers(config, tmp_path)
    app = App(config.namespace, config)
    app.create_topics()
    progress = Progress(config)
    chunks = [list(range(i, runs, len(plan) + 1)) for i in range(len(plan) + 1)]
    interrupted_steps = hooks = 0
    began = time.monotonic()
    try:
        for (wipe, death), chunk in zip(plan, chunks, strict=False):
            app.send([Event(name=crash_app.STEPS_TRIGGER, data={"n": n}, id=f"start-{n}") for n in chunk])
            worker = workers.start(wipe=wipe, crash_after=rng.randint(5, 40) if death == "hook" else None)
            if death == "hook":
                if wait_until(lambda w=worker: not w.alive(), 30, "the crash hook"):
                    worker.ended_by, worker.died = "hook", time.time()
                    assert worker.process.returncode == -signal.SIGKILL, f"see {worker.log}"
                    assert "crash hook: SIGKILL" in worker.log.read_text()
                    hooks += 1
                    continue
                death = "random"  # the hook did not fire in time: kill it now
            # Alive and working: it has started a step (there is always work: a chunk was just sent).
            working = wait_until(
                lambda w=worker: bool(_executions_of(workers.effects, w.pid)), 60, "a first step", worker
            )
            _require(working, config, workers, f"worker {worker.pid} ran no step in 60 s")
            if death == "step":
                time.sleep(rng.uniform(0.1, 1.0))
                wait_until(lambda w=worker: open_execution(workers.effects, w.pid) is not None, 30, "a step")
            else:
                time.sleep(rng.uniform(0.2, 3.0))
            workers.kill(worker)
            interrupted_steps += open_execution(workers.effects, worker.pid) is not None
        for n_ in chunks[len(plan)]:
            app.send(Event(name=crash_app.STEPS_TRIGGER, data={"n": n_}, id=f"start-{n_}"))
        final = workers.start(wipe="stores")
        wait_ready(final)
        if not wait_until(lambda: progress.poll() >= runs, 150, f"{runs} completed runs", final):
            _fail_with_evidence(config, workers, [f"only {progress.poll()} of {runs} runs ended"], "stuck")
        assert workers.stop(final) == 0, f"see {final.log}"
        elapsed = time.monotonic() - began

        entries = history_entries(config)
        problems = _check_history(entries, runs, "three-steps")
        outputs = _completed_outputs(entries, "three-steps")
        n_of_run = {e["run_id"]: e["n"] for e in entries}
        winners, step_problems = _check_executions(
            read_effects(workers.effects).values(),
            run_commands(config),
            n_of_run,
            workers.deaths(),
            ("a", "b", "c"),
            may_fail=lambda n, step: step == "b" and n % crash_app.FAIL_ONCE_EVERY == 0,
        )
        problems += step_problems
        for n in range(runs):
            output = outputs.get(n)
            if output is None:
                problems.append(f"run {n}: no COMPLETED entry")
                continue
            expected = {
                "n": n,
                "value": crash_app.expected_value(n),
                "tokens": [winners[n, s].token if (n, s) in winners else None for s in "abc"],
            }
            if output != expected:
                problems.append(f"run {n}: output {output} != {expected}")
        problems += _check_finished_events(config, n_of_run)
        executions = read_effects(workers.effects).values()
        extra = sum(1 for e in executions if e.outcome != "F") - 3 * runs
        summary = (
            f"{runs} runs, {len(plan)} kills ({interrupted_steps} during a step, {hooks} mid-commit), "
            f"{extra} re-executions, {elapsed:.1f}s"
        )
        _fail_with_evidence(config, workers, problems, summary)
        print(summary)
        # A "step" kill finds no step executing when the worker had nothing left to do: rare, so ask
        # for most of them, not all.
        assert interrupted_steps >= sum(1 for _, d in plan if d == "step") - 1, summary
    finally:
        progress.close()
        app.close()
        workers.close()


CI_STEP_PLAN: list[tuple[str | None, str]] = [
    (None, "step"),
    (None, "random"),
    (None, "step"),
    ("stores", "hook"),
    (None, "step"),
    (None, "random"),
]


def test_kill_9_between_and_during_steps(streams_config: StreamsConfig, tmp_path: Path) -> None:
    _kill_between_and_during_steps(streams_config, tmp_path, runs=40, plan=CI_STEP_PLAN, seed=1)


@pytest.mark.slow
def test_kill_9_between_and_during_steps_long(streams_config: StreamsConfig, tmp_path: Path) -> None:
    plan: list[tuple[str | None, str]] = [
        *CI_STEP_PLAN,
        ("stores", "step"),
        (None, "hook"),
        (None, "step"),
        ("all", "random"),
        (None, "step"),
        (None, "hook"),
        ("stores", "step"),
        (None, "random"),
        (None, "step"),
        (None, "hook"),
    ]
    _kill_between_and_during_steps(streams_config, tmp_path, runs=200, plan=plan, seed=2)


# -- test 2: kill -9 while waits are pending ----------------------------------------------------------


def _kill_while_waits_pending(
    config: StreamsConfig, tmp_path: Path, *, runs: int, timeout_s: float, extra_kills: int = 0
) -> None:
    """Phases: waits registered → kill; matching events sent while no worker runs → restart, kill
    while they resolve; (``extra_kills`` times: restart, kill at a random moment, while no timeout is
    due yet); restart with wiped stores, kill while timeouts fire; late events; restart and finish."""
    workers = Workers(config, tmp_path, env={"CRASH_APP_WAIT_TIMEOUT": f"{int(timeout_s)}s"})
    app = App(config.namespace, config)
    app.create_topics()
    progress = Progress(config)
    paid = [n for n in range(runs) if n % 2 == 0]
    late = [n for n in range(runs) if n % 4 == 1]  # paid only after the deadline: must time out
    began = time.monotonic()
    try:
        app.send(
            [
                Event(name=crash_app.WAIT_TRIGGER, data={"n": n, "order": f"o{n}"}, id=f"order-{n}")
                for n in range(runs)
            ]
        )
        w0 = workers.start()

        def registered() -> dict[str, int]:
            return {
                body(v)[1]["run_id"]: body(v)[1]["expires_at_ms"]
                for v in (CODEC.decode(WAIT_COMMAND, m.value()) for m in read_topic(config, "waits"))
                if body(v)[0] == "RegisterWait" and body(v)[1]["kind"] == "WAIT"
            }

        deadlines: dict[str, int] = {}

        def all_registered() -> bool:
            deadlines.update(registered())
            return len(deadlines) >= runs

        assert wait_until(all_registered, 90, "every wait registered", w0), (
            f"{len(deadlines)} waits; see {w0.log}"
        )
        workers.kill(w0)  # kill 1: every wait pending, none resolved
        sent_ms = int(time.time() * 1000)
        assert sent_ms < min(deadlines.values()) - 1000, (
            "test too slow: matching events would miss the deadline"
        )
        app.send([Event(name=crash_app.PAID, data={"order": f"o{n}"}, id=f"pay-{n}") for n in paid])
        app.send(Event(name=crash_app.PAID, data={"order": "nobody"}, id="pay-nobody"))

        w1 = workers.start()
        # kill 2: while the matched runs resume (an "after" step runs), the rest still pending
        resumed = lambda: bool(_executions_of(workers.effects, w1.pid, "after"))  # noqa: E731
        _require(wait_until(resumed, 60, "a resumed run", w1), config, workers, "no run resumed")
        time.sleep(random.uniform(0, 0.3))
        workers.kill(w1)
        resumed_before_kill = len(_executions_of(workers.effects, w1.pid, "after"))
        kills = 2
        for i in range(extra_kills):
            before_timeouts = min(deadlines.values()) / 1000 - time.time() - 4  # seconds
            if before_timeouts < 0:
                break
            wipe = random.choice([None, None, "stores"])
            if i % 2:  # it kills itself in the middle of a commit
                worker = workers.start(wipe=wipe, crash_after=random.randint(3, 30))
                if wait_until(lambda w=worker: not w.alive(), before_timeouts, "the crash hook"):
                    worker.ended_by, worker.died = "hook", time.time()
                    kills += 1
                    continue
            else:
                worker = workers.start(wipe=wipe)
            wait_ready(worker)
            time.sleep(random.uniform(0.2, 1.5))
            workers.kill(worker)
            kills += 1

        w2 = workers.start(wipe="stores")
        # kill 3: as the first timeouts fire (their runs resume), most waits still pending
        timed_out = lambda: bool(_executions_of(workers.effects, w2.pid, "after", None))  # noqa: E731
        _require(wait_until(timed_out, 60, "a timed-out run", w2), config, workers, "no wait timed out")
        time.sleep(random.uniform(0, 0.3))
        workers.kill(w2)
        kills += 1
        # While no worker runs and past every deadline: events that come too late, the timeout must win
        # (the next worker's router may route them to a wait before its timer fires).
        wait_until(lambda: time.time() * 1000 > max(deadlines.values()) + 200, 60, "the deadlines")
        app.send([Event(name=crash_app.PAID, data={"order": f"o{n}"}, id=f"late-{n}") for n in late])

        final = workers.start()
        wait_ready(final)
        if not wait_until(lambda: progress.poll() >= runs, 120, f"{runs} ended runs", final):
            _fail_with_evidence(config, workers, [f"only {progress.poll()} of {runs} runs ended"], "stuck")
        assert workers.stop(final) == 0, f"see {final.log}"
        elapsed = time.monotonic() - began

        entries = history_entries(config)
        problems = _check_history(entries, runs, "await-payment")
        outputs = _completed_outputs(entries, "await-payment")
        n_of_run = {e["run_id"]: e["n"] for e in entries}
        commands = run_commands(config)
        winners, step_problems = _check_executions(
            read_effects(workers.effects).values(), commands, n_of_run, workers.deaths(), ("before", "after")
        )
        problems += step_problems
        resolved: dict[int, list[Any]] = defaultdict(list)
        for command in commands:
            if command.kind == "WaitResolved" and command.run_id in n_of_run:
                event = command.fields["event"]
                resolved[n_of_run[command.run_id]].append(None if event is None else event["id"])
        appended = {
            m.key().decode(): m.timestamp()[1] for m in read_topic(config, "events") if m.key() is not None
        }
        run_of_n = {n: r for r, n in n_of_run.items()}
        for n in range(runs):
            want = f"pay-{n}" if n in paid else None
            if n in run_of_n:
                deadline = deadlines[run_of_n[n]]
                if n in paid:
                    assert appended[f"pay-{n}"] <= deadline, f"test sent pay-{n} after its deadline"
                if n in late:
                    assert appended[f"late-{n}"] > deadline, f"test sent late-{n} before its deadline"
            if resolved.get(n) != [want]:
                problems.append(f"run {n}: WaitResolved commands {resolved.get(n)}, expected [{want}]")
            output = outputs.get(n)
            winner = winners.get((n, "after"))
            expected = {"n": n, "paid": want, "token": winner and winner.token}
            if output != expected:
                problems.append(f"run {n}: output {output} != {expected}")
            if winner is not None and winner.note != want:
                problems.append(f"run {n}: the after step saw {winner.note}, expected {want}")
        problems += _check_finished_events(config, n_of_run)
        after = [e for e in read_effects(workers.effects).values() if e.step == "after"]
        summary = (
            f"{runs} runs ({len(paid)} matched), {kills} kills while waits were pending, "
            f"{resumed_before_kill} resumed before kill 2, {len(after) - runs} re-executed after-steps, "
            f"{elapsed:.1f}s"
        )
        _fail_with_evidence(config, workers, problems, summary)
        print(summary)
    finally:
        progress.close()
        app.close()
        workers.close()


def test_kill_9_while_waits_are_pending(streams_config: StreamsConfig, tmp_path: Path) -> None:
    _kill_while_waits_pending(streams_config, tmp_path, runs=60, timeout_s=8)


@pytest.mark.slow
def test_kill_9_while_waits_are_pending_long(streams_config: StreamsConfig, tmp_path: Path) -> None:
    _kill_while_waits_pending(streams_config, tmp_path, runs=300, timeout_s=25, extra_kills=4)
