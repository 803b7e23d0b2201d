import json
import subprocess
import sys

import pytest
from confluent_kafka import Consumer

from streams import StreamsConfig
from streams._app import App
from streams._codec import EventCodec
from streams._event import Event
from streams.errors import EventValidationError

pytestmark = pytest.mark.kafka


def _consume(config: StreamsConfig, count: int) -> list[tuple[bytes, bytes]]:
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([config.topic("events")])
    out: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append((msg.key(), msg.value()))
            if len(out) >= count:
                break
    finally:
        consumer.close()
    return out


def test_json_and_avro_events_round_trip(streams_config: StreamsConfig) -> None:
    sent = [Event(name="cart/product.added", data={"cart_id": 'c"1\\', "n": i}) for i in range(3)]
    with App(streams_config.namespace, streams_config) as app:
        app.create_topics()
        assert app.send(sent[:2]) == [e.id for e in sent[:2]]
    with App(streams_config.namespace, streams_config, event_format="avro") as app:
        assert app.send(sent[2]) == [sent[2].id]

    records = _consume(streams_config, 3)
    codec = EventCodec.from_config(streams_config)
    decoded = {codec.decode(value).id: (key, value) for key, value in records}
    assert set(decoded) == {e.id for e in sent}
    for event in sent:
        key, value = decoded[event.id]
        assert key == event.id.encode()
        assert codec.decode(value) == event
    assert decoded[sent[0].id][1].startswith(b"{")
    assert decoded[sent[2].id][1][0] == 0  # Confluent wire format magic byte


def test_send_async(streams_config: StreamsConfig) -> None:
    import asyncio

    with App(streams_config.namespace, streams_config) as app:
        app.create_topics()
        ids = asyncio.run(app.send_async(Event(name="a/b", data={})))
    assert len(ids) == 1


def test_oversize_event_is_rejected_before_sending(streams_config: StreamsConfig) -> None:
    config = streams_config.replace(max_event_bytes=2048)
    with App(config.namespace, config) as app, pytest.raises(EventValidationError, match="2048"):
        app.send(Event(name="big", data={"blob": "x" * 4096}))


def test_cli_send_puts_an_event_on_the_topic(streams_config: StreamsConfig) -> None:
    with App(streams_config.namespace, streams_config) as app:
        app.create_topics()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "-n",
            streams_config.namespace,
            "-b",
            str(streams_config.bootstrap_servers),
            "send",
            "app/account.created",
            json.dumps({"user_id": 7}),
            "--id",
            "evt-cli-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "evt-cli-1"
    ((key, value),) = _consume(streams_config, 1)
    event = EventCodec.from_config(streams_config).decode(value)
    assert (key, event.name, event.data, event.id) == (
        b"evt-cli-1",
        "app/account.created",
        {"user_id": 7},
        "evt-cli-1",
    )


def test_cli_reports_bad_json_clearly(streams_config: StreamsConfig) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams", "-n", streams_config.namespace, "send", "a/b", "{nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "not JSON" in result.stderr
