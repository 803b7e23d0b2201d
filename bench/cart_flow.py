"""The cart-flow benchmark of ``../shared/benchmark.md`` (not a test).

A ``cart/product.added`` event starts a run of ``bench/cart_app.py``'s ``cart-flow`` function, which
waits up to 30 s for ``cart/purchased`` with the same ``data.cart_id`` and then runs one side-effect
step, ``record``, that appends its start wall time to a file. The worker runs as a subprocess
(``python -m streams worker bench.cart_app:app``); this driver produces the events straight to
``<namespace>.events`` with a plain librdkafka producer and reads run completions from ``history``.

Modes (``--modes``, any of):

- ``throughput``: N flows (default 3000). All N triggers are produced, then all N purchases, then the
  driver waits until every run completed (its ``COMPLETED`` history entry is read by a
  ``read_committed`` consumer). flows/s = N / (first trigger produced → last completion read).
  In-flight limit: N (every flow is open at once; the driver does not wait between flows). Events
  are encoded before the clock starts; the producer lingers ``--linger-ms``. ``--repeat`` runs.
- ``latency``: 20 flows/s for 30 s; each purchase 0.5 s after its trigger. Latency = the ``record``
  step's start wall time - the wall time just before the purchase's ``produce()`` call.
- ``timeout``: 500 flows with ``data.timeout = "5s"`` and no purchase, paced at 100/s. Lateness =
  the ``record`` step's start - (the trigger's ``produce()`` time + 5 s). ``--pending-timers N``
  first loads N far-future timers into the timers processor (1M: "with 1M timers pending");
  ``--background-rate R`` sends R unrelated events/s meanwhile (a live ``events`` topic, so the
  deadline gate never needs its wall-clock grace).

Every mode gets a fresh namespace and a fresh worker, after a warm-up of 20 flows. CPU seconds
(utime + stime from ``/proc/<pid>/stat``, over the measured phase) and peak RSS (``VmHWM``) are
recorded for the broker's JVM, every worker process and the driver.

Usage::

    python bench/cart_flow.py [--bootstrap HOST:PORT] [--modes throughput,latency,timeout]
        [--worker-mode threads|processes|split] [--flows 3000] [--repeat 2] [--partitions 2]
        [--profile DIR] [--json out.json]

Without ``--bootstrap`` it starts the local jar broker (``streams._broker.LocalKafka``) on a fresh
data directory and stops it after. ``--worker-mode split`` runs one ``streams worker --processors
<role>`` process per role instead of ``--mode processes``. ``--profile DIR`` samples every worker
process with ``py-spy`` (collapsed stacks in DIR) during the throughput runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from processors.records import CODEC, HISTORY_ENTRY  # noqa: E402
from streams import Event, StreamsConfig  # noqa: E402
from streams._codec import EventCodec  # noqa: E402
from streams._config import producer_defaults  # noqa: E402
from streams._topics import create_topics  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
ROLES = ("router", "matcher", "executor", "timers")
CODEC_JSON = EventCodec()


# -- statistics ----------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(values_s: list[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    out: dict[str, Any] = {"n": len(ms)}
    for q in qs:
        out[f"p{q:g}"] = round(percentile(ms, q), 1)
    out["max"] = round(max(ms), 1) if ms else None
    out["min"] = round(min(ms), 1) if ms else None
    return out


# -- processes: CPU and peak RSS from /proc ------------------------------------------------------


def proc_sample(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system, own threads) and VmHWM/VmRSS in MiB of one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0]) / 1024
    return {"cpu_s": cpu, "hwm_mib": mem.get("VmHWM", 0.0), "rss_mib": mem.get("VmRSS", 0.0)}


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren, ...), from ``/proc/*/stat``."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
    except OSError:
        return ""


class Meter:
    """CPU used between :meth:`begin` and :meth:`end`, and peak RSS at :meth:`end`, per process."""

    def __init__(self, processes: Callable[[], dict[str, int]]) -> None:
        self._processes = processes
        self._start: dict[str, dict[str, float]] = {}
        self._t0 = 0.0

    def begin(self) -> None:
        self._t0 = time.monotonic()
        self._machine = machine_busy_s()
        self._start = {name: s for name, pid in self._processes().items() if (s := proc_sample(pid))}

    def end(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        out: dict[str, Any] = {"wall_s": round(wall, 2)}
        for name, pid in self._processes().items():
            sample = proc_sample(pid)
            if sample is None:
                continue
            before = self._start.get(name, {"cpu_s": 0.0})
            cpu = sample["cpu_s"] - before["cpu_s"]
            out[name] = {
                "cpu_s": round(cpu, 2),
                "cpu_pct_of_one_core": round(100 * cpu / wall, 1) if wall > 0 else None,
                "peak_rss_mib": round(sample["hwm_mib"], 1),
            }
        busy = machine_busy_s() - self._machine
        ours = sum(v["cpu_s"] for k, v in out.items() if isinstance(v, dict))
        # Everything else on the box (other sessions' tests, compilers): the measurement's noise.
        out["machine_busy_cpu_s"] = round(busy, 2)
        out["other_processes_cpu_s"] = round(max(0.0, busy - ours), 2)
        out["other_processes_pct_of_one_core"] = (
            round(100 * max(0.0, busy - ours) / wall, 1) if wall > 0 else None
        )
        return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def write_results(results: dict[str, Any], path: Path | None) -> None:
    """Prints the results as JSON and, with ``--json PATH``, writes them there too."""
    text = json.dumps(results, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- broker ----------------------------------------------------------------------------------------


class Broker:
    """The local jar broker on a fresh data directory, or an external one (``--bootstrap``)."""

    def __init__(self, bootstrap: str | None, work: Path) -> None:
        self._local = None
        self._data = work / "kafka"
        self.pid: int | None = None
        if bootstrap is None:
            from streams._broker import LocalKafka

            self._local = LocalKafka.from_env()
            bootstrap = self._local.start(data_dir=self._data, timeout=120)
            self.pid = self._local.status(self._data).pid
        self.bootstrap = bootstrap

    def stop(self) -> None:
        if self._local is not None:
            self._local.stop(self._data)


# -- worker subprocess -------------------------------------------------------------------------------


class Worker:
    """``python -m streams worker bench.cart_app:app`` as subprocess(es).

    ``mode`` is ``threads`` or ``processes`` (the CLI's ``--mode``), or ``split``: one worker process
    per role (``--processors <role>``).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        namespace: str,
        work: Path,
        mode: str,
        partitions: int,
        functions: str = "cart",
        extra_env: dict[str, str] | None = None,
        roles: tuple[str, ...] = ROLES,
        extra_executors: int = 0,
    ) -> None:
        self.namespace = namespace
        self.mode = mode
        self.state_dir = work / f"state-{namespace}"
        self.record_file = work / f"records-{namespace}.txt"
        self.log_file = work / f"worker-{namespace}.log"
        self.env = {
            **os.environ,
            "STREAMS_NAMESPACE": namespace,
            "STREAMS_BOOTSTRAP_SERVERS": bootstrap,
            "BENCH_RECORD_FILE": str(self.record_file),
            "BENCH_FUNCTIONS": functions,
            "PYTHONPATH": str(ROOT),
            **{
                f"STREAMS_PARTITIONS_{t.upper()}": str(partitions)
                for t in ("events", "runs", "waits", "timers")
            },
            "STREAMS_PARTITIONS_HISTORY": "1",
            **(extra_env or {}),
        }
        self.roles = roles
        self.extra_executors = extra_executors
        self.procs: list[subprocess.Popen[bytes]] = []
        self._log = None

    def config(self) -> StreamsConfig:
        return StreamsConfig.from_env(self.env, namespace=self.namespace)

    def start(self) -> Worker:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_file, "ab")  # noqa: SIM115
        base = [sys.executable, "-m", "streams", "worker", "bench.cart_app:app", "--log-level", "WARNING"]
        if self.mode == "split":
            commands = [
                [*base, "--processors", role, "--state-dir", str(self.state_dir / role)]
                for role in self.roles
            ]
        else:
            commands = [
                [
                    *base,
                    "--processors",
                    ",".join(self.roles),
                    "--mode",
                    self.mode,
                    "--state-dir",
                    str(self.state_dir),
                ]
            ]
        # Further executor instances join the executor group and take some `runs` partitions.
        commands += [
            [*base, "--processors", "executor", "--state-dir", str(self.state_dir / f"extra-executor-{i}")]
            for i in range(self.extra_executors)
        ]
        for command in commands:
            self.procs.append(
                subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
            )
        return self

    def processes(self) -> dict[str, int]:
        """Name → pid of every worker process (the role children of ``--mode processes`` included)."""
        out: dict[str, int] = {}
        names = [f"worker:{role}" for role in self.roles] if self.mode == "split" else ["worker"]
        names += [f"worker:extra-executor-{i}" for i in range(self.extra_executors)]
        for name, proc in zip(names, self.procs, strict=False):
            out[name] = proc.pid
            for child in descendants(proc.pid):
                words = cmdline(child).split()
                if "py-spy" in " ".join(words[:1]) or "streams" not in words:
                    continue
                role = words[words.index("--processors") + 1] if "--processors" in words else str(child)
                out[f"{name}/{role}"] = child
        return out

    def alive(self) -> bool:
        return all(proc.poll() is None for proc in self.procs)

    def stop(self) -> list[int | None]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        if self._log is not None:
            self._log.close()
        return codes

    def records(self) -> list[list[str]]:
        if not self.record_file.exists():
            return []
        return [line.split() for line in self.record_file.read_text().splitlines() if line.strip()]


# -- driver side: producer and completion reader -------------------------------------------------------


def make_producer(config: StreamsConfig, linger_ms: float) -> Producer:
    return Producer(
        {
            **config.client_config(),
            **producer_defaults(),
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def produce(producer: Producer, topic: str, value: bytes, key: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            producer.poll(0.01)


class Completions:
    """Reads ``history`` (read_committed) on a thread: wall time each key's run was seen ending.

    The key is ``data[key_field]`` of the run's trigger.
    """

    def __init__(self, config: StreamsConfig, key_field: str) -> None:
        self.key_field = key_field
        self.ended: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        topic = config.topic("history")
        self._consumer = Consumer(
            {
                **config.client_config(),
                "group.id": f"{config.namespace}.bench-history",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                # Not lower: an idle read_committed consumer polling every 5 ms costs this broker
                # about a quarter of a core (100 ms: 4 %), which would be charged to the engine.
                "fetch.wait.max.ms": 100,
            }
        )
        partitions = self._consumer.list_topics(topic, timeout=30).topics[topic].partitions
        self._consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self._thread = threading.Thread(target=self._run, name="history-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(1, 0.05)
            if messages:
                messages += self._consumer.consume(1000, 0)
            now = time.time()
            for message in messages:
                if message.error() is not None or message.value() is None:
                    continue
                entry = CODEC.decode(HISTORY_ENTRY, message.value())
                key = json.loads(entry["trigger"]["data"]).get(self.key_field)
                with self._lock:
                    if entry["status"] == "RUNNING":
                        self.started.setdefault(key, now)
                    elif key not in self.ended:
                        self.ended[key] = now
                        self.status[key] = entry["status"]

    def wait(self, keys: Iterable[str], timeout_s: float, alive: Callable[[], bool]) -> None:
        keys = list(keys)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                missing = sum(1 for k in keys if k not in self.ended)
            if missing == 0:
                return
            if not alive():
                raise RuntimeError("the worker exited")
            time.sleep(0.02)
        raise TimeoutError(f"{missing} of {len(keys)} runs did not end within {timeout_s} s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def trigger(cart_id: str, **extra: Any) -> bytes:
    return CODEC_JSON.encode_json(Event(name="cart/product.added", data={"cart_id": cart_id, **extra}))


def purchase(cart_id: str) -> bytes:
    return CODEC_JSON.encode_json(Event(name="cart/purchased", data={"cart_id": cart_id, "total": 42}))


def step_times(worker: Worker) -> dict[str, tuple[str, float]]:
    """cart id → (outcome, wall time the record step started)."""
    return {cart: (outcome, float(at)) for cart, outcome, at in worker.records()}


# -- one namespace + worker per mode ------------------------------------------------------------------


class Session:
    """A fresh namespace, its topics, a worker subprocess, a completion reader; warmed up."""

    def __init__(self, args: argparse.Namespace, broker: Broker, work: Path, label: str) -> None:
        self.namespace = f"{label}{uuid.uuid4().hex[:6]}"
        self.broker = broker
        self.worker = Worker(
            bootstrap=broker.bootstrap,
            namespace=self.namespace,
            work=work,
            mode=args.worker_mode,
            partitions=args.partitions,
            extra_executors=getattr(args, "extra_executors", 0),
        )
        self.config = self.worker.config()
        create_topics(self.config)
        self.events = self.config.topic("events")
        self.worker.start()
        self.completions = Completions(self.config, "cart_id")
        self.meter = Meter(self.processes)
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.profile_files: list[Path] = []
        self._warm_up()

    def processes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.broker.pid is not None:
            out["broker"] = self.broker.pid
        out.update(self.worker.processes())
        out["driver"] = os.getpid()
        return out

    def _warm_up(self) -> None:
        started = time.monotonic()
        producer = make_producer(self.config, 0)
        carts = [f"warm-{i}" for i in range(20)]
        for cart in carts:
            produce(producer, self.events, trigger(cart), cart.encode())
        for cart in carts:
            produce(producer, self.events, purchase(cart), cart.encode())
        producer.flush(30)
        self.completions.wait(carts, 300, self.worker.alive)
        print(
            f"  [{self.namespace}] worker ({self.worker.mode}) warm after {time.monotonic() - started:.1f} s",
            flush=True,
        )
        time.sleep(1)

    def start_profiling(self, directory: Path, tag: str) -> None:
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            print("  py-spy not found; no profile", flush=True)
            return
        directory.mkdir(parents=True, exist_ok=True)
        for name, pid in self.worker.processes().items():
            out = directory / f"{tag}-{name.replace('/', '-').replace(':', '-')}.txt"
            self.profile_files.append(out)
            self.profilers.append(
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--rate",
                        "100",
                        "--format",
                        "raw",
                        "--threads",
                        "--nonblocking",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def stop_profiling(self) -> None:
        for proc in self.profilers:
            proc.send_signal(signal.SIGINT)
        for proc in self.profilers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.profilers = []
        for path in self.profile_files:
            if path.exists():
                print(summarize_profile(path), flush=True)
        self.profile_files = []

    def close(self) -> dict[str, Any]:
        self.completions.close()
        codes = self.worker.stop()
        return {"worker_exit_codes": codes}


def summarize_profile(path: Path, top: int = 15) -> str:
    """Top functions by own samples (line numbers dropped) of a py-spy ``raw`` profile."""
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        leaf = frames[-1].rsplit(":", 1)[0] + ")" if ":" in frames[-1] else frames[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    lines = [f"  profile {path.name}: {total} samples; own time:"]
    for function, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"    {100 * count / max(total, 1):5.1f} %  {function}")
    return "\n".join(lines)


# -- modes ----------------------------------------------------------------------------------------------


def log_ends(config: StreamsConfig) -> dict[str, int]:
    """Sum of high watermarks (records and transaction markers) per topic of the namespace."""
    consumer = Consumer({**config.client_config(), "group.id": f"{config.namespace}.bench-offsets"})
    try:
        topics = consumer.list_topics(timeout=30).topics
        out: dict[str, int] = {}
        for name, metadata in topics.items():
            if not name.startswith(config.namespace + "."):
                continue
            short = name[len(config.namespace) + 1 :]
            out[short] = sum(
                consumer.get_watermark_offsets(TopicPartition(name, p), 10)[1] for p in metadata.partitions
            )
        return out
    finally:
        consumer.close()


def appended_per_flow(before: dict[str, int], after: dict[str, int], flows: int) -> dict[str, float]:
    out = {t: round((after.get(t, 0) - before.get(t, 0)) / flows, 2) for t in sorted(after)}
    out = {t: v for t, v in out.items() if v}
    out["total"] = round(sum(out.values()), 2)
    return out


def run_throughput(session: Session, args: argparse.Namespace, run: int) -> dict[str, Any]:
    n = args.flows
    tag = f"t{run}-"
    carts = [f"{tag}{i}" for i in range(n)]
    triggers = [(trigger(c), c.encode()) for c in carts]
    purchases = [(purchase(c), c.encode()) for c in carts]
    producer = make_producer(session.config, args.linger_ms)
    ends_before = log_ends(session.config)
    load_before = loadavg()
    session.meter.begin()
    if args.profile:
        session.start_profiling(args.profile, f"throughput{run}-{args.worker_mode}")
    t0 = time.time()
    for value, key in triggers:
        produce(producer, session.events, value, key)
        producer.poll(0)
    producer.flush(60)
    t_triggers = time.time()
    for value, key in purchases:
        produce(producer, session.events, value, key)
        producer.poll(0)
    producer.flush(60)
    t_purchases = time.time()
    session.completions.wait(carts, args.timeout_s, session.worker.alive)
    t_end = max(session.completions.ended[c] for c in carts)
    if args.profile:
        session.stop_profiling()
    usage = session.meter.end()
    time.sleep(1.5)  # idle loops commit past their last markers
    appended = appended_per_flow(ends_before, log_ends(session.config), n)
    steps = step_times(session.worker)
    outcomes = [steps[c][0] for c in carts if c in steps]
    elapsed = t_end - t0
    return {
        "run": run,
        "flows": n,
        "inflight_limit": n,
        "linger_ms": args.linger_ms,
        "seconds": round(elapsed, 3),
        "flows_per_s": round(n / elapsed, 1),
        "triggers_acked_s": round(t_triggers - t0, 3),
        "purchases_acked_s": round(t_purchases - t0, 3),
        "first_step_s": round(min(steps[c][1] for c in carts) - t0, 3),
        "last_step_s": round(max(steps[c][1] for c in carts) - t0, 3),
        "purchased": outcomes.count("purchased"),
        "timed_out": outcomes.count("timeout"),
        "statuses": sorted({session.completions.status[c] for c in carts}),
        "log_appends_per_flow": appended,
        "load_before": load_before,
        "load_after": loadavg(),
        "usage": usage,
    }


def paced(
    schedule: list[tuple[float, str, bytes, bytes]], producer: Producer, topic: str
) -> dict[str, float]:
    """Produces ``(due offset s, label, value, key)`` in due order; returns label → produce() wall time."""
    sent: dict[str, float] = {}
    schedule = sorted(schedule, key=lambda item: item[0])
    began = time.monotonic()
    for due, label, value, key in schedule:
        delay = began + due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent[label] = time.time()
        produce(producer, topic, value, key)
        producer.poll(0)
    producer.flush(30)
    return sent


def read_topic(config: StreamsConfig, name: str) -> list[Any]:
    """Every committed record of a topic, from the beginning to its end now."""
    topic = config.topic(name)
    consumer = Consumer(
        {
            **config.client_config(),
            "group.id": f"{config.namespace}.bench-read-{name}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out: list[Any] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + 60
    while len(at_end) < len(partitions) and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            error = message.error()
            if error is None:
                out.append(message)
                at_end.discard(message.partition())
            elif error.code() == -191:  # _PARTITION_EOF
                at_end.add(message.partition())
    consumer.close()
    return out


def stage_breakdown(session: Session, carts: list[str], sent: dict[str, float]) -> dict[str, Any]:
    """Where the resume latency goes, from the timestamps of the records each hop wrote.

    ``events`` has LogAppendTime (broker clock); ``waits`` and ``runs`` records carry the producing
    processor's create time (taken at ``produce()``, before its transaction commits).
    """
    from processors.records import RUN_COMMAND, WAIT_COMMAND

    config = session.config
    wanted = set(carts)
    appended: dict[str, float] = {}
    for message in read_topic(config, "events"):
        event = CODEC_JSON.decode(message.value())
        cart = event.data.get("cart_id")
        if event.name == "cart/purchased" and cart in wanted:
            appended[cart] = message.timestamp()[1] / 1000
    routed: dict[str, float] = {}
    for message in read_topic(config, "waits"):
        kind, fields = CODEC.decode(WAIT_COMMAND, message.value())["body"]
        if kind.endswith("CorrelatedEvent"):
            cart = json.loads(fields["event"]["data"]).get("cart_id")
            if cart in wanted:
                routed[cart] = message.timestamp()[1] / 1000
    resolved: dict[str, float] = {}
    for message in read_topic(config, "runs"):
        kind, fields = CODEC.decode(RUN_COMMAND, message.value())["body"]
        if kind.endswith("WaitResolved") and fields["event"] is not None:
            cart = json.loads(fields["event"]["data"]).get("cart_id")
            if cart in wanted:
                resolved[cart] = message.timestamp()[1] / 1000
    steps = step_times(session.worker)
    complete = [c for c in carts if c in appended and c in routed and c in resolved and c in steps]
    hops = {
        "1_driver_produce_to_events_append": [appended[c] - sent[f"p:{c}"] for c in complete],
        "2_events_append_to_router_produce": [routed[c] - appended[c] for c in complete],
        "3_router_produce_to_matcher_produce": [resolved[c] - routed[c] for c in complete],
        "4_matcher_produce_to_step_start": [steps[c][1] - resolved[c] for c in complete],
    }
    return {name: summary_ms(values, (50, 99)) for name, values in hops.items()}


def run_latency(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    rate, seconds, delay = args.rate, args.seconds, 0.5
    n = int(rate * seconds)
    carts = [f"l-{i}" for i in range(n)]
    schedule = []
    for i, cart in enumerate(carts):
        schedule.append((i / rate, f"t:{cart}", trigger(cart), cart.encode()))
        schedule.append((i / rate + delay, f"p:{cart}", purchase(cart), cart.encode()))
    producer = make_producer(session.config, 0)
    ends_before = log_ends(session.config)
    load_before = loadavg()
    session.meter.begin()
    sent = paced(schedule, producer, session.events)
    session.completions.wait(carts, args.timeout_s, session.worker.alive)
    usage = session.meter.end()
    time.sleep(1.5)
    appended = appended_per_flow(ends_before, log_ends(session.config), n)
    steps = step_times(session.worker)
    latencies = [steps[c][1] - sent[f"p:{c}"] for c in carts]
    outcomes = [steps[c][0] for c in carts]
    breakdown = stage_breakdown(session, carts, sent)
    return {
        "breakdown_ms": breakdown,
        "rate_per_s": rate,
        "seconds": seconds,
        "flows": n,
        "purchase_delay_s": delay,
        "resume_latency_ms": summary_ms(latencies),
        "log_appends_per_flow": appended,
        "purchased": outcomes.count("purchased"),
        "timed_out": outcomes.count("timeout"),
        "load_before": load_before,
        "load_after": loadavg(),
        "usage": usage,
    }


def load_pending_timers(session: Session, count: int) -> dict[str, Any]:
    """Produces ``count`` gated timers due in 2 h and waits until the timers processor committed them."""
    from processors.records import wait_expired
    from processors.timers import schedule_timer_command

    config = session.config
    topic = config.topic("timers")
    producer = make_producer(config, 50)
    fire = int(time.time() * 1000) + 2 * 3600 * 1000
    started = time.monotonic()
    for i in range(count):
        run_id = f"pending-{i:07d}"
        key = f"pending-key-{i}".encode()
        payload = wait_expired(key, run_id, "wait", fire + i)
        value = schedule_timer_command(
            f"{run_id}/wait/wait", fire + i, "waits", key, payload, after_events_routed=True
        )
        produce(producer, topic, value, run_id.encode())
        if i % 10000 == 0:
            producer.poll(0)
    producer.flush(120)
    produced = time.monotonic() - started
    group = Consumer({**config.client_config(), "group.id": config.topic("timers")})
    partitions = group.list_topics(topic, timeout=30).topics[topic].partitions
    tps = [TopicPartition(topic, p) for p in partitions]
    ends = {p: group.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in partitions}
    while True:
        committed = {tp.partition: tp.offset for tp in group.committed(tps, 10)}
        if all(ends[p] == 0 or committed.get(p, -1) >= ends[p] for p in partitions):
            break
        if not session.worker.alive():
            raise RuntimeError("the worker exited while loading timers")
        time.sleep(0.5)
    group.close()
    return {
        "pending_timers": count,
        "produce_s": round(produced, 1),
        "consumed_s": round(time.monotonic() - started, 1),
    }


class Background:
    """Unrelated events (``bench/noise``, no function, not correlated) at a steady rate on a thread.

    They keep every ``events`` partition receiving appends after each wait's deadline, which is
    what lets the deadline gate pass a deadline without its wall-clock grace (see ``docs/timers.md``).
    """

    def __init__(self, session: Session, rate: float) -> None:
        self._stop = threading.Event()
        self._producer = make_producer(session.config, 0)
        self._topic = session.events
        self._rate = rate
        self._thread = threading.Thread(target=self._run, name="background-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        began = time.monotonic()
        while not self._stop.is_set():
            delay = began + i / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            value = CODEC_JSON.encode_json(Event(name="bench/noise", data={"i": i}))
            produce(self._producer, self._topic, value, f"noise-{i}".encode())
            self._producer.poll(0)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._producer.flush(10)


def run_timeout(session: Session, args: argparse.Namespace) -> dict[str, Any]:
    loaded = (
        load_pending_timers(session, args.pending_timers) if args.pending_timers else {"pending_timers": 0}
    )
    if args.pending_timers:
        time.sleep(2)
    n, rate, timeout = args.timeout_flows, args.timeout_rate, 5.0
    carts = [f"x-{i}" for i in range(n)]
    schedule = [(i / rate, f"t:{c}", trigger(c, timeout="5s"), c.encode()) for i, c in enumerate(carts)]
    producer = make_producer(session.config, 0)
    background = Background(session, args.background_rate) if args.background_rate else None
    load_before = loadavg()
    session.meter.begin()
    sent = paced(schedule, producer, session.events)
    session.completions.wait(carts, args.timeout_s + 10, session.worker.alive)
    usage = session.meter.end()
    if background is not None:
        background.stop()
    steps = step_times(session.worker)
    lateness = [steps[c][1] - (sent[f"t:{c}"] + timeout) for c in carts]
    outcomes = [steps[c][0] for c in carts]
    return {
        **loaded,
        "background_events_per_s": args.background_rate,
        "flows": n,
        "rate_per_s": rate,
        "timeout_s": timeout,
        "lateness_ms": summary_ms(lateness, (50, 95, 99)),
        "purchased": outcomes.count("purchased"),
        "timed_out": outcomes.count("timeout"),
        "load_before": load_before,
        "load_after": loadavg(),
        "usage": usage,
    }


def warm_broker(broker: Broker, work: Path, seconds: float, worker_mode: str, partitions: int) -> None:
    """Runs cart flows in a throw-away namespace so the broker's JIT is warm before measuring.

    A freshly started JVM broker spends several times more CPU per request for its first minute
    (on this machine 50 transactions/s cost 41 % of a core in the first 15 s, 14 % after a minute):
    without this, whichever mode runs first pays for the compiler.
    """
    if seconds <= 0:
        return
    started = time.monotonic()
    options = argparse.Namespace(worker_mode=worker_mode, partitions=partitions)
    session = Session(options, broker, work, "warm")
    try:
        producer = make_producer(session.config, 5)
        burst = [f"burst-{i}" for i in range(3000)]
        for cart in burst:
            produce(producer, session.events, trigger(cart), cart.encode())
        for cart in burst:
            produce(producer, session.events, purchase(cart), cart.encode())
        producer.flush(60)
        session.completions.wait(burst, 300, session.worker.alive)
        remaining = seconds - (time.monotonic() - started)
        rate = 50.0
        paced_carts = [f"paced-{i}" for i in range(max(0, int(remaining * rate)))]
        schedule = [(i / rate, f"t:{c}", trigger(c), c.encode()) for i, c in enumerate(paced_carts)]
        schedule += [(i / rate + 0.2, f"p:{c}", purchase(c), c.encode()) for i, c in enumerate(paced_carts)]
        paced(schedule, make_producer(session.config, 0), session.events)
        session.completions.wait(paced_carts, 300, session.worker.alive)
    finally:
        session.close()
    print(f"  broker warmed for {time.monotonic() - started:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap")
    parser.add_argument("--modes", default="throughput,latency,timeout")
    parser.add_argument("--worker-mode", choices=["threads", "processes", "split"], default="threads")
    parser.add_argument("--partitions", type=int, default=2, help="partitions of events/runs/waits/timers")
    parser.add_argument(
        "--extra-executors", type=int, default=0, help="further `--processors executor` worker processes"
    )
    parser.add_argument("--flows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs (same worker)")
    parser.add_argument("--linger-ms", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--timeout-flows", type=int, default=500)
    parser.add_argument("--timeout-rate", type=float, default=100.0)
    parser.add_argument("--pending-timers", type=int, default=0)
    parser.add_argument(
        "--background-rate", type=float, default=0.0, help="timeout mode: unrelated events/s during the run"
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="give up waiting for completions")
    parser.add_argument("--profile", type=Path, help="py-spy the worker during throughput runs")
    parser.add_argument(
        "--broker-warmup-s", type=float, default=60.0, help="cart flows before measuring (JIT); 0: none"
    )
    parser.add_argument("--work-dir", type=Path, help="keep data here (default: a temporary directory)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cart-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {loadavg()}; work dir {work}", flush=True)
    broker = Broker(args.bootstrap, work)
    results: dict[str, Any] = {
        "worker_mode": args.worker_mode,
        "extra_executors": args.extra_executors,
        "partitions": args.partitions,
        "cpus": os.cpu_count(),
        "load_at_start": loadavg(),
    }
    try:
        warm_broker(broker, work, args.broker_warmup_s, args.worker_mode, args.partitions)
        results["broker_warmup_s"] = args.broker_warmup_s
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            session = Session(args, broker, work, mode[0])
            try:
                if mode == "throughput":
                    runs = []
                    for run in range(1, args.repeat + 1):
                        result = run_throughput(session, args, run)
                        print(
                            f"  throughput run {run}: {result['flows_per_s']} flows/s "
                            f"({result['seconds']} s)",
                            flush=True,
                        )
                        runs.append(result)
                        time.sleep(2)
                    results["throughput"] = runs
                elif mode == "latency":
                    results["latency"] = run_latency(session, args)
                    print(f"  latency: {results['latency']['resume_latency_ms']}", flush=True)
                elif mode == "timeout":
                    results["timeout"] = run_timeout(session, args)
                    print(f"  timeout: {results['timeout']['lateness_ms']}", flush=True)
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
            finally:
                results.setdefault("sessions", {})[mode] = session.close()
    finally:
        broker.stop()
        results["load_at_end"] = loadavg()
    write_results(results, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
