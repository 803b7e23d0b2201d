"""The app the kill -9 tests of durable functions run in a worker subprocess, and its side-effect log.

Run as a script it is one worker process (router, matcher, executor and timers on threads)::

    python tests/integration/functions/crash_app.py --namespace NS --bootstrap HOST:PORT \\
        --state-dir DIR --log FILE

Topic partition counts come from ``STREAMS_PARTITIONS_<TOPIC>`` (the test passes its own).
``CRASH_APP_CRASH_AFTER=N`` makes the worker SIGKILL itself at its N-th pass of the commit protocol
point ``CRASH_APP_CRASH_POINT`` (one of ``CRASH_POINTS``, or ``random``): a crash in the middle of a
commit of any of the four processors.

Every ``step.run`` of the functions below is a call of :func:`work`, which appends to the side-effect
log (``O_APPEND``, one JSON object per line, one ``write`` each):

- ``S`` when an execution starts, ``E`` when it returns, ``F`` when it raises, all with
  ``n`` (the trigger's ``data.n``), ``step``, ``token`` (unique per execution), ``pid`` and ``t``
  (wall clock, seconds);

so the test counts executions across process deaths and tells an interrupted execution (``S``
without ``E``/``F``) from a finished one. The token is also in the step's output, which ties the
memoized result to one execution.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from processors.engine import Engine, EngineSettings  # noqa: E402
from processors.executor import ExecutorSettings  # noqa: E402
from processors.runtime.checkpoint import sigkill_at  # noqa: E402
from processors.runtime.worker import run_worker  # noqa: E402
from streams import App, Event, Step, StreamsConfig  # noqa: E402

LOG_ENV = "CRASH_APP_LOG"
#: Trigger of :func:`three_steps`.
STEPS_TRIGGER = "crash/start"
#: Trigger of :func:`await_payment`, and the event its wait matches on ``data.order``.
WAIT_TRIGGER = "crash/order"
PAID = "crash/paid"
#: Runs of ``three-steps`` whose ``n`` is a multiple of this fail step ``b`` once (a retry).
FAIL_ONCE_EVERY = 5
#: Longest ``step.run`` execution, seconds.
MAX_STEP_S = 0.3


def log_line(kind: str, **fields: Any) -> None:
    """Appends one line to the side-effect log in one ``write`` (atomic for a line this small)."""
    line = json.dumps({"kind": kind, "pid": os.getpid(), "t": time.time(), **fields}) + "\n"
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _first_execution(n: int, step: str) -> bool:
    """Whether no execution of this step of run ``n`` got here before (a marker file, O_EXCL)."""
    marks = Path(os.environ[LOG_ENV] + ".marks")
    marks.mkdir(exist_ok=True)
    try:
        os.close(os.open(marks / f"{step}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def work(n: int, step: str, value: int, note: str | None = None) -> dict[str, Any]:
    """One ``step.run`` execution: logs, sleeps 0-300 ms, computes ``value`` by the step's rule."""
    token = uuid.uuid4().hex[:12]
    log_line("S", n=n, step=step, token=token, note=note)
    time.sleep(random.uniform(0, MAX_STEP_S))
    if step == "b" and n % FAIL_ONCE_EVERY == 0 and _first_execution(n, step):
        log_line("F", n=n, step=step, token=token)
        raise RuntimeError(f"injected failure of execution {token}")
    result = {"a": value * 2, "b": value + 1, "c": value * 3}.get(step, value)
    log_line("E", n=n, step=step, token=token, value=result)
    return {"value": result, "token": token, "pid": os.getpid()}


def expected_value(n: int) -> int:
    """What ``three-steps`` computes for ``n``: c(b(a(n)))."""
    return (n * 2 + 1) * 3


def build_app(config: StreamsConfig) -> App:
    """The app with the two functions the tests drive."""
    app = App(config.namespace, config)
    wait_timeout = os.environ.get("CRASH_APP_WAIT_TIMEOUT", "8s")

    @app.function(id="three-steps", trigger=STEPS_TRIGGER)
    async def three_steps(event: Event, step: Step) -> dict[str, Any]:
        n = event.data["n"]
        a = await step.run("a", work, n, "a", n)
        b = await step.run("b", work, n, "b", a["value"])
        await step.sleep("pause", "1s")
        c = await step.run("c", work, n, "c", b["value"])
        return {"n": n, "value": c["value"], "tokens": [a["token"], b["token"], c["token"]]}

    @app.function(id="await-payment", trigger=WAIT_TRIGGER)
    async def await_payment(event: Event, step: Step) -> dict[str, Any]:
        n = event.data["n"]
        await step.run("before", work, n, "before", n)
        paid = await step.wait_for_event("pay", event=PAID, match="data.order", timeout=wait_timeout)
        paid_id = None if paid is None else paid.id
        after = await step.run("after", work, n, "after", n, paid_id)
        return {"n": n, "paid": paid_id, "token": after["token"]}

    return app


def _crash_hook_from_env() -> Any:
    after = os.environ.get("CRASH_APP_CRASH_AFTER")
    if not after:
        return None
    return sigkill_at(os.environ.get("CRASH_APP_CRASH_POINT", "random"), int(after))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    args = parser.parse_args()
    os.environ[LOG_ENV] = str(args.log)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
    )
    config = StreamsConfig.from_env(namespace=args.namespace, bootstrap_servers=args.bootstrap)
    app = build_app(config)
    engine = Engine(app, EngineSettings(executor=ExecutorSettings(retry_base_ms=50, retry_cap_ms=200)))
    logging.getLogger("crash_app").info("worker pid %d starting", os.getpid())
    hook = _crash_hook_from_env()
    if hook is None:
        return engine.run(state_dir=args.state_dir, mode="threads")
    # Engine.run with a crash hook passed to every loop.
    app.create_topics()
    engine.start_index_sync()
    try:
        return run_worker(
            config, engine.processors, state_dir=args.state_dir, mode="threads", crash_hook=hook
        )
    finally:
        engine.close()


if __name__ == "__main__":
    raise SystemExit(main())
