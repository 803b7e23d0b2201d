"""Pending waits per GiB of matcher RSS (not a test).

Drives the matcher directly through the ``waits`` topic: this script produces ``RegisterWait``
records built with :func:`processors.records.register_wait` (the very records the executor writes for
``step.wait_for_event("wait-for-purchase", event="cart/purchased", match="data.cart_id",
timeout="1h")``: a real match key per cart, a 32-hex run id, one excluded event id, expiry in 1 h),
and a worker subprocess runs only the matcher role (``streams worker bench.cart_app:app
--processors matcher``, RocksDB state, exactly-once). No buffered events match, so every wait is
stored and stays pending.

At each checkpoint of ``--counts`` (cumulative) it waits until the matcher group has committed the
whole ``waits`` topic, lets it settle, then records the matcher process's RSS (``VmRSS``) and peak
(``VmHWM``), the size of its RocksDB state directory, and the size of its changelog on the broker.

Usage::

    python bench/waits_memory.py [--bootstrap HOST:PORT] [--counts 100000,300000,1000000]
        [--partitions 2] [--json out.json]

Without ``--bootstrap`` it starts the local jar broker on a fresh data directory.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from cart_flow import Broker, Worker, loadavg, make_producer, proc_sample, produce, write_results
from confluent_kafka import Consumer, TopicPartition

from processors.records import register_wait
from streams._matchkey import match_key
from streams._topics import create_topics

MIB = 1024 * 1024
GIB = 1024 * MIB


def dir_bytes(path: Path, suffix: str = "") -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            if not name.endswith(suffix):
                continue
            with contextlib.suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def wait_value(i: int, now_ms: int) -> tuple[bytes, bytes]:
    key = match_key("cart/purchased", "data.cart_id", f"cart-{i:08d}")
    run_id = hashlib.blake2b(f"cart-flow\x00{i}".encode(), digest_size=16).hexdigest()
    value = register_wait(
        key,
        run_id=run_id,
        function_id="cart-flow",
        step_id="wait-for-purchase",
        wait_id="wait-for-purchase",
        event_name="cart/purchased",
        expression=None,
        since_ts=now_ms,
        lookback_from_ts=now_ms - 5 * 60 * 1000,
        expires_at_ms=now_ms + 3600 * 1000,
        kind="WAIT",
        exclude_event_ids=[f"01J{i:023d}"],
    )
    return key, value


class Committed:
    """The matcher group's committed offsets on ``waits`` against the topic's end."""

    def __init__(self, worker: Worker) -> None:
        config = worker.config()
        self.topic = config.topic("waits")
        self.consumer = Consumer({**config.client_config(), "group.id": config.topic("matcher")})
        partitions = self.consumer.list_topics(self.topic, timeout=30).topics[self.topic].partitions
        self.tps = [TopicPartition(self.topic, p) for p in partitions]

    def wait_caught_up(self, worker: Worker, timeout_s: float = 3600) -> float:
        started = time.monotonic()
        ends = {
            tp.partition: self.consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), 10)[1]
            for tp in self.tps
        }
        while time.monotonic() - started < timeout_s:
            committed = {tp.partition: tp.offset for tp in self.consumer.committed(self.tps, 10)}
            if all(end == 0 or committed.get(p, -1) >= end for p, end in ends.items()):
                return time.monotonic() - started
            if not worker.alive():
                raise RuntimeError("the matcher worker exited")
            time.sleep(0.5)
        raise TimeoutError("the matcher did not catch up")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap")
    parser.add_argument("--counts", default="100000,300000,1000000")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--settle-s", type=float, default=10.0)
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="waits-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {loadavg()}; work dir {work}", flush=True)
    broker = Broker(args.bootstrap, work)
    namespace = f"w{uuid.uuid4().hex[:6]}"
    worker = Worker(
        bootstrap=broker.bootstrap,
        namespace=namespace,
        work=work,
        mode="threads",
        partitions=args.partitions,
        roles=("matcher",),
    )
    config = worker.config()
    create_topics(config)
    results: dict[str, Any] = {"partitions": args.partitions, "load_at_start": loadavg(), "checkpoints": []}
    try:
        worker.start()
        committed = Committed(worker)
        producer = make_producer(config, 20)
        topic = config.topic("waits")
        # Warm-up: one wait, so the matcher is assigned, restored and committing.
        key, value = wait_value(-1, int(time.time() * 1000))
        produce(producer, topic, value, key)
        producer.flush(30)
        committed.wait_caught_up(worker, 300)
        time.sleep(args.settle_s)
        pid = worker.procs[0].pid
        baseline = proc_sample(pid)
        assert baseline is not None
        results["baseline"] = {
            "rss_mib": round(baseline["rss_mib"], 1),
            "hwm_mib": round(baseline["hwm_mib"], 1),
            "state_dir_mib": round(dir_bytes(worker.state_dir) / MIB, 2),
        }
        print(f"  baseline: {results['baseline']}", flush=True)
        done = 0
        for target in counts:
            now = int(time.time() * 1000)
            cpu_before = proc_sample(pid)
            started = time.monotonic()
            for i in range(done, target):
                key, value = wait_value(i, now)
                produce(producer, topic, value, key)
                if i % 5000 == 0:
                    producer.poll(0)
            producer.flush(300)
            produced_s = time.monotonic() - started
            consumed_s = committed.wait_caught_up(worker) + produced_s
            register_rate = (target - done) / consumed_s
            cpu_after = proc_sample(pid)
            time.sleep(args.settle_s)
            sample = proc_sample(pid)
            assert sample is not None and cpu_before is not None and cpu_after is not None
            kafka_logs = work / "kafka" / "kraft-logs"
            changelog = (
                sum(dir_bytes(d, ".log") for d in kafka_logs.glob(f"{namespace}.matcher-*changelog*"))
                if kafka_logs.exists()
                else None
            )
            sst = sum(1 for _ in worker.state_dir.rglob("*.sst"))
            rss = sample["rss_mib"] * MIB
            point = {
                "pending_waits": target,
                "rss_mib": round(sample["rss_mib"], 1),
                "hwm_mib": round(sample["hwm_mib"], 1),
                "waits_per_gib_rss": round(target / (rss / GIB)),
                "marginal_bytes_per_wait": round((rss - baseline["rss_mib"] * MIB) / target, 1),
                "state_dir_mib": round(dir_bytes(worker.state_dir) / MIB, 1),
                "sst_files": sst,
                "changelog_on_broker_mib": None if changelog is None else round(changelog / MIB, 1),
                "produce_s": round(produced_s, 1),
                "registered_per_s": round(register_rate),
                "matcher_cpu_s": round(cpu_after["cpu_s"] - cpu_before["cpu_s"], 1),
                "load": loadavg(),
            }
            results["checkpoints"].append(point)
            print(f"  {point}", flush=True)
            done = target
    finally:
        codes = worker.stop()
        results["worker_exit_codes"] = codes
        broker.stop()
        results["load_at_end"] = loadavg()
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
