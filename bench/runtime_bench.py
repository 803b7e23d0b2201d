"""Benchmark of the processor runtime with the counting processor (not a test).

Measures, on a broker co-located with the worker:

1. throughput (records/s) with exactly-once (Kafka transactions) and with at-least-once;
2. latency at low load: commit duration (Steps 1-5 of the commit protocol) and end-to-end
   latency (input produced → output visible to a ``read_committed`` consumer), p50/p99;
3. two processor roles in one worker: threads vs processes.

Usage::

    python bench/runtime_bench.py [--bootstrap HOST:PORT] [--records 200000] [--json out.json]

Without ``--bootstrap`` it starts the local jar broker in a temporary directory and stops it after.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration" / "runtime"))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from counting import (  # noqa: E402
    INPUT,
    OUTPUT,
    CountingProcessor,
    create_counting_topics,
    event_bytes,
    make_config,
    produce_inputs,
)

from processors.runtime import ProcessorLoop, RuntimeConfig, run_worker  # noqa: E402
from processors.runtime.checkpoint import BatchPolicy  # noqa: E402
from streams._config import StreamsConfig  # noqa: E402

PARTITIONS = 4
EXTRA: dict[str, Any] = {}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def new_config(bootstrap: str, state_root: Path) -> StreamsConfig:
    namespace = "b" + uuid.uuid4().hex[:8]
    config = make_config(bootstrap, namespace, state_root / namespace)
    create_counting_topics(config, PARTITIONS)
    return config


def runtime(guarantee: str, **changes: Any) -> RuntimeConfig:
    settings: dict[str, Any] = {"guarantee": guarantee, "batch": BatchPolicy(), **EXTRA}
    settings.update(changes)
    return RuntimeConfig(**settings)


def run_loop_until(loop: ProcessorLoop, done: Callable[[], bool], timeout_s: float) -> tuple[float, float]:
    """Runs the loop on a thread; returns (first record time, done time) in monotonic seconds."""
    thread = threading.Thread(target=loop.run, name="bench-loop")
    thread.start()
    first: float | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if first is None and loop.metrics.records > 0:
                first = time.monotonic()
            if done():
                return first or time.monotonic(), time.monotonic()
            time.sleep(0.02)
        raise TimeoutError("benchmark run did not finish")
    finally:
        loop.stop()
        thread.join()


def throughput(bootstrap: str, state_root: Path, records: int, guarantee: str) -> dict[str, Any]:
    config = new_config(bootstrap, state_root)
    produce_inputs(config, records)
    loop = ProcessorLoop(config, CountingProcessor(), runtime(guarantee))

    def finished() -> bool:
        return (
            loop.metrics.records >= records
            and loop.metrics.commits > 0
            and sum(loop.metrics.batch_records) >= records
        )

    first, end = run_loop_until(loop, finished, 600)
    elapsed = end - first
    commits = list(loop.metrics.commit_ms)
    batches = list(loop.metrics.batch_records)
    return {
        "guarantee": guarantee,
        "records": records,
        "seconds": round(elapsed, 3),
        "records_per_s": round(records / elapsed),
        "commits": len(commits),
        "mean_batch": round(statistics.mean(batches)),
        "commit_ms_p50": round(percentile(commits, 50), 2),
        "commit_ms_p99": round(percentile(commits, 99), 2),
    }


def low_load_latency(
    bootstrap: str, state_root: Path, guarantee: str, rate: float, seconds: float
) -> dict[str, Any]:
    config = new_config(bootstrap, state_root)
    loop = ProcessorLoop(config, CountingProcessor(), runtime(guarantee))
    thread = threading.Thread(target=loop.run, name="bench-loop")
    thread.start()
    reader = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.latency",
            "isolation.level": "read_committed",
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5,
        }
    )
    output = config.topic(OUTPUT)
    reader.assign([TopicPartition(output, p, -1) for p in range(PARTITIONS)])  # OFFSET_END
    sent: dict[bytes, float] = {}
    received: dict[bytes, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            # consume(n, timeout) waits the whole timeout unless n records arrive: wait for one.
            for message in reader.consume(1, 0.05) + reader.consume(100, 0):
                value = message.value()
                if message.error() is None and value is not None:
                    partition, offset, _ = value.split(b":")
                    received[partition + b":" + offset] = time.monotonic()

    # Warm up: wait for the assignment.
    time.sleep(3)
    reader_thread = threading.Thread(target=read, name="bench-reader")
    reader_thread.start()
    producer = Producer({**config.client_config(), "linger.ms": 0, "partitioner": "murmur2_random"})
    topic = config.topic(INPUT)
    count = int(rate * seconds)
    commits_before = len(loop.metrics.commit_ms)

    def delivered(at: float) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, message: Any) -> None:
            if err is None:
                sent[f"{message.partition()}:{message.offset()}".encode()] = at

        return on_delivery

    began = time.monotonic()
    for i in range(count):
        due = began + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.produce(
            topic, event_bytes(i), f"k{i % 50}".encode(), on_delivery=delivered(time.monotonic())
        )
        producer.poll(0)
    producer.flush(30)
    time.sleep(2)
    stop.set()
    reader_thread.join()
    reader.close()
    loop.stop()
    thread.join()
    latencies = [(received[key] - at) * 1000 for key, at in sent.items() if key in received]
    commits = list(loop.metrics.commit_ms)[commits_before:]
    batches = list(loop.metrics.batch_records)[commits_before:]
    return {
        "guarantee": guarantee,
        "rate_per_s": rate,
        "records": count,
        "received": len(latencies),
        "commits": len(commits),
        "mean_batch": round(statistics.mean(batches), 2) if batches else None,
        "commit_ms_p50": round(percentile(commits, 50), 2),
        "commit_ms_p99": round(percentile(commits, 99), 2),
        "e2e_ms_p50": round(percentile(latencies, 50), 2),
        "e2e_ms_p99": round(percentile(latencies, 99), 2),
        "e2e_ms_max": round(max(latencies), 2) if latencies else None,
    }


def two_roles(bootstrap: str, state_root: Path, records: int, mode: str) -> dict[str, Any]:
    namespace = "b" + uuid.uuid4().hex[:8]
    config = make_config(bootstrap, namespace, state_root / namespace)
    roles = [CountingProcessor(f"count{i}", f"in{i}", f"out{i}") for i in range(2)]
    for i in range(2):
        create_counting_topics(config, PARTITIONS, f"in{i}", f"out{i}")
        produce_inputs(config, records, topic=f"in{i}")
    stop = threading.Event()
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(
            run_worker(
                config,
                roles,
                runtime=runtime("exactly_once"),
                mode=mode,
                install_signal_handlers=False,
                stop_event=stop,
            )  # type: ignore[arg-type]
        ),
        name="bench-worker",
    )
    started = time.monotonic()
    worker.start()
    groups = [
        Consumer(
            {
                **config.client_config(),
                "group.id": config.topic(f"count{i}"),
                "isolation.level": "read_committed",
            }
        )
        for i in range(2)
    ]
    inputs = [[TopicPartition(config.topic(f"in{i}"), p) for p in range(PARTITIONS)] for i in range(2)]
    first_output: float | None = None
    while True:
        # The input groups' committed offsets count the records whose outputs are committed.
        committed = sum(
            max(tp.offset, 0)
            for group, tps in zip(groups, inputs, strict=True)
            for tp in group.committed(tps, 10)
        )
        if first_output is None and committed > 0:
            first_output = time.monotonic()
        if committed >= 2 * records:
            break
        time.sleep(0.05)
    end = time.monotonic()
    for group in groups:
        group.close()
    stop.set()
    worker.join()
    assert first_output is not None
    elapsed = end - first_output
    return {
        "mode": mode,
        "records": 2 * records,
        "seconds_incl_startup": round(end - started, 2),
        "seconds": round(elapsed, 2),
        "records_per_s": round(2 * records / elapsed),
        "exit_code": result[0] if result else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=200.0, help="records/s of the low-load run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the low-load run")
    parser.add_argument("--only", choices=["throughput", "latency", "roles"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    broker = None
    data_dir = Path(tempfile.mkdtemp(prefix="runtime-bench-"))
    bootstrap = args.bootstrap
    if bootstrap is None:
        from streams._broker import LocalKafka

        broker = LocalKafka.from_env()
        bootstrap = broker.start(data_dir=data_dir / "kafka", timeout=120)
    results: dict[str, Any] = {}
    try:
        state = data_dir / "state"
        if args.only in (None, "throughput"):
            results["throughput"] = [
                throughput(bootstrap, state, args.records, guarantee)
                for guarantee in ("exactly_once", "at_least_once")
            ]
        if args.only in (None, "latency"):
            results["latency"] = [
                low_load_latency(bootstrap, state, guarantee, args.rate, args.seconds)
                for guarantee in ("exactly_once", "at_least_once")
            ]
        if args.only in (None, "roles"):
            results["two_roles"] = [
                two_roles(bootstrap, state, args.records // 2, mode) for mode in ("threads", "processes")
            ]
    finally:
        if broker is not None:
            broker.stop(data_dir / "kafka")
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
