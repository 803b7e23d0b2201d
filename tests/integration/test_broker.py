"""The session broker serves clients and exactly-once transactions; the local broker's lifecycle."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams._broker import LocalKafka
from streams._broker_cli import kafka_group

pytestmark = pytest.mark.kafka


def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)


def _consumer(bootstrap: str, group: str, **extra: object) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            **extra,
        }
    )


def _poll_values(consumer: Consumer, count: int, timeout: float = 30.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        assert message.error() is None, message.error()
        got.append(message)
    return got


def test_produce_consume_round_trip(
    kafka_bootstrap: str, namespace: str, group_id: Callable[[str], str]
) -> None:
    topic = f"{namespace}.round-trip"
    _create_topic(kafka_bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for i in range(10):
        producer.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    assert producer.flush(30) == 0

    consumer = _consumer(kafka_bootstrap, group_id("round-trip"))
    consumer.subscribe([topic])
    try:
        got = _poll_values(consumer, 10)
    finally:
        consumer.close()
    assert sorted(m.value() for m in got) == sorted(f"v{i}".encode() for i in range(10))


def test_transactions_commit_abort_and_carry_consumer_offsets(
    kafka_bootstrap: str, namespace: str, group_id: Callable[[str], str]
) -> None:
    source, sink = f"{namespace}.in", f"{namespace}.out"
    _create_topic(kafka_bootstrap, source)
    _create_topic(kafka_bootstrap, sink)
    plain = Producer({"bootstrap.servers": kafka_bootstrap})
    plain.produce(source, key=b"k", value=b"input")
    assert plain.flush(30) == 0

    # Consume -> produce -> commit offsets in one transaction (EOS v2), then an aborted one.
    group = group_id("eos")
    consumer = _consumer(kafka_bootstrap, group)
    consumer.subscribe([source])
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{namespace}-tx"})
    try:
        producer.init_transactions(60)
        [record] = _poll_values(consumer, 1)
        producer.begin_transaction()
        producer.produce(sink, key=record.key(), value=record.value() + b"-committed")
        offsets = [TopicPartition(source, record.partition(), record.offset() + 1)]
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)

        producer.begin_transaction()
        producer.produce(sink, key=b"k", value=b"aborted")
        producer.flush(30)
        producer.abort_transaction(30)

        producer.begin_transaction()
        producer.produce(sink, key=b"k", value=b"end")
        producer.commit_transaction(30)

        committed = consumer.committed([TopicPartition(source, 0)], timeout=30)
        assert committed[0].offset == 1
    finally:
        consumer.close()

    reader = _consumer(kafka_bootstrap, group_id("reader"))
    reader.subscribe([sink])
    try:
        got = _poll_values(reader, 2)
    finally:
        reader.close()
    assert [m.value() for m in got] == [b"input-committed", b"end"]


@pytest.mark.skipif(shutil.which("java") is None, reason="the local broker needs Java")
def test_local_broker_start_is_idempotent_and_survives_restart(tmp_path: Path) -> None:
    kafka = LocalKafka.from_env()
    data = tmp_path / "broker"
    runner = CliRunner()
    try:
        bootstrap = kafka.start(data_dir=data)
        assert (data / "bootstrap").read_text().strip() == bootstrap
        assert (data / "logs" / "server.log").stat().st_size > 0

        again = runner.invoke(kafka_group, ["start", "--data-dir", str(data)])
        assert again.exit_code == 0, again.output
        assert again.stdout.strip().splitlines()[-1] == bootstrap

        status = kafka.status(data)
        assert status.running and status.bootstrap == bootstrap and status.pid is not None
        shown = runner.invoke(kafka_group, ["status", "--data-dir", str(data)])
        assert shown.exit_code == 0 and f"bootstrap: {bootstrap}" in shown.output
        _create_topic(bootstrap, "kept")

        stopped = runner.invoke(kafka_group, ["stop", "--data-dir", str(data)])
        assert stopped.exit_code == 0 and f"stopped (pid {status.pid})" in stopped.output
        assert not kafka.status(data).running
        assert runner.invoke(kafka_group, ["status", "--data-dir", str(data)]).exit_code == 3

        # A restart keeps the port (still free) and the data.
        assert kafka.start(data_dir=data) == bootstrap
        topics = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30).topics
        assert "kept" in topics
    finally:
        kafka.stop(data)
    assert not kafka.status(data).running
