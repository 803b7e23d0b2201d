"""A zombie fenced by a newer instance with its transactional id stops with exit 1 and a clear line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from counting import OUTPUT, check_outputs, produce_inputs, read_topic
from runtime_harness import Workers

from streams._config import StreamsConfig

pytestmark = pytest.mark.kafka


def test_a_fenced_worker_stops_with_a_fatal_error_and_the_newer_one_finishes(
    workers: Workers, counting_config: StreamsConfig, tmp_path: Path
) -> None:
    config = counting_config
    inputs = produce_inputs(config, 3000)
    old = workers.start(tmp_path / "old")
    deadline = time.monotonic() + 60
    while "active from offset" not in old.log.read_text():
        assert time.monotonic() < deadline, old.log.read_text()
        time.sleep(0.2)
    # A second worker with a copy of the first one's state (same instance id, hence the same
    # transactional.id and group.instance.id) fences the first.
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "old", copy, ignore=shutil.ignore_patterns(".lock", "LOCK"))
    new = workers.start(copy)
    assert old.wait(60) == 1, old.log.read_text()
    assert "stopping on a fatal error" in old.log.read_text()
    more = produce_inputs(config, 2000, start=3000, into=inputs)
    outputs = read_topic(config, config.topic(OUTPUT), more.countable, timeout_s=120)
    new.terminate()
    assert new.wait(60) == 0, new.log.read_text()
    check_outputs(outputs, inputs)
