"""Exactly-once counting on a real broker: exact counts, one output per input, poison to the DLQ."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from counting import OUTPUT, POISON_NAME, check_outputs, produce_inputs, read_topic

from streams._config import StreamsConfig

pytestmark = pytest.mark.kafka


def test_counting_100k_records_gives_one_output_per_input_and_exact_counts(
    counting_config: StreamsConfig, start_loop: Callable[..., object]
) -> None:
    inputs = produce_inputs(counting_config, 100_000)
    handle = start_loop(counting_config)
    outputs = read_topic(counting_config, counting_config.topic(OUTPUT), inputs.countable, timeout_s=240)
    assert handle.stop() == 0  # type: ignore[attr-defined]
    check_outputs(outputs, inputs)
    metrics = handle.loop.metrics  # type: ignore[attr-defined]
    assert metrics.records == 100_000
    assert metrics.aborts == 0


def test_poison_records_land_in_the_dlq_with_headers_and_processing_continues(
    counting_config: StreamsConfig, start_loop: Callable[..., object]
) -> None:
    inputs = produce_inputs(counting_config, 4000, poison_every=400, garbage_every=700)
    assert inputs.poison and inputs.garbage
    handle = start_loop(counting_config)
    outputs = read_topic(counting_config, counting_config.topic(OUTPUT), inputs.countable, timeout_s=120)
    dead = read_topic(
        counting_config,
        counting_config.topic("dlq"),
        inputs.poison + inputs.garbage,
        timeout_s=30,
        settle_s=1,
    )
    assert handle.stop() == 0  # type: ignore[attr-defined]
    check_outputs(outputs, inputs)
    assert len(dead) == inputs.poison + inputs.garbage
    kinds = {"NonRetriableError": 0, "SerializationError": 0}
    for key, value, header_list in dead:
        headers = dict(header_list)
        assert key is not None and key.startswith(b"k")
        assert headers["streams.processor"] == b"counting"
        assert headers["streams.source.topic"] == counting_config.topic("counting-input").encode()
        assert int(headers["streams.source.partition"]) in range(4)
        assert int(headers["streams.source.offset"]) >= 0
        error_type = headers["streams.error.type"].decode()
        kinds[error_type] += 1
        if error_type == "NonRetriableError":
            assert headers["streams.error.stage"] == b"process"
            assert value is not None and POISON_NAME.encode() in value  # the original bytes
            assert headers["streams.error.message"].startswith(b"poison event e")
        else:
            assert headers["streams.error.stage"] == b"decode"
            assert value == b"\xffnot an event"
            assert b"0xff" in headers["streams.error.message"]
    assert kinds == {"NonRetriableError": inputs.poison, "SerializationError": inputs.garbage}
    # Each DLQ record names its source exactly once.
    coordinates = {
        (h["streams.source.partition"], h["streams.source.offset"]) for _, _, hl in dead for h in [dict(hl)]
    }
    assert len(coordinates) == len(dead)
