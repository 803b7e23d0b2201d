"""Fixtures of the runtime integration tests: topics, worker subprocesses, in-process loops."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from counting import CountingProcessor, create_counting_topics, make_config, test_runtime  # noqa: E402
from runtime_harness import LoopThread, Workers  # noqa: E402

from processors.runtime import ProcessorLoop  # noqa: E402
from streams._config import StreamsConfig  # noqa: E402


@pytest.fixture
def counting_config(namespace: str, kafka_bootstrap: str, tmp_path: Path) -> StreamsConfig:
    config = make_config(kafka_bootstrap, namespace, tmp_path / "state")
    create_counting_topics(config, partitions=4)
    return config


@pytest.fixture
def workers(counting_config: StreamsConfig, tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    pool = Workers(counting_config, log_dir)
    yield pool
    for worker in pool.started:
        worker.kill()


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
