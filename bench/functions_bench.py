"""Plain durable functions, no waits (not a test): runs/s and step-to-step latency.

The function is ``bench/cart_app.py``'s ``three-steps`` (``BENCH_FUNCTIONS=steps``): three
``step.run`` steps in a row; each appends its start and end wall time to a file. The worker is a
subprocess (``python -m streams worker bench.cart_app:app``), as in ``bench/cart_flow.py``.

Measures:

1. ``throughput``: N runs (default 3000) triggered at once (``bench/steps`` events produced as fast
   as the producer takes them, lingering 5 ms); runs/s = N / (first event produced → last run's
   ``COMPLETED`` history entry read). In-flight limit: N.
2. ``latency``: at low load (``--rate`` runs/s, default 10, for ``--seconds``, default 30), the
   time from one step's end to the next step's start (step 1 → 2 and 2 → 3, measured in the
   steps: it covers the report to ``runs``, the executor's transaction, replay and dispatch), and
   the start latency (event produced → step 1 starts); p50/p95/p99/max.

CPU seconds and peak RSS of the broker, the worker process(es) and the driver, as in cart_flow.

Usage::

    python bench/functions_bench.py [--bootstrap HOST:PORT] [--worker-mode threads|processes|split]
        [--runs 3000] [--repeat 2] [--rate 10] [--seconds 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cart_flow import (
    CODEC_JSON,
    Broker,
    Completions,
    Meter,
    Worker,
    loadavg,
    make_producer,
    paced,
    produce,
    summary_ms,
    warm_broker,
    write_results,
)

from streams import Event
from streams._topics import create_topics


def steps_event(key: str) -> bytes:
    return CODEC_JSON.encode_json(Event(name="bench/steps", data={"key": key}))


class StepsSession:
    def __init__(self, args: argparse.Namespace, broker: Broker, work: Path) -> None:
        self.namespace = f"f{uuid.uuid4().hex[:6]}"
        self.broker = broker
        self.worker = Worker(
            bootstrap=broker.bootstrap,
            namespace=self.namespace,
            work=work,
            mode=args.worker_mode,
            partitions=args.partitions,
            functions="steps",
        )
        self.config = self.worker.config()
        create_topics(self.config)
        self.events = self.config.topic("events")
        self.worker.start()
        self.completions = Completions(self.config, "key")
        self.meter = Meter(self.processes)
        started = time.monotonic()
        keys = [f"warm-{i}" for i in range(20)]
        self.send_all(keys, 0)
        self.completions.wait(keys, 300, self.worker.alive)
        print(f"  [{self.namespace}] worker warm after {time.monotonic() - started:.1f} s", flush=True)
        time.sleep(1)

    def processes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.broker.pid is not None:
            out["broker"] = self.broker.pid
        out.update(self.worker.processes())
        out["driver"] = os.getpid()
        return out

    def send_all(self, keys: list[str], linger_ms: float) -> None:
        producer = make_producer(self.config, linger_ms)
        for key in keys:
            produce(producer, self.events, steps_event(key), key.encode())
            producer.poll(0)
        producer.flush(60)

    def steps(self) -> dict[str, dict[int, tuple[float, float]]]:
        """key → step index → (start, end) wall times."""
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for key, index, start, end in self.worker.records():
            out.setdefault(key, {})[int(index)] = (float(start), float(end))
        return out

    def close(self) -> list[int | None]:
        self.completions.close()
        return self.worker.stop()


def run_throughput(session: StepsSession, args: argparse.Namespace, run: int) -> dict[str, Any]:
    keys = [f"t{run}-{i}" for i in range(args.runs)]
    values = [(steps_event(k), k.encode()) for k in keys]
    producer = make_producer(session.config, args.linger_ms)
    load_before = loadavg()
    session.meter.begin()
    t0 = time.time()
    for value, key in values:
        produce(producer, session.events, value, key)
        producer.poll(0)
    producer.flush(60)
    t_acked = time.time()
    session.completions.wait(keys, args.timeout_s, session.worker.alive)
    t_end = max(session.completions.ended[k] for k in keys)
    usage = session.meter.end()
    elapsed = t_end - t0
    return {
        "run": run,
        "runs": args.runs,
        "inflight_limit": args.runs,
        "seconds": round(elapsed, 3),
        "runs_per_s": round(args.runs / elapsed, 1),
        "steps_per_s": round(3 * args.runs / elapsed, 1),
        "events_acked_s": round(t_acked - t0, 3),
        "statuses": sorted({session.completions.status[k] for k in keys}),
        "load_before": load_before,
        "load_after": loadavg(),
        "usage": usage,
    }


def run_latency(session: StepsSession, args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.rate * args.seconds)
    keys = [f"l-{i}" for i in range(n)]
    schedule = [(i / args.rate, k, steps_event(k), k.encode()) for i, k in enumerate(keys)]
    producer = make_producer(session.config, 0)
    load_before = loadavg()
    session.meter.begin()
    sent = paced(schedule, producer, session.events)
    session.completions.wait(keys, args.timeout_s, session.worker.alive)
    usage = session.meter.end()
    steps = session.steps()
    gaps = [steps[k][i + 1][0] - steps[k][i][1] for k in keys for i in (1, 2)]
    start = [steps[k][1][0] - sent[k] for k in keys]
    return {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "runs": n,
        "step_to_step_ms": summary_ms(gaps),
        "event_to_first_step_ms": summary_ms(start),
        "statuses": sorted({session.completions.status[k] for k in keys}),
        "load_before": load_before,
        "load_after": loadavg(),
        "usage": usage,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap")
    parser.add_argument("--modes", default="throughput,latency")
    parser.add_argument("--worker-mode", choices=["threads", "processes", "split"], default="threads")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--broker-warmup-s", type=float, default=60.0, help="cart flows before measuring (JIT)"
    )
    parser.add_argument("--work-dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="functions-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {loadavg()}; work dir {work}", flush=True)
    broker = Broker(args.bootstrap, work)
    results: dict[str, Any] = {
        "worker_mode": args.worker_mode,
        "partitions": args.partitions,
        "load_at_start": loadavg(),
    }
    try:
        warm_broker(broker, work, args.broker_warmup_s, args.worker_mode, args.partitions)
        results["broker_warmup_s"] = args.broker_warmup_s
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            session = StepsSession(args, broker, work)
            try:
                if mode == "throughput":
                    results["throughput"] = []
                    for run in range(1, args.repeat + 1):
                        result = run_throughput(session, args, run)
                        print(f"  throughput run {run}: {result['runs_per_s']} runs/s", flush=True)
                        results["throughput"].append(result)
                        time.sleep(2)
                elif mode == "latency":
                    results["latency"] = run_latency(session, args)
                    print(f"  step-to-step: {results['latency']['step_to_step_ms']}", flush=True)
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
            finally:
                session.close()
    finally:
        broker.stop()
        results["load_at_end"] = loadavg()
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
