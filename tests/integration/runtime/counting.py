"""The counting processor used by the runtime's integration tests and ``bench/runtime_bench.py``.

It counts input events per key in a store and emits the running count for every input, with the
input's coordinates, so a reader can check "exactly one output per input" and exact final counts.

Run as a script it is a worker subprocess::

    python tests/integration/runtime/counting.py --bootstrap HOST:PORT --namespace NS --state-dir DIR

``COUNTING_CRASH_AFTER=N`` makes it SIGKILL itself at its N-th pass of the commit protocol point
``COUNTING_CRASH_POINT`` (one of ``CRASH_POINTS``, or ``random``): a crash in the middle of a commit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from processors.runtime import Context, EventDecoder, Processor, Record, RuntimeConfig, run_worker  # noqa: E402
from processors.runtime.checkpoint import BatchPolicy, sigkill_at  # noqa: E402
from streams._config import StreamsConfig  # noqa: E402
from streams._event import Event  # noqa: E402
from streams._topics import TopicSpec, create_topics  # noqa: E402
from streams.errors import NonRetriableError  # noqa: E402

INPUT = "counting-input"
OUTPUT = "counting-output"
POISON_NAME = "count/poison"


class CountingProcessor(Processor[Event]):
    """Counts events per key; emits ``"<in partition>:<in offset>:<count>"`` keyed like the input."""

    stores = ("counts",)
    decoder = EventDecoder()

    def __init__(self, name: str = "counting", input_topic: str = INPUT, output_topic: str = OUTPUT) -> None:
        self.name = name
        self.input_topic = input_topic
        self.output_topic = output_topic

    def process(self, record: Record[Event], ctx: Context) -> None:
        if record.value.name == POISON_NAME:
            raise NonRetriableError(f"poison event {record.value.id}")
        store = ctx.store("counts")
        key = record.key or b""
        raw = store.get(key)
        count = (int.from_bytes(raw, "big") if raw else 0) + 1
        store.put(key, count.to_bytes(8, "big"))
        ctx.produce(self.output_topic, key, f"{record.partition}:{record.offset}:{count}".encode())


def make_config(bootstrap: str, namespace: str, state_dir: Path | None = None) -> StreamsConfig:
    return StreamsConfig(
        namespace=namespace,
        bootstrap_servers=bootstrap,
        state_dir=state_dir or Path(".state"),
        partitions={"dlq": 1},
    )


def create_counting_topics(
    config: StreamsConfig, partitions: int = 4, input_topic: str = INPUT, output_topic: str = OUTPUT
) -> None:
    create_topics(
        config,
        [
            TopicSpec(config.topic(input_topic), partitions, "delete"),
            TopicSpec(config.topic(output_topic), partitions, "delete"),
            TopicSpec(config.topic("dlq"), 1, "delete"),
        ],
    )


def event_bytes(i: int, name: str = "count/add") -> bytes:
    return json.dumps({"name": name, "data": {"i": i}, "id": f"e{i}", "ts": 1_700_000_000_000 + i}).encode()


@dataclass
class Inputs:
    total: int = 0
    poison: int = 0
    garbage: int = 0
    per_key: Counter[bytes] | None = None

    @property
    def countable(self) -> int:
        return self.total - self.poison - self.garbage


def produce_inputs(
    config: StreamsConfig,
    count: int,
    *,
    keys: int = 500,
    start: int = 0,
    poison_every: int = 0,
    garbage_every: int = 0,
    into: Inputs | None = None,
    rate: float | None = None,
    topic: str = INPUT,
) -> Inputs:
    """Produces ``count`` events (keys ``k<i % keys>``); every n-th is poison or undecodable."""
    inputs = into or Inputs(per_key=Counter())
    assert inputs.per_key is not None
    producer = Producer({**config.client_config(), "linger.ms": 20, "partitioner": "murmur2_random"})
    full_topic = config.topic(topic)
    began = time.monotonic()
    for i in range(start, start + count):
        key = f"k{i % keys}".encode()
        if garbage_every and i % garbage_every == garbage_every - 1:
            value = b"\xffnot an event"
            inputs.garbage += 1
        elif poison_every and i % poison_every == poison_every - 1:
            value = event_bytes(i, POISON_NAME)
            inputs.poison += 1
        else:
            value = event_bytes(i)
            inputs.per_key[key] += 1
        while True:
            try:
                producer.produce(full_topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        inputs.total += 1
        if rate is not None:
            due = began + (i - start + 1) / rate
            delay = due - time.monotonic()
            if delay > 0:
                producer.poll(0)
                time.sleep(delay)
    assert producer.flush(60) == 0
    return inputs


def read_topic(
    config: StreamsConfig, topic: str, expected: int, *, timeout_s: float = 120.0, settle_s: float = 2.0
) -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Reads a topic from the start with ``read_committed`` until ``expected`` records (+ settle)."""
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.reader.{time.monotonic_ns()}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    metadata = consumer.list_topics(topic, timeout=30)
    partitions = sorted(metadata.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    deadline = time.monotonic() + timeout_s
    reached: float | None = None
    try:
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is None:
                    out.append((message.key(), message.value(), list(message.headers() or [])))
            if len(out) >= expected:
                reached = reached or time.monotonic()
                if time.monotonic() - reached >= settle_s:
                    break
    finally:
        consumer.close()
    return out


def check_outputs(outputs: Iterable[tuple[bytes | None, bytes | None, object]], inputs: Inputs) -> None:
    """Asserts one output per countable input and exact counts 1..n per key."""
    assert inputs.per_key is not None
    seen: Counter[tuple[int, int]] = Counter()
    counts: dict[bytes, list[int]] = defaultdict(list)
    for key, value, _ in outputs:
        assert key is not None and value is not None
        partition, offset, count = (int(x) for x in value.split(b":"))
        seen[(partition, offset)] += 1
        counts[key].append(count)
    duplicated = {coords: n for coords, n in seen.items() if n > 1}
    assert not duplicated, (
        f"{len(duplicated)} inputs have more than one output, e.g. {list(duplicated.items())[:5]}"
    )
    assert len(seen) == inputs.countable, f"{len(seen)} outputs for {inputs.countable} countable inputs"
    for key, expected in inputs.per_key.items():
        assert sorted(counts[key]) == list(range(1, expected + 1)), (
            f"key {key!r}: counts are not 1..{expected}"
        )
    assert set(counts) == set(inputs.per_key)


def test_runtime(**changes: object) -> RuntimeConfig:
    """Runtime settings for tests: short session timeout, small batches."""
    settings: dict[str, object] = {
        "consumer_config": {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        "batch": BatchPolicy(max_records=2000, max_age_ms=100),
        "restore_log_interval_s": 1.0,
    }
    settings.update(changes)
    return RuntimeConfig(**settings)  # type: ignore[arg-type]


test_runtime.__test__ = False  # type: ignore[attr-defined]


def _crash_hook_from_env() -> object | None:
    after = os.environ.get("COUNTING_CRASH_AFTER")
    if not after:
        return None
    return sigkill_at(os.environ.get("COUNTING_CRASH_POINT", "random"), int(after))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--guarantee", default="exactly_once")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    config = make_config(args.bootstrap, args.namespace, args.state_dir)
    runtime = test_runtime(guarantee=args.guarantee)
    return run_worker(
        config,
        [CountingProcessor()],
        runtime=runtime,
        state_dir=args.state_dir,
        crash_hook=_crash_hook_from_env(),  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    raise SystemExit(main())
