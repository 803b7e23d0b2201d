"""Rolling deploys: a router routes (event, path) pairs that only newer workers' code waits on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from processors.engine import Engine, EngineSettings
from processors.records import CODEC, WAIT_COMMAND, body
from streams import App, Event, Step, StreamsConfig
from streams._matchkey import match_key

pytestmark = pytest.mark.kafka


def test_router_of_old_code_forwards_pairs_published_by_new_code(
    streams_config: StreamsConfig, tmp_path: Path
) -> None:
    old = App(streams_config.namespace, streams_config)

    @old.function(id="noop", trigger="order/placed")
    async def noop(event: Event, step: Step) -> None:
        return None

    new = App(streams_config.namespace, streams_config)

    @new.function(id="ship-watch", trigger="order/placed")
    async def ship_watch(event: Event, step: Step) -> None:
        await step.wait_for_event("shipped", event="order/shipped", match="data.order_id", timeout="1h")

    old.create_topics()
    # The new deployment's worker publishes its index (it runs no router itself here).
    publisher = Engine(new, EngineSettings(roles=("matcher",)))
    assert ("order/shipped", "data.order_id") in publisher.code_index
    publisher.start_index_sync()
    publisher.close()

    router_engine = Engine(old, EngineSettings(roles=("router",)))
    assert ("order/shipped", "data.order_id") not in router_engine.code_index
    stop = threading.Event()
    thread = threading.Thread(
        target=router_engine.run,
        kwargs={"state_dir": tmp_path, "install_signal_handlers": False, "stop_event": stop},
        daemon=True,
    )
    thread.start()
    reader = Consumer(
        {
            **streams_config.client_config(),
            "group.id": f"{streams_config.namespace}.reader",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    reader.subscribe([streams_config.topic("waits")])
    expected = match_key("order/shipped", "data.order_id", 42)
    try:
        deadline = time.monotonic() + 60
        found = False
        while time.monotonic() < deadline and not found:
            old.send(Event(name="order/shipped", data={"order_id": 42}))
            for message in reader.consume(100, timeout=2):
                if message.error() is None and message.key() == expected:
                    kind, _ = body(CODEC.decode(WAIT_COMMAND, message.value()))
                    found = kind == "CorrelatedEvent"
        assert found, "the old router never forwarded order/shipped under data.order_id"
    finally:
        reader.close()
        stop.set()
        thread.join(timeout=60)
        old.close()
        new.close()
