"""Timer lateness: N timers due within a window, fired by the timers processor on a real broker.

What it does:

1. start a local broker (``streams kafka`` jars, a temporary data directory) unless
   ``--bootstrap`` is given, and create a fresh namespace's topics;
2. run the timers processor (``ProcessorLoop``, RocksDB store, exactly-once) in a child process, and
   wait until it fires a probe timer;
3. produce N ``ScheduleTimer`` commands to ``timers`` (one run id each), due uniformly over
   ``[start + lead, start + lead + window]``; each payload is the due time;
4. consume the target topic (``runs``, read_committed) until all N fired, and compute
   ``lateness = output record timestamp - due time`` (the record timestamp is the transactional
   producer's create time, taken when the tick produced it), plus the time the record became
   visible to a read_committed consumer minus the due time (adds the transaction commit);
5. print a summary and one JSON line.

Run: ``python bench/timers_bench.py [--timers 100000] [--window-s 60] [--bootstrap HOST:PORT]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from processors.timers import schedule_timer_command  # noqa: E402
from streams import StreamsConfig  # noqa: E402
from streams._topics import create_topics  # noqa: E402

BE64 = struct.Struct(">Q")
QUANTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_loop(
    bootstrap: str, namespace: str, partitions: int, state_dir: str, tick_ms: int, max_fires: int, stop: Any
) -> None:
    """Child process: the timers loop until ``stop`` is set."""
    import logging
    import threading

    from processors.runtime.config import RuntimeConfig
    from processors.runtime.loop import ProcessorLoop
    from processors.timers import TimersConfig, TimersProcessor

    logging.basicConfig(level=logging.WARNING)
    config = make_config(bootstrap, namespace, partitions).replace(state_dir=Path(state_dir))
    loop = ProcessorLoop(
        config,
        TimersProcessor.for_app(config, TimersConfig(max_fires_per_tick=max_fires)),
        RuntimeConfig(punctuate_interval_ms=tick_ms),
    )
    threading.Thread(target=lambda: (stop.wait(), loop.stop()), daemon=True).start()
    code = loop.run()
    commit_ms = sorted(loop.metrics.commit_ms)
    print(
        f"[loop] exit {code}: {loop.metrics.records} commands, {loop.metrics.commits} commits "
        f"(commit p50 {percentile_f(commit_ms, 50):.1f} ms, p99 {percentile_f(commit_ms, 99):.1f} ms), "
        f"{loop.processor.stats}",  # type: ignore[attr-defined]
        flush=True,
    )


def percentile_f(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def make_config(bootstrap: str, namespace: str, partitions: int) -> StreamsConfig:
    return StreamsConfig(
        namespace=namespace,
        bootstrap_servers=bootstrap,
        partitions={"timers": partitions, "runs": partitions, "events": 1, "waits": 1, "history": 1},
    )


def wait_for_probe(config: StreamsConfig, timeout_s: float = 120.0) -> None:
    probe = uuid.uuid4().hex.encode()
    producer = Producer(config.client_config())
    producer.produce(
        config.topic("timers"),
        key=b"probe",
        value=schedule_timer_command("probe", now_ms(), "history", b"probe", probe),
    )
    producer.flush(10)
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.probe",
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(config.topic("history"), 0, 0)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error() and message.value() == probe:
                return
        raise SystemExit("the timers loop did not start")
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--timers", type=int, default=100_000)
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--lead-s", type=float, default=20.0, help="time to schedule before the first due")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--tick-ms", type=int, default=50)
    parser.add_argument("--max-fires-per-tick", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    broker = None
    data_dir = None
    bootstrap = args.bootstrap
    if not bootstrap:
        from streams._broker import LocalKafka

        broker = LocalKafka.from_env()
        data_dir = Path(tempfile.mkdtemp(prefix="timers-bench-kafka-"))
        bootstrap = broker.start(data_dir=data_dir, timeout=180)
        print(f"started a local broker at {bootstrap}", flush=True)
    namespace = "tb" + uuid.uuid4().hex[:8]
    config = make_config(bootstrap, namespace, args.partitions)
    create_topics(config)
    state_dir = tempfile.mkdtemp(prefix="timers-bench-state-")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    child = ctx.Process(
        target=run_loop,
        args=(bootstrap, namespace, args.partitions, state_dir, args.tick_ms, args.max_fires_per_tick, stop),
    )
    child.start()
    try:
        wait_for_probe(config)
        result = measure(config, args)
    finally:
        stop.set()
        child.join(120)
        if child.is_alive():
            child.kill()
        if broker is not None:
            broker.stop(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)
    print(json.dumps(result), flush=True)


def measure(config: StreamsConfig, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.timers
    window_ms = int(args.window_s * 1000)
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.bench",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
        }
    )
    consumer.assign([TopicPartition(config.topic("runs"), p, 0) for p in range(args.partitions)])

    # Step 3: schedule.
    first_due = now_ms() + int(args.lead_s * 1000)
    producer = Producer(
        {**config.client_config(), "partitioner": "murmur2_random", "linger.ms": 20, "batch.size": 1_000_000}
    )
    t0 = time.monotonic()
    for i in range(n):
        due = first_due + rng.randrange(window_ms)
        run_id = f"run-{i}"
        command = schedule_timer_command(f"{run_id}/sleep/0", due, "runs", run_id, BE64.pack(due))
        while True:
            try:
                producer.produce(config.topic("timers"), key=run_id.encode(), value=command)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    produce_s = time.monotonic() - t0
    scheduled_by = now_ms()
    print(
        f"scheduled {n} timers in {produce_s:.1f} s; first due in {(first_due - scheduled_by) / 1000:.1f} s"
    )
    if scheduled_by >= first_due:
        print("WARNING: scheduling took longer than the lead time; early timers are late by construction")

    # Step 4: consume what fires.
    ts_late: list[int] = []
    seen_late: list[int] = []
    deadline = time.monotonic() + args.lead_s + args.window_s + 120
    while len(ts_late) < n and time.monotonic() < deadline:
        # A short timeout: consume() waits for the full batch or the timeout, which would add latency.
        for message in consumer.consume(1000, 0.005):
            if message.error():
                continue
            received = now_ms()
            due = BE64.unpack(message.value())[0]
            ts_late.append(message.timestamp()[1] - due)
            seen_late.append(received - due)
    consumer.close()
    ts_late.sort()
    seen_late.sort()
    result = {
        "timers": n,
        "fired": len(ts_late),
        "window_s": args.window_s,
        "partitions": args.partitions,
        "tick_ms": args.tick_ms,
        "schedule_produce_s": round(produce_s, 2),
        "lateness_ms": {name: percentile(ts_late, q) for name, q in QUANTILES.items()}
        | {"min": ts_late[0] if ts_late else None, "max": ts_late[-1] if ts_late else None},
        "visible_lateness_ms": {name: percentile(seen_late, q) for name, q in QUANTILES.items()}
        | {"max": seen_late[-1] if seen_late else None},
        "early": sum(1 for late in ts_late if late < 0),
    }
    print(
        f"fired {len(ts_late)}/{n}; lateness (record ts - due) p50 {result['lateness_ms']['p50']} ms, "
        f"p99 {result['lateness_ms']['p99']} ms, max {result['lateness_ms']['max']} ms; "
        f"visible to read_committed p50 {result['visible_lateness_ms']['p50']} ms, "
        f"p99 {result['visible_lateness_ms']['p99']} ms; early {result['early']}"
    )
    return result


if __name__ == "__main__":
    main()
