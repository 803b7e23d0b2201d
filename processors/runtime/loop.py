"""The processing loop of one processor role: consume → process → produce → commit (EOS v2).

Responsibilities:

- start-up: lock the state directory, create changelogs, open stores, fence predecessors
  (``init_transactions``) and join the consumer group ``<namespace>.<processor>``;
- the main loop, a short list of named calls: advance restores, consume, process, punctuate,
  commit when the batch policy says so;
- poison input: a record that fails to decode or whose processing raises goes to the namespace's
  ``dlq`` topic inside the same transaction, with headers naming the processor, the source
  coordinates and the error; processing continues;
- errors, as librdkafka documents them: an abortable transaction is aborted and the input rewound
  to the last commit; retriable errors are retried where they happen (in the wrappers); a fatal
  error (fencing included) stops the loop with one clear log line and exit code 1;
- shutdown: finish the batch, commit, leave the group (revoking every partition closes its
  stores), close the producer.

One loop per processor role per process; ``ProcessorLoop.run`` blocks on the calling thread.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from processors.errors import StateError
from processors.kafka.admin import ensure_changelogs
from processors.kafka.consumer import PROCESSOR_CONSUMER_SETTINGS, Consumer
from processors.kafka.errors import FatalKafkaError, TransactionAbortRequiredError
from processors.kafka.producer import Producer
from processors.runtime.checkpoint import Checkpoint, CrashHook
from processors.runtime.config import RuntimeConfig
from processors.runtime.context import Context
from processors.runtime.identity import InstanceIdentity
from processors.runtime.processor import Processor, Record, is_engine_error
from processors.runtime.rebalance import (
    AssignedPartition,
    PartitionRegistry,
    PartitionState,
    RebalanceHandler,
)
from processors.runtime.restore import RestoreMetrics, Restorer
from processors.state.base import Store
from streams._config import StreamsConfig
from streams._topics import changelog_topic
from streams.errors import KafkaError, StreamsError, UsageError

logger = logging.getLogger(__name__)

#: Exit code of a loop stopped by a fatal error.
EXIT_FATAL = 1
_DLQ_MESSAGE_LIMIT = 1000


class LoopState(enum.Enum):
    """Lifecycle of a :class:`ProcessorLoop`.

    ::

        CREATED ──run()──▶ STARTING ──▶ RUNNING ──stop()──▶ STOPPING ──▶ STOPPED
                              │            │                    │
                              └────────────┴──fatal error───────┴──▶ FAILED
    """

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


_ALLOWED = {
    LoopState.CREATED: {LoopState.STARTING, LoopState.STOPPED},
    LoopState.STARTING: {LoopState.RUNNING, LoopState.STOPPING, LoopState.FAILED},
    LoopState.RUNNING: {LoopState.STOPPING, LoopState.FAILED},
    LoopState.STOPPING: {LoopState.STOPPED, LoopState.FAILED},
    LoopState.STOPPED: set(),
    LoopState.FAILED: set(),
}


@dataclass
class LoopMetrics:
    """Counters of one loop (read them from another thread only for reporting).

    Attributes:
        records: Input records processed (including those sent to the DLQ).
        dlq: Records sent to the DLQ.
        commits: Transactions committed.
        aborts: Transactions aborted.
        commit_ms: Durations of recent commits (Steps 1-5), newest last.
        batch_records: Input records of recent commits, newest last.
        restore: Restore counters.
    """

    records: int = 0
    dlq: int = 0
    commits: int = 0
    aborts: int = 0
    commit_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    batch_records: deque[int] = field(default_factory=lambda: deque(maxlen=100_000))
    restore: RestoreMetrics = field(default_factory=RestoreMetrics)


def _headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, dict) else headers
    return tuple(
        (name, value if isinstance(value, bytes) else (value or "").encode()) for name, value in items
    )


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ProcessorLoop:
    """Runs one processor: its consumer, its transactional producer, its stores.

    Args:
        config: App configuration (connection, namespace, state directory).
        processor: The processor to run.
        runtime: Runtime settings.
        crash_hook: Called at each commit protocol point (tests kill the process there).
        wall_clock: Wall clock in ms (``ctx.now()``, ``punctuate``).
    """

    def __init__(
        self,
        config: StreamsConfig,
        processor: Processor[Any],
        runtime: RuntimeConfig | None = None,
        *,
        crash_hook: CrashHook | None = None,
        wall_clock: Callable[[], int] = _wall_ms,
    ) -> None:
        self.config = config
        self.processor = processor
        self.runtime = runtime or RuntimeConfig()
        self.name = processor.name
        self.input_topic = config.topic(processor.input_topic)
        self.group_id = config.topic(processor.name)
        self.dlq_topic = config.topic("dlq")
        state_root = self.runtime.state_dir if self.runtime.state_dir is not None else config.state_dir
        self.state_dir = Path(state_root) / config.namespace
        self.metrics = LoopMetrics()
        self._crash_hook = crash_hook
        self._wall_clock = wall_clock
        self._policy = self.runtime.batch
        self._state = LoopState.CREATED
        self._stop_requested = threading.Event()
        self._identity = InstanceIdentity(self.state_dir / processor.name)
        self._changelogs = {
            store: changelog_topic(config, processor.name, store) for store in processor.stores
        }
        self._registry = PartitionRegistry()
        self._stores: dict[str, Store] = {}
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._restorer: Restorer | None = None
        self._checkpoint: Checkpoint | None = None
        self._in_consume = False
        self._batch_first: dict[tuple[str, int], int] = {}
        self._pending_seeks: dict[tuple[str, int], int] = {}
        self._next_tick = 0.0
        self._next_marker_check = 0.0
        self.transactional_id: str | None = None
        self.fatal_error: BaseException | None = None

    # -- public ------------------------------------------------------------------------------

    @property
    def state(self) -> LoopState:
        """Lifecycle state."""
        return self._state

    def stop(self) -> None:
        """Asks the loop to finish its batch, commit and stop (safe from any thread or a signal)."""
        self._stop_requested.set()

    def run(self) -> int:
        """Runs until :meth:`stop` or a fatal error.

        Returns:
            0 after a clean stop, :data:`EXIT_FATAL` after a fatal error (logged).
        """
        try:
            self._transition(LoopState.STARTING)
            self._start()
            self._transition(LoopState.RUNNING)
            while not self._stop_requested.is_set():
                self._run_once()
            self._transition(LoopState.STOPPING)
            self._shutdown()
            self._transition(LoopState.STOPPED)
            return 0
        except (FatalKafkaError, StreamsError, OSError) as exc:
            self._fail(exc)
            return EXIT_FATAL
        except BaseException as exc:
            self._fail(exc)
            raise

    # -- lifecycle ---------------------------------------------------------------------------

    def _transition(self, target: LoopState) -> None:
        if target not in _ALLOWED[self._state]:
            raise UsageError(f"processor loop cannot go from {self._state.value} to {target.value}")
        self._state = target

    def _start(self) -> None:
        """Prepares everything the loop needs, in dependency order.

        Steps:
            1. Lock ``<state_dir>/<namespace>/<processor>`` and read the instance id; the
               transactional id is ``<namespace>.<processor>.<instance id>``.
            2. Create missing changelogs (compacted, the input's partition count) and check
               existing ones.
            3. Create the stores (partitions open on assignment).
            4. Create the producer and ``init_transactions``: fences a previous instance with the
               same id and aborts its open transaction.
            5. Create the restore consumer and the group consumer, and subscribe.
        """
        # Step 1
        instance_id = self._identity.acquire()
        self.transactional_id = f"{self.group_id}.{instance_id}"
        # Step 2
        ensure_changelogs(self.config, self.name, self.processor.stores, self.input_topic)
        # Step 3
        self._stores = {name: self._make_store(name) for name in self.processor.stores}
        # Step 4
        client = self.config.client_config()
        self._producer = Producer(
            client,
            transactional_id=self.transactional_id if self.runtime.exactly_once else None,
            transaction_timeout_ms=self.runtime.transaction_timeout_ms,
            extra={"client.id": self.transactional_id, **self.runtime.producer_config},
        )
        self._producer.init()
        # Step 5
        restore_consumer = Consumer(
            client,
            {
                # Required by the client; the restore consumer never joins or commits to it.
                "group.id": f"{self.group_id}.restore",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # An empty fetch at the end must not park the restore for the default 500 ms.
                "fetch.wait.max.ms": 10,
                "auto.offset.reset": "earliest",
                "client.id": f"{self.transactional_id}.restore",
            },
        )
        self._restorer = Restorer(
            processor=self.name,
            consumer=restore_consumer,
            stores=self._stores,
            changelog_topics=self._changelogs,
            log_interval_s=self.runtime.restore_log_interval_s,
        )
        self.metrics.restore = self._restorer.metrics
        settings: dict[str, Any] = {
            **PROCESSOR_CONSUMER_SETTINGS,
            "group.id": self.group_id,
            "client.id": self.transactional_id,
        }
        if self.runtime.static_membership:
            settings["group.instance.id"] = f"{self.name}.{instance_id}"
        self._consumer = Consumer(client, {**settings, **self.runtime.consumer_config})
        self._checkpoint = self._new_checkpoint()
        handler = RebalanceHandler(
            processor=self.name,
            registry=self._registry,
            target=self,
            revoke_deadline_s=self.runtime.revoke_deadline_ms / 1000.0,
        )
        self._consumer.subscribe(
            [self.input_topic],
            on_assign=handler.on_assign,
            on_revoke=handler.on_revoke,
            on_lost=handler.on_lost,
        )
        logger.info(
            "%s: started (group %s, transactional.id %s, %s, state %s)",
            self.name,
            self.group_id,
            self.transactional_id,
            self.runtime.guarantee,
            self.state_dir,
            extra={"processor": self.name},
        )

    def _make_store(self, name: str) -> Store:
        if self.runtime.store_backend == "memory":
            from processors.state.memory import MemoryStore

            return MemoryStore(self.name, name)
        from processors.state.rocksdb import RocksDBStore

        return RocksDBStore(self.name, name, self.state_dir)

    def _shutdown(self) -> None:
        """Stops cleanly.

        Steps:
            1. Commit the open transaction (abort and rewind it if the commit fails).
            2. Close the consumer: it leaves the group, and the revoke callback releases every
               partition and closes its stores.
            3. Close the restore consumer, the producer and any store still open; unlock the
               state directory.
        """
        # Step 1
        try:
            self.finish_transaction(self.runtime.revoke_deadline_ms / 1000.0, "shutdown")
        except KafkaError as exc:
            logger.warning(
                "%s: could not commit at shutdown: %s", self.name, exc, extra={"processor": self.name}
            )
        # Step 2
        if self._consumer is not None:
            self._consumer.close()
        # Step 3
        self._close_resources()
        logger.info(
            "%s: stopped after %d records", self.name, self.metrics.records, extra={"processor": self.name}
        )

    def _fail(self, exc: BaseException) -> None:
        self.fatal_error = exc
        self._state = LoopState.FAILED
        logger.critical(
            "%s: stopping on a fatal error: %s: %s",
            self.name,
            type(exc).__name__,
            exc,
            extra={"processor": self.name},
            exc_info=not isinstance(exc, StreamsError),
        )
        if self._checkpoint is not None:
            self._checkpoint.abort()
        if self._consumer is not None:
            self._consumer.close()
        self._close_resources()

    def _close_resources(self) -> None:
        if self._restorer is not None:
            self._restorer.close()
        if self._producer is not None:
            self._producer.close()
        for store in self._stores.values():
            try:
                store.close()
            except StateError as exc:
                logger.warning("%s: closing store %s: %s", self.name, store.name, exc)
        self._identity.release()

    def _new_checkpoint(self) -> Checkpoint:
        assert self._producer is not None and self._consumer is not None
        return Checkpoint(
            producer=self._producer,
            consumer=self._consumer,
            stores=self._stores,
            changelog_topics=self._changelogs,
            crash_hook=self._crash_hook,
        )

    def _sink(self) -> Checkpoint:
        assert self._checkpoint is not None
        return self._checkpoint

    # -- the loop ----------------------------------------------------------------------------

    def _run_once(self) -> None:
        try:
            self._advance_restores()
            records, drained = self._consume()
            self._process(records)
            self._punctuate_if_due()
            self._commit_if_due(drained)
            self._commit_past_markers_if_idle(drained)
        except TransactionAbortRequiredError as exc:
            self._abort_and_rewind(str(exc))

    def _advance_restores(self) -> None:
        assert self._restorer is not None
        assigned = self._registry.in_state(PartitionState.ASSIGNED)
        if assigned:
            self._start_restores(assigned)
        if self._restorer.busy:
            idle = not self._registry.in_state(PartitionState.ACTIVE)
            timeout = self._policy.idle_wait_ms / 1000.0 if idle else 0.0
            for partition in self._restorer.step(self.runtime.restore_step_records, timeout):
                restored = self._registry.get(partition)
                if restored is not None and restored.state is PartitionState.RESTORING:
                    self._activate(restored)

    def _consume(self) -> tuple[list[Message], bool]:
        assert self._consumer is not None and self._producer is not None and self._checkpoint is not None
        size = self._policy.fetch_size(self._checkpoint.records)
        self._in_consume = True
        try:
            records = self._consumer.consume(size, 0).records
            if not records and self._checkpoint.empty:
                wait = self._idle_wait_s()
                if wait > 0:
                    records = self._consumer.consume(1, wait).records
                    if records and size > 1:
                        records += self._consumer.consume(size - 1, 0).records
        finally:
            self._in_consume = False
        self._producer.poll(0)
        if self._pending_seeks:
            records = self._drop_rewound(records)
        return records, len(records) < size

    def _idle_wait_s(self) -> float:
        assert self._restorer is not None
        if self._restorer.busy or self._registry.in_state(PartitionState.ASSIGNED):
            return 0.0
        wait = self._policy.idle_wait_ms / 1000.0
        if self.processor.has_punctuate and self._registry.in_state(PartitionState.ACTIVE):
            wait = min(wait, max(0.0, self._next_tick - time.monotonic()))
        return wait

    def _drop_rewound(self, records: list[Message]) -> list[Message]:
        """Drops records fetched before a rewind inside this consume call, and seeks again."""
        assert self._consumer is not None
        seeks, self._pending_seeks = self._pending_seeks, {}
        kept = [m for m in records if (m.topic(), m.partition()) not in seeks]
        for (topic, partition), offset in seeks.items():
            entry = self._registry.get(partition)
            if entry is not None and entry.state is PartitionState.ACTIVE:
                self._consumer.seek(topic, partition, offset)
        return kept

    def _process(self, records: list[Message]) -> None:
        if not records:
            return
        first = self._batch_first
        for message in records:
            key = (message.topic() or "", message.partition() or 0)
            offset = message.offset() or 0
            if key not in first or offset < first[key]:
                first[key] = offset
        for message in records:
            entry = self._registry.get(message.partition() or 0)
            if entry is None or entry.state is not PartitionState.ACTIVE or entry.ctx is None:
                continue  # revoked or not yet restored: read again after the seek on activation
            self._process_one(message, entry.ctx)
        first.clear()

    def _process_one(self, message: Message, ctx: Context) -> None:
        checkpoint = self._sink()
        topic = message.topic() or self.input_topic
        partition = message.partition() or 0
        offset = message.offset() or 0
        raw = message.value()
        try:
            value = self.processor.decoder(raw)
        except Exception as exc:
            if is_engine_error(exc):
                raise
            self._send_to_dlq(message, exc, "decode")
        else:
            ts_type, ts = message.timestamp()
            headers = message.headers()
            record = Record(
                topic,
                partition,
                offset,
                ts if ts_type else None,
                message.key(),
                value,
                raw,
                _headers(headers),
            )
            ctx.begin_scope(offset, record.timestamp_ms)
            try:
                self.processor.process(record, ctx)
            except BaseException as exc:
                ctx.rollback_scope()
                if is_engine_error(exc):
                    raise
                self._send_to_dlq(message, exc, "process")
            else:
                ctx.commit_scope()
        checkpoint.consumed(topic, partition, offset)
        self.metrics.records += 1

    def _send_to_dlq(self, message: Message, exc: BaseException, stage: str) -> None:
        text = str(exc)[:_DLQ_MESSAGE_LIMIT]
        headers = [
            ("streams.processor", self.name.encode()),
            ("streams.source.topic", (message.topic() or "").encode()),
            ("streams.source.partition", str(message.partition()).encode()),
            ("streams.source.offset", str(message.offset()).encode()),
            ("streams.error.stage", stage.encode()),
            ("streams.error.type", type(exc).__name__.encode()),
            ("streams.error.message", text.encode("utf-8", "replace")),
        ]
        self._sink().produce(self.dlq_topic, message.key(), message.value(), headers=headers)
        self.metrics.dlq += 1
        logger.warning(
            "%s: record %s[%s]@%s sent to %s (%s failed: %s: %s)",
            self.name,
            message.topic(),
            message.partition(),
            message.offset(),
            self.dlq_topic,
            stage,
            type(exc).__name__,
            text,
            extra={"processor": self.name, "tp": f"{message.topic()}[{message.partition()}]"},
        )

    def _punctuate_if_due(self) -> None:
        if not self.processor.has_punctuate:
            return
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + self.runtime.punctuate_interval_ms / 1000.0
        wall = self._wall_clock()
        for entry in self._registry.in_state(PartitionState.ACTIVE):
            if entry.ctx is not None:
                self._call_hook(entry.ctx, "punctuate", lambda ctx: self.processor.punctuate(wall, ctx))

    def _call_hook(self, ctx: Context, hook: str, call: Callable[[Context], None]) -> None:
        ctx.begin_scope(None, None)
        try:
            call(ctx)
        except BaseException as exc:
            ctx.rollback_scope()
            if is_engine_error(exc):
                raise
            logger.exception(
                "%s: %s failed on partition %d; its effects were discarded",
                self.name,
                hook,
                ctx.partition,
                extra={"processor": self.name, "partition": ctx.partition},
            )
        else:
            ctx.commit_scope()

    def _commit_if_due(self, drained: bool) -> None:
        checkpoint = self._sink()
        if checkpoint.empty:
            return
        if self._policy.should_commit(
            records=max(1, checkpoint.records), age_ms=checkpoint.age_ms(), drained=drained
        ):
            self._commit()

    def _commit_past_markers_if_idle(self, drained: bool) -> None:
        """Commits input positions that moved past transaction markers while nothing else happened.

        Transactional writers leave a commit marker after their records. The committed offset of a
        caught-up group then sits one short of the high watermark until the next record arrives,
        and anything that asks "has this group consumed everything appended before time T?" (the
        timers' deadline gate asks it of the router) would wait forever. The consumer's position
        steps over markers, so committing it when idle closes the gap. At most once a second.
        """
        now = time.monotonic()
        if not drained or self._pending_seeks or now < self._next_marker_check:
            return
        self._next_marker_check = now + 1.0
        checkpoint = self._sink()
        if not checkpoint.empty or self._consumer is None:
            return
        active = self._registry.in_state(PartitionState.ACTIVE)
        if not active:
            return
        for entry in active:
            position = self._consumer.position(entry.topic, entry.partition)
            if position is not None and (entry.committed_offset is None or position > entry.committed_offset):
                checkpoint.consumed(entry.topic, entry.partition, position - 1)
        if not checkpoint.empty:
            self._commit()

    def _commit(self, timeout_s: float | None = None) -> None:
        checkpoint = self._sink()
        for partition in checkpoint.partitions_with_work():
            entry = self._registry.get(partition)
            if entry is not None and entry.committed_offset is not None:
                checkpoint.include_offset(entry.topic, partition, entry.committed_offset)
        try:
            result = checkpoint.commit(timeout_s)
        except StateError as exc:
            # Kafka committed but a store did not take the writes: restore those partitions again.
            self._checkpoint = self._new_checkpoint()
            self._note_committed(checkpoint)
            self._restore_again(checkpoint.partitions_with_work(), exc)
            return
        self._checkpoint = self._new_checkpoint()
        self._note_committed(checkpoint)
        self.metrics.commits += 1
        self.metrics.commit_ms.append(result.duration_ms)
        self.metrics.batch_records.append(result.records)

    def _note_committed(self, checkpoint: Checkpoint) -> None:
        for (_, partition), offset in checkpoint.next_offsets.items():
            entry = self._registry.get(partition)
            if entry is not None:
                entry.committed_offset = offset
        self.processor.on_committed()

    def _abort_and_rewind(self, reason: str) -> None:
        """Aborts the open transaction and seeks every owned partition back to its last commit."""
        assert self._producer is not None and self._consumer is not None
        checkpoint = self._sink()
        targets = dict(self._batch_first)
        for key, offset in checkpoint.abort().items():
            targets[key] = min(offset, targets.get(key, offset))
        self._batch_first.clear()
        self._producer.abort()
        self._checkpoint = self._new_checkpoint()
        self.processor.on_aborted()
        for (topic, partition), offset in targets.items():
            entry = self._registry.get(partition)
            if entry is None or entry.state is not PartitionState.ACTIVE:
                continue
            self._consumer.seek(topic, partition, offset)
            if self._in_consume:
                self._pending_seeks[(topic, partition)] = offset
        self.metrics.aborts += 1
        logger.warning(
            "%s: aborted the transaction and rewound %s: %s",
            self.name,
            {p: o for (_, p), o in sorted(targets.items())},
            reason,
            extra={"processor": self.name},
        )

    # -- partitions --------------------------------------------------------------------------

    def _start_restores(self, entries: list[AssignedPartition]) -> None:
        """Starts restoring newly assigned partitions; activates those with nothing to replay.

        Steps:
            1. Read the group's committed offsets of the partitions. ``read_committed`` consumers
               ask for stable offsets: this waits while a previous owner's transaction on them is
               undecided, so the changelog ends read next are final.
            2. Open each partition's stores (a corrupt one is wiped) and start replaying every
               changelog from its checkpoint + 1 to its end.
            3. Activate the partitions that had nothing to replay.
        """
        assert self._consumer is not None and self._restorer is not None
        # Step 1
        try:
            committed = self._consumer.committed([(e.topic, e.partition) for e in entries])
        except KafkaError as exc:
            if isinstance(exc, FatalKafkaError):
                raise
            logger.warning(
                "%s: could not read committed offsets (%s); retrying",
                self.name,
                exc,
                extra={"processor": self.name},
            )
            return
        for entry in entries:
            entry.transition(PartitionState.RESTORING)
            entry.committed_offset = committed.get((entry.topic, entry.partition))
            # Step 2
            try:
                opened = self._restorer.open_stores(entry.partition)
                done = self._restorer.start(entry.partition, opened)
            except KafkaError as exc:
                if isinstance(exc, FatalKafkaError):
                    raise
                logger.warning(
                    "%s: could not start restoring partition %d (%s); retrying",
                    self.name,
                    entry.partition,
                    exc,
                    extra={"processor": self.name, "partition": entry.partition},
                )
                self._restorer.cancel(entry.partition)
                entry.transition(PartitionState.ASSIGNED)
                continue
            # Step 3
            if done:
                self._activate(entry)

    def _activate(self, entry: AssignedPartition) -> None:
        assert self._consumer is not None
        offset = entry.committed_offset if entry.committed_offset is not None else OFFSET_BEGINNING
        # Records fetched while paused (if any) were dropped; read again from the committed offset.
        self._consumer.seek(entry.topic, entry.partition, offset)
        self._consumer.resume([TopicPartition(entry.topic, entry.partition)])
        entry.ctx = Context(
            processor=self.name,
            partition=entry.partition,
            store_names=list(self.processor.stores),
            sink=self._sink,
            resolve_topic=self.config.topic,
            clock=self._wall_clock,
        )
        entry.transition(PartitionState.ACTIVE)
        ctx = entry.ctx
        self._call_hook(
            ctx, "on_partition_assigned", lambda c: self.processor.on_partition_assigned(c.partition, c)
        )
        logger.info(
            "%s: partition %d active from offset %s",
            self.name,
            entry.partition,
            entry.committed_offset,
            extra={"processor": self.name, "partition": entry.partition},
        )

    def _restore_again(self, partitions: set[int], exc: StateError) -> None:
        assert self._consumer is not None
        logger.error(
            "%s: stores of partitions %s did not take a committed transaction (%s); restoring them",
            self.name,
            sorted(partitions),
            exc,
            extra={"processor": self.name},
        )
        for partition in partitions:
            entry = self._registry.get(partition)
            if entry is None or entry.state is not PartitionState.ACTIVE:
                continue
            self._consumer.pause([TopicPartition(entry.topic, partition)])
            entry.ctx = None
            entry.transition(PartitionState.ASSIGNED)

    # -- RebalanceTarget ---------------------------------------------------------------------

    def assign_paused(self, partitions: list[TopicPartition]) -> None:
        """Adds partitions to the assignment at their committed offsets, paused (on_assign)."""
        assert self._consumer is not None
        self._consumer.incremental_assign(partitions)
        self._consumer.pause(partitions)

    def finish_transaction(self, deadline_s: float, reason: str) -> None:
        """Commits the open transaction within ``deadline_s`` or aborts it (on_revoke, shutdown)."""
        checkpoint = self._checkpoint
        if checkpoint is None or checkpoint.empty:
            return
        if self._state is LoopState.FAILED:
            checkpoint.abort()
            return
        try:
            self._commit(deadline_s)
            logger.debug("%s: committed for %s", self.name, reason, extra={"processor": self.name})
        except TransactionAbortRequiredError as exc:
            self._abort_and_rewind(f"{reason}: {exc}")

    def abort_transaction(self, reason: str) -> None:
        """Aborts the open transaction and rewinds the partitions still owned (on_lost)."""
        checkpoint = self._checkpoint
        if checkpoint is None or checkpoint.empty:
            return
        if self._state is LoopState.FAILED:
            checkpoint.abort()
            return
        self._abort_and_rewind(reason)

    def release_partition(self, partition: int, *, lost: bool) -> None:
        """Cancels restore, calls the revoke hook and closes the partition's stores."""
        entry = self._registry.get(partition)
        if entry is None:
            return
        if self._restorer is not None:
            self._restorer.cancel(partition)
        was_active = entry.state is PartitionState.ACTIVE
        entry.transition(PartitionState.REVOKING)
        if was_active:
            try:
                self.processor.on_partition_revoked(partition)
            except Exception:
                logger.exception("%s: on_partition_revoked(%d) failed", self.name, partition)
        for store in self._stores.values():
            if partition in store.partitions:
                store.close_partition(partition)
        entry.ctx = None
        entry.transition(PartitionState.CLOSED)
        self._registry.remove(partition)
        if lost:
            logger.debug("%s: dropped lost partition %d", self.name, partition)
