"""Restore: only the changelog tail after an unclean exit; everything when the state is gone."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from counting import OUTPUT, check_outputs, produce_inputs, read_topic
from runtime_harness import Workers

from streams._config import StreamsConfig

pytestmark = pytest.mark.kafka

CHANGELOG = "counting-counts-changelog"


def _count_records(config: StreamsConfig, topic: str, isolation: str) -> int:
    consumer = Consumer(
        {**config.client_config(), "group.id": f"{config.namespace}.count", "isolation.level": isolation}
    )
    total = 0
    try:
        for partition in range(4):
            tp = TopicPartition(topic, partition, 0)
            _, end = consumer.get_watermark_offsets(tp, timeout=30)
            if end == 0:
                continue
            consumer.assign([tp])
            while True:
                batch = consumer.consume(1000, 1.0)
                total += sum(1 for m in batch if m.error() is None)
                if not batch or consumer.position([tp])[0].offset >= end:
                    break
    finally:
        consumer.close()
    return total


def test_restart_replays_only_the_changelog_tail_and_a_deleted_state_in_full(
    workers: Workers, counting_config: StreamsConfig, start_loop: Callable[..., Any]
) -> None:
    config = counting_config
    state = config.state_dir
    inputs = produce_inputs(config, 20_000)

    # 1. Killed with changelog records flushed but not committed: the restart aborts them.
    first = workers.start(state, crash_after=2, crash_point="after_flush")
    assert first.wait(90) == -9, first.log.read_text()
    # 2. Killed between the Kafka commit and the store write: the stores lag one transaction.
    second = workers.start(state, crash_after=2, crash_point="after_commit")
    assert second.wait(90) == -9, second.log.read_text()

    handle = start_loop(config)
    outputs = read_topic(config, config.topic(OUTPUT), inputs.countable, timeout_s=120)
    assert handle.stop() == 0
    check_outputs(outputs, inputs)
    tail = handle.loop.metrics.restore
    committed = _count_records(config, config.topic(CHANGELOG), "read_committed")
    written = _count_records(config, config.topic(CHANGELOG), "read_uncommitted")
    assert written > committed, "the first crash should have left aborted changelog records"
    # Only the one unapplied transaction is replayed: at most one record per key (500 keys).
    assert 0 < tail.records_restored <= 500 < committed
    assert sum(tail.per_partition.values()) == tail.records_restored

    # 3. Without the state directory every changelog is replayed from offset 0.
    shutil.rmtree(state)
    handle = start_loop(config)
    more = produce_inputs(config, 2000, start=20_000, into=inputs)
    outputs = read_topic(config, config.topic(OUTPUT), more.countable, timeout_s=120)
    assert handle.stop() == 0
    full = handle.loop.metrics.restore
    assert full.full_restores == 4
    assert full.records_restored == committed  # aborted records are never applied
    check_outputs(outputs, inputs)  # counts continue exactly from the restored state
