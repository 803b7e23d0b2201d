"""JSON and Avro events survive a real broker byte for byte, written by a plain producer."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams import StreamsConfig
from streams._codec import EventCodec
from streams._event import Event

pytestmark = pytest.mark.kafka


def _create_topic(config: StreamsConfig, name: str) -> None:
    admin = AdminClient(config.client_config())
    futures = admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    futures[name].result(timeout=30)


def _consume(config: StreamsConfig, topic: str, count: int) -> list[tuple[bytes | None, bytes, int]]:
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.roundtrip",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes, int]] = []
    deadline = time.monotonic() + 60
    try:
        while len(out) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            out.append((msg.key(), msg.value(), msg.timestamp()[1]))
    finally:
        consumer.close()
    return out


def test_json_and_avro_events_round_trip_through_kafka(streams_config: StreamsConfig) -> None:
    topic = streams_config.topic("events")
    _create_topic(streams_config, topic)
    codec = EventCodec.from_config(streams_config)
    events = [
        Event(name="cart/product.added", data={"cart_id": 'c"1\\', "qty": 2}),
        Event(name="cart/purchased", data={"cart_id": "c1", "total": 9.5, "items": [{"sku": "ü"}]}, v="1"),
        Event(name="user/signup", data={}, user={"id": "u1"}),
    ]
    payloads = [codec.encode_json(e) for e in events] + [codec.encode_avro(e) for e in events]
    producer = Producer(streams_config.client_config())
    for payload, event in zip(payloads, events * 2, strict=True):
        producer.produce(topic, key=event.id.encode(), value=payload)
    # A foreign producer's minimal JSON event: no id, no ts.
    producer.produce(topic, key=b"bare", value=b' {"name": "legacy/ping", "data": {"n": 1}}')
    assert producer.flush(30) == 0

    records = _consume(streams_config, topic, len(payloads) + 1)
    assert len(records) == len(payloads) + 1
    assert sorted(value for _, value, _ in records) == sorted(
        [*payloads, b' {"name": "legacy/ping", "data": {"n": 1}}']
    )
    decoded: dict[str, list[Event]] = {}
    for key, value, timestamp in records:
        event = codec.decode(value, default_id=f"{topic}-{key!r}", default_ts=timestamp)
        decoded.setdefault(event.id, []).append(event)
    for event in events:
        assert decoded[event.id] == [event, event]  # once as JSON, once as Avro
    (bare,) = decoded[f"{topic}-{b'bare'!r}"]
    assert bare.name == "legacy/ping" and bare.data == {"n": 1}
    assert abs(bare.ts - time.time() * 1000) < 120_000
