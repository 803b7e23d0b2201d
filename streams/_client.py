"""Producing events to the app's ``events`` topic.

The producer is idempotent with ``acks=all`` so a retry inside librdkafka never writes an event
twice, and uses ``murmur2_random`` so keyed records land on the partition a Java producer would
choose. ``send`` waits for every acknowledgement: when it returns, the events are durable.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any, Literal

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import Message, Producer

from streams._codec import EventCodec
from streams._config import StreamsConfig, producer_defaults
from streams._event import Event
from streams.errors import DeliveryError, UsageError

EventFormat = Literal["json", "avro"]

_FLUSH_TIMEOUT_S = 30.0


class EventClient:
    """Sends events; one instance holds one producer and is safe to share between threads.

    Args:
        config: The app's configuration.
        event_format: Wire format for sent events (``json`` or Confluent-framed ``avro``).
    """

    def __init__(self, config: StreamsConfig, *, event_format: EventFormat = "json") -> None:
        if event_format not in ("json", "avro"):
            raise UsageError(f"event_format must be 'json' or 'avro', got {event_format!r}")
        self._config = config
        self._topic = config.topic("events")
        self._codec = EventCodec.from_config(config)
        self._format: EventFormat = event_format
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    def _get_producer(self) -> Producer:
        with self._lock:
            if self._producer is None:
                conf: dict[str, Any] = {
                    **producer_defaults(),
                    "linger.ms": 1,
                    **self._config.client_config(),
                }
                self._producer = Producer(conf)
            return self._producer

    def encode(self, event: Event) -> bytes:
        """Encodes one event in the client's wire format (size limit enforced)."""
        if self._format == "avro":
            return self._codec.encode_avro(event)
        return self._codec.encode_json(event)

    def send(self, events: Event | Iterable[Event], *, key: str | None = None) -> list[str]:
        """Produces events and waits until the broker has acknowledged all of them.

        Args:
            events: One event or several.
            key: Record key for every event; defaults to each event's id.

        Returns:
            The ids of the sent events, in order.

        Raises:
            EventValidationError: An event is too large (nothing is sent).
            DeliveryError: The broker did not acknowledge some events.
        """
        batch = [events] if isinstance(events, Event) else list(events)
        for item in batch:
            if not isinstance(item, Event):
                raise UsageError(f"send() takes Event objects, got {type(item).__name__}")
        payloads = [self.encode(event) for event in batch]
        producer = self._get_producer()
        failures: list[str] = []

        def on_delivery(err: ConfluentKafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(f"{msg.key()!r}: {err.str()}")

        for event, payload in zip(batch, payloads, strict=True):
            record_key = (key if key is not None else event.id).encode()
            while True:
                try:
                    producer.produce(self._topic, payload, record_key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        remaining = producer.flush(_FLUSH_TIMEOUT_S)
        if remaining:
            failures.append(f"{remaining} events not acknowledged within {_FLUSH_TIMEOUT_S:.0f}s")
        if failures:
            raise DeliveryError(f"sending to {self._topic} failed: " + "; ".join(failures[:5]))
        return [event.id for event in batch]

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        """Produces one raw record to a topic of the app and waits for its acknowledgement.

        Raises:
            DeliveryError: The broker did not acknowledge it.
        """
        producer = self._get_producer()
        failures: list[str] = []

        def on_delivery(err: ConfluentKafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        producer.produce(self._config.topic(topic), value, key, on_delivery=on_delivery)
        if producer.flush(_FLUSH_TIMEOUT_S) or failures:
            raise DeliveryError(f"producing to {self._config.topic(topic)} failed: {failures or 'timed out'}")

    async def send_async(self, events: Event | Iterable[Event], *, key: str | None = None) -> list[str]:
        """Like :meth:`send`, without blocking the event loop."""
        return await asyncio.to_thread(self.send, events, key=key)

    def close(self) -> None:
        """Flushes outstanding events and releases the producer."""
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            remaining = producer.flush(_FLUSH_TIMEOUT_S)
            producer.close()
            if remaining:
                raise DeliveryError(f"{remaining} events still unacknowledged at close")
