"""Restores store partitions from their changelogs before a partition is processed.

Responsibilities:

- open a partition's stores, wiping ones that are corrupt (then they replay in full);
- read each changelog partition from the stored checkpoint + 1 to its end with a dedicated
  ``read_committed`` consumer (no group), so records of aborted transactions are never applied;
- decide the end correctly: with ``read_committed`` the end is the last stable offset (LSO) and
  transaction markers occupy offsets, so a changelog is done when the consumer's position (which
  librdkafka moves past markers and aborted records) reaches the end offset, or its partition-EOF
  event arrives; never by comparing the last record's offset with the end;
- work in bounded steps so the processor loop keeps serving other partitions and its consumer;
- log progress (records, rate, remaining) and keep counters for metrics.

Lifecycle of one changelog partition's restore::

    PENDING ──start()──▶ RESTORING ──(EOF / position ≥ end)──▶ DONE
        │                    │
        └────cancel()────────┴──────────────────────────────▶ CANCELLED
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from processors.errors import StoreCorruptedError
from processors.kafka.consumer import Consumer
from processors.state.base import RestoreRecord, Store, StorePartition

logger = logging.getLogger(__name__)


class RestoreState(enum.Enum):
    """Lifecycle of one changelog partition's restore (see the module docstring)."""

    PENDING = "pending"
    RESTORING = "restoring"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass
class RestoreMetrics:
    """Counters of every restore a loop ran (for logs now, a metrics endpoint later).

    Attributes:
        records_restored: Changelog records applied, all partitions, since start.
        partitions_restored: Store partitions whose restore completed.
        full_restores: Store partitions replayed from offset 0 (missing, corrupt or wiped store,
            and a changelog that is not empty).
        active: Store partitions being restored now.
        per_partition: ``(store, partition)`` → records applied by its latest restore.
    """

    records_restored: int = 0
    partitions_restored: int = 0
    full_restores: int = 0
    active: int = 0
    per_partition: dict[tuple[str, int], int] = field(default_factory=dict)


@dataclass
class ChangelogRestore:
    """Progress of restoring one store partition from one changelog partition."""

    store: str
    topic: str
    partition: int
    store_partition: StorePartition
    start: int
    end: int
    position: int
    state: RestoreState = RestoreState.PENDING
    records: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> int:
        """Offsets left to the end known at start (markers included, so an upper bound)."""
        return max(0, self.end - self.position)


class Restorer:
    """Restores the stores of assigned partitions, a bounded step at a time.

    Args:
        processor: Processor name (for logs).
        consumer: A ``read_committed`` consumer with ``enable.partition.eof`` and no group.
        stores: The processor's stores by name.
        changelog_topics: Store name → changelog topic.
        log_interval_s: Seconds between progress lines per partition.
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        processor: str,
        consumer: Consumer,
        stores: Mapping[str, Store],
        changelog_topics: Mapping[str, str],
        log_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._processor = processor
        self._consumer = consumer
        self._stores = stores
        self._changelog_topics = changelog_topics
        self._log_interval_s = log_interval_s
        self._clock = clock
        self._active: dict[tuple[str, int], ChangelogRestore] = {}
        self._last_log: dict[int, float] = {}
        self.metrics = RestoreMetrics()

    # -- starting ----------------------------------------------------------------------------

    def open_stores(self, partition: int) -> dict[str, StorePartition]:
        """Opens the partition of every store, wiping and reopening a corrupt one.

        Raises:
            StateError: A store partition cannot be opened for another reason (e.g. locked).
        """
        opened: dict[str, StorePartition] = {}
        for name, store in self._stores.items():
            if partition in store.partitions:
                opened[name] = store.partition(partition)
                continue
            try:
                opened[name] = store.open_partition(partition)
            except StoreCorruptedError as exc:
                logger.warning(
                    "store %s partition %d is corrupt (%s); wiping it for a full restore",
                    name,
                    partition,
                    exc,
                    extra={"processor": self._processor, "store": name, "partition": partition},
                )
                store.wipe_partition(partition)
                opened[name] = store.open_partition(partition)
        return opened

    def start(self, partition: int, opened: Mapping[str, StorePartition]) -> bool:
        """Starts restoring every changelogged store of one partition.

        Returns:
            ``True`` when nothing needs replaying (every store is at its changelog's end).

        Raises:
            KafkaError: The changelog's offsets could not be read.
        """
        for name, store_partition in opened.items():
            topic = self._changelog_topics.get(name)
            if topic is None:
                continue
            low, end = self._consumer.end_offset(topic, partition)
            start = store_partition.next_changelog_offset()
            if start > end:
                # The checkpoint is past the changelog's end: the topic was recreated or truncated.
                logger.warning(
                    "store %s partition %d checkpoint %s is past the changelog end %d; wiping it",
                    name,
                    partition,
                    store_partition.checkpoint(),
                    end,
                    extra={"processor": self._processor, "store": name, "partition": partition},
                )
                store_partition.wipe()
                start = 0
            position = max(start, low)
            if start == 0 and position < end:
                self.metrics.full_restores += 1
            self.metrics.per_partition[(name, partition)] = 0
            if position >= end:
                self.metrics.partitions_restored += 1
                continue
            job = ChangelogRestore(name, topic, partition, store_partition, start, end, position)
            job.state = RestoreState.RESTORING
            job.started_at = self._clock()
            self._active[(topic, partition)] = job
            logger.info(
                "restoring store %s partition %d from %s: offsets %d..%d (%d to read)",
                name,
                partition,
                topic,
                position,
                end,
                end - position,
                extra={"processor": self._processor, "store": name, "partition": partition},
            )
            self._consumer.incremental_assign([TopicPartition(topic, partition, position)])
        self.metrics.active = len(self._active)
        return not self.restoring(partition)

    def restoring(self, partition: int) -> bool:
        """Whether any store of the partition is still being restored."""
        return any(job.partition == partition for job in self._active.values())

    @property
    def busy(self) -> bool:
        """Whether any restore is in progress."""
        return bool(self._active)

    def cancel(self, partition: int) -> None:
        """Stops restoring a partition (revoked or lost); applied batches keep their checkpoint."""
        cancelled = [k for k, job in self._active.items() if job.partition == partition]
        for key in cancelled:
            self._active.pop(key).state = RestoreState.CANCELLED
        if cancelled:
            self._consumer.incremental_unassign(TopicPartition(t, p) for t, p in cancelled)
        self._last_log.pop(partition, None)
        self.metrics.active = len(self._active)

    # -- stepping ----------------------------------------------------------------------------

    def step(self, max_records: int, timeout_s: float) -> list[int]:
        """Reads and applies up to ``max_records`` changelog records.

        Returns:
            Partitions whose every store finished restoring in this step.

        Raises:
            StateError: A store failed to apply records (a corrupt store is wiped and restarted).
            KafkaError: The restore consumer failed.
        """
        if not self._active:
            return []
        result = self._consumer.consume(max_records, timeout_s)
        batches: dict[tuple[str, int], list[RestoreRecord]] = {}
        for message in result.records:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            key = (topic, partition)
            if key in self._active:
                batches.setdefault(key, []).append((message.key() or b"", message.value(), offset))
        for key, records in batches.items():
            self._apply(self._active[key], records)
        finished: list[tuple[str, int]] = []
        for key, job in self._active.items():
            if key in result.eof or job.position >= job.end:
                finished.append(key)
                continue
            # librdkafka advances the position past transaction markers and aborted records, which
            # are never delivered: a changelog ending in a marker is done without waiting for EOF.
            position = self._consumer.position(job.topic, job.partition)
            if position is not None and position >= job.end:
                job.position = position
                finished.append(key)
        done_partitions: set[int] = set()
        for key in finished:
            job = self._active.pop(key)
            job.state = RestoreState.DONE
            self.metrics.partitions_restored += 1
            self._log_done(job)
            done_partitions.add(job.partition)
        self._log_progress()
        self.metrics.active = len(self._active)
        if finished:
            self._consumer.incremental_unassign(TopicPartition(t, p) for t, p in finished)
        return sorted(p for p in done_partitions if not self.restoring(p))

    def _apply(self, job: ChangelogRestore, records: list[RestoreRecord]) -> None:
        try:
            applied = job.store_partition.restore(records, batch_size=len(records))
        except StoreCorruptedError as exc:
            logger.warning(
                "store %s partition %d corrupt during restore (%s); wiping and replaying in full",
                job.store,
                job.partition,
                exc,
                extra={"processor": self._processor, "store": job.store, "partition": job.partition},
            )
            job.store_partition.wipe()
            job.position = 0
            job.start = 0
            self.metrics.full_restores += 1
            self._consumer.seek(job.topic, job.partition, 0)
            return
        job.position = records[-1][2] + 1
        job.records += applied
        self.metrics.records_restored += applied
        self.metrics.per_partition[(job.store, job.partition)] = job.records

    def _log_progress(self) -> None:
        now = self._clock()
        for job in self._active.values():
            last = self._last_log.get(job.partition, job.started_at)
            if now - last < self._log_interval_s:
                continue
            self._last_log[job.partition] = now
            elapsed = max(now - job.started_at, 1e-6)
            logger.info(
                "restoring store %s partition %d: %d records, %.0f records/s, about %d offsets remaining",
                job.store,
                job.partition,
                job.records,
                job.records / elapsed,
                job.remaining,
                extra=self._extra(job),
            )

    def _log_done(self, job: ChangelogRestore) -> None:
        elapsed = max(self._clock() - job.started_at, 1e-6)
        logger.info(
            "restored store %s partition %d: %d records in %.2fs (%.0f records/s), checkpoint %s",
            job.store,
            job.partition,
            job.records,
            elapsed,
            job.records / elapsed,
            job.store_partition.checkpoint(),
            extra=self._extra(job),
        )

    def _extra(self, job: ChangelogRestore) -> dict[str, Any]:
        return {"processor": self._processor, "store": job.store, "partition": job.partition}

    def close(self) -> None:
        """Cancels every restore and closes the restore consumer."""
        self._active.clear()
        self.metrics.active = 0
        self._consumer.close()
