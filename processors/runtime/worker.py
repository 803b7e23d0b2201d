"""A worker process running several processor roles, with graceful shutdown on SIGTERM.

Responsibilities:

- run one :class:`~processors.runtime.loop.ProcessorLoop` per processor, on threads of this
  process (``mode="threads"``) or in one child process each (``mode="processes"``);
- on SIGTERM or SIGINT: ask every loop to finish its batch, commit, close its stores and leave its
  group; a second signal does not skip that (kill -9 does, safely: restore handles it);
- when one loop stops on a fatal error, stop the others too, and exit non-zero so a supervisor
  restarts the worker.

Which mode is faster depends on the load: on the 2-core benchmark machine processes win when two
or more busy roles compete for the interpreter (the GIL serialises their Python code), threads win
on memory and start-up. ``docs/performance.md`` has the numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from processors.runtime.checkpoint import CrashHook
from processors.runtime.config import RuntimeConfig
from processors.runtime.loop import EXIT_FATAL, ProcessorLoop
from processors.runtime.processor import Processor
from streams._config import StreamsConfig
from streams.errors import UsageError

logger = logging.getLogger(__name__)

WorkerMode = Literal["threads", "processes"]
_JOIN_POLL_S = 0.2
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_worker(
    config: StreamsConfig,
    processors: Sequence[Processor[Any]],
    *,
    runtime: RuntimeConfig | None = None,
    state_dir: Path | str | None = None,
    mode: WorkerMode = "processes",
    install_signal_handlers: bool = True,
    stop_event: threading.Event | None = None,
    crash_hook: CrashHook | None = None,
) -> int:
    """Runs the given processor roles until SIGTERM/SIGINT, ``stop_event`` or a fatal error.

    Args:
        config: App configuration.
        processors: The roles to run; names must be unique.
        runtime: Runtime settings.
        state_dir: ``--state-dir``: overrides ``config.state_dir`` and ``runtime.state_dir``.
        mode: ``processes`` (a child process per role; the default, about 2.5 times the
            throughput of ``threads`` with two busy roles on two cores) or ``threads`` (one
            process; less memory). A single processor always runs in this process.
        install_signal_handlers: Handle SIGTERM/SIGINT (only possible on the main thread).
        stop_event: Set it to stop the worker (threads mode; also works in processes mode, where
            it is polled by the parent).
        crash_hook: Passed to every loop (tests).

    Returns:
        0 after a clean stop; non-zero when a loop stopped on a fatal error.

    Raises:
        UsageError: No processors, duplicate names, or an unknown mode.
    """
    names = [p.name for p in processors]
    if not processors:
        raise UsageError("run_worker needs at least one processor")
    if len(set(names)) != len(names):
        raise UsageError(f"processor names must be unique, got {names}")
    if mode not in ("threads", "processes"):
        raise UsageError(f"mode must be 'threads' or 'processes', got {mode!r}")
    runtime = runtime or RuntimeConfig()
    if state_dir is not None:
        runtime = dataclasses.replace(runtime, state_dir=Path(state_dir))
    stop = stop_event or threading.Event()
    if mode == "processes" and len(processors) > 1:
        return _run_processes(config, processors, runtime, stop, install_signal_handlers, crash_hook)
    return _run_threads(config, processors, runtime, stop, install_signal_handlers, crash_hook)


def _install(handler: Any) -> dict[int, Any]:
    previous: dict[int, Any] = {}
    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _run_threads(
    config: StreamsConfig,
    processors: Sequence[Processor[Any]],
    runtime: RuntimeConfig,
    stop: threading.Event,
    install_signal_handlers: bool,
    crash_hook: CrashHook | None,
) -> int:
    loops = [ProcessorLoop(config, p, runtime, crash_hook=crash_hook) for p in processors]
    codes: dict[str, int] = {}

    def run(loop: ProcessorLoop) -> None:
        try:
            codes[loop.name] = loop.run()
        except BaseException:
            logger.exception("%s: loop crashed", loop.name)
            codes[loop.name] = EXIT_FATAL
        if codes[loop.name] != 0:
            stop.set()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; finishing batches and stopping", signal.Signals(signum).name)
        stop.set()

    previous = _install(on_signal) if install_signal_handlers else {}
    threads = [threading.Thread(target=run, args=(loop,), name=f"processor-{loop.name}") for loop in loops]
    try:
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            if stop.wait(_JOIN_POLL_S):
                for loop in loops:
                    loop.stop()
                for thread in threads:
                    thread.join(_JOIN_POLL_S)
    finally:
        for loop in loops:
            loop.stop()
        for thread in threads:
            thread.join()
        _restore(previous)
    code = max(codes.values(), default=0)
    logger.info("worker stopped with exit code %d", code)
    return code


def _start_method(processors: Sequence[Processor[Any]], crash_hook: CrashHook | None) -> str:
    """``spawn`` when the processors can be pickled, else ``fork``.

    A forked child inherits only the forking thread: locks held by other threads of the parent
    (RocksDB's background threads, librdkafka's) stay locked forever in the child. ``spawn`` starts
    clean, so it is used whenever the processors pickle; ``fork`` is safe only when the parent has
    not yet created stores or Kafka clients, as in ``streams worker``.
    """
    try:
        pickle.dumps((list(processors), crash_hook))
    except Exception as exc:
        if threading.active_count() > 1:
            logger.warning(
                "processors cannot be pickled (%s); forking a process that runs %d threads may deadlock",
                exc,
                threading.active_count(),
            )
        return "fork"
    return "spawn"


def _child_main(
    config: StreamsConfig, processor: Processor[Any], runtime: RuntimeConfig, crash_hook: CrashHook | None
) -> None:
    code = _run_threads(config, [processor], runtime, threading.Event(), True, crash_hook)
    raise SystemExit(code)


def _run_processes(
    config: StreamsConfig,
    processors: Sequence[Processor[Any]],
    runtime: RuntimeConfig,
    stop: threading.Event,
    install_signal_handlers: bool,
    crash_hook: CrashHook | None,
) -> int:
    if _start_method(processors, crash_hook) == "spawn":
        context: Any = multiprocessing.get_context("spawn")
    else:
        context = multiprocessing.get_context("fork")
    children = [
        context.Process(
            target=_child_main,
            args=(config, p, runtime, crash_hook),
            name=f"processor-{p.name}",
            daemon=False,
        )
        for p in processors
    ]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s; stopping child processes", signal.Signals(signum).name)
        stop.set()

    previous = _install(on_signal) if install_signal_handlers else {}
    try:
        for child in children:
            child.start()
        stopping = False
        while any(child.is_alive() for child in children):
            failed = any(c.exitcode not in (None, 0) for c in children)
            if (stop.wait(_JOIN_POLL_S) or failed) and not stopping:
                stopping = True
                for child in children:
                    if child.is_alive() and child.pid is not None:
                        child.terminate()  # SIGTERM: the child finishes its batch and commits
    finally:
        for child in children:
            child.join()
        _restore(previous)
    code = max((c.exitcode or 0) if (c.exitcode or 0) >= 0 else EXIT_FATAL for c in children)
    logger.info("worker stopped with exit code %d", code)
    return code
