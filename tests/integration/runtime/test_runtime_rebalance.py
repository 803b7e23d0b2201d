"""Two workers of one role: partitions move between them without losing or duplicating state."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from counting import OUTPUT, Inputs, check_outputs, produce_inputs, read_topic
from runtime_harness import Workers

from streams._config import StreamsConfig

pytestmark = pytest.mark.kafka


def test_second_worker_joins_mid_run_and_first_stops_mid_run_counts_stay_exact(
    workers: Workers, counting_config: StreamsConfig, tmp_path: Path
) -> None:
    config = counting_config
    inputs = Inputs(per_key=Counter())
    producer = threading.Thread(
        target=produce_inputs, args=(config, 30_000), kwargs={"into": inputs, "rate": 2000.0}
    )
    producer.start()
    first = workers.start(tmp_path / "a")
    time.sleep(4)
    second = workers.start(tmp_path / "b")
    time.sleep(5)
    first.terminate()
    assert first.wait(60) == 0, first.log.read_text()
    producer.join()
    outputs = read_topic(config, config.topic(OUTPUT), inputs.countable, timeout_s=120)
    second.terminate()
    assert second.wait(60) == 0, second.log.read_text()
    check_outputs(outputs, inputs)

    first_log, second_log = first.log.read_text(), second.log.read_text()
    assert "revoked partitions" in first_log  # gave some to the second worker
    assert second_log.count("assigned partitions") >= 2  # got some, then the first one's rest
