"""Fixtures of the runtime integration tests: topics, worker subprocesses, in-process loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from counting import (  # noqa: E402
    CountingProcessor,
    create_counting_topics,
    make_config,
    test_runtime,
)

from processors.runtime import ProcessorLoop  # noqa: E402
from streams._config import StreamsConfig  # noqa: E402

SCRIPT = HERE / "counting.py"


@pytest.fixture
def counting_config(namespace: str, kafka_bootstrap: str, tmp_path: Path) -> StreamsConfig:
    config = make_config(kafka_bootstrap, namespace, tmp_path / "state")
    create_counting_topics(config, partitions=4)
    return config


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)


@dataclass
class Workers:
    config: StreamsConfig
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def start(self, state_dir: Path, *, crash_after: int | None = None, crash_point: str = "random") -> WorkerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("COUNTING_CRASH_AFTER", None)
        if crash_after is not None:
            env["COUNTING_CRASH_AFTER"] = str(crash_after)
            env["COUNTING_CRASH_POINT"] = crash_point
        log = self.log_dir / f"worker-{len(self.started)}.log"
        assert self.config.bootstrap_servers is not None
        command = [
            sys.executable,
            str(SCRIPT),
            "--bootstrap",
            self.config.bootstrap_servers,
            "--namespace",
            self.config.namespace,
            "--state-dir",
            str(state_dir),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        worker = WorkerProcess(process, log)
        self.started.append(worker)
        return worker


@pytest.fixture
def workers(counting_config: StreamsConfig, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(counting_config, log_dir)
    yield pool
    for worker in pool.started:
        worker.kill()


@dataclass
class LoopThread:
    loop: ProcessorLoop
    thread: threading.Thread
    result: list[int]

    def stop(self, timeout: float = 60.0) -> int:
        self.loop.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "loop did not stop"
        return self.result[0]


@pytest.fixture
def start_loop() -> Iterator[Callable[..., LoopThread]]:
    running: list[LoopThread] = []

    def start(config: StreamsConfig, **runtime: Any) -> LoopThread:
        loop = ProcessorLoop(config, CountingProcessor(), test_runtime(**runtime))
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(loop.run()), name="counting-loop")
        thread.start()
        handle = LoopThread(loop, thread, result)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        if handle.thread.is_alive():
            handle.loop.stop()
            handle.thread.join(60)
