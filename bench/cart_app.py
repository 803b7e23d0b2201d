"""The app the benchmarks run in a worker subprocess (``python -m streams worker bench.cart_app:app``).

Two functions, selected by ``BENCH_FUNCTIONS`` (comma-separated, default ``cart``):

- ``cart`` — the cart flow of ``../shared/benchmark.md``: ``cart/product.added`` starts a run that
  waits up to ``data.timeout`` (default ``30s``) for ``cart/purchased`` with the same
  ``data.cart_id``, then runs one side-effect step, ``record``, whose first action is to append
  ``<cart_id> <purchased|timeout> <wall time>`` to ``BENCH_RECORD_FILE``;
- ``steps`` — ``bench/steps`` starts a run of three ``step.run`` steps (no waits); each appends
  ``<key> <step index> <start wall time> <end wall time>`` to ``BENCH_RECORD_FILE``.

Settings come from the usual ``STREAMS_*`` variables (namespace, bootstrap servers, partitions).
Appends use one ``O_APPEND`` write per line, so lines of concurrent steps (threads, or the executor
child of ``--mode processes``) never interleave.
"""

from __future__ import annotations

import os
import time

from streams import App, Event, Step

app = App(os.environ.get("STREAMS_NAMESPACE", "cart"))
_FUNCTIONS = {name.strip() for name in os.environ.get("BENCH_FUNCTIONS", "cart").split(",")}
_fd: int | None = None


def _append(line: str) -> None:
    global _fd
    if _fd is None:
        path = os.environ.get("BENCH_RECORD_FILE", "bench-records.txt")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, line.encode())


def record(cart_id: str, outcome: str) -> float:
    """The cart flow's side effect: records when it started."""
    started = time.time()
    _append(f"{cart_id} {outcome} {started:.6f}\n")
    return started


def mark(key: str, index: int) -> int:
    """One step of the three-step function: records its start and end."""
    started = time.time()
    ended = time.time()
    _append(f"{key} {index} {started:.6f} {ended:.6f}\n")
    return index


if "cart" in _FUNCTIONS:

    @app.function(id="cart-flow", trigger="cart/product.added")
    async def cart_flow(event: Event, step: Step) -> None:
        purchased = await step.wait_for_event(
            "wait-for-purchase",
            event="cart/purchased",
            match="data.cart_id",
            timeout=event.data.get("timeout", "30s"),
        )
        outcome = "timeout" if purchased is None else "purchased"
        await step.run("record", record, event.data["cart_id"], outcome)


if "steps" in _FUNCTIONS:

    @app.function(id="three-steps", trigger="bench/steps")
    async def three_steps(event: Event, step: Step) -> None:
        key = event.data["key"]
        await step.run("one", mark, key, 1)
        await step.run("two", mark, key, 2)
        await step.run("three", mark, key, 3)
