"""One Kafka transaction of a processor loop, its store transactions, and when to commit it.

Responsibilities:

- :class:`BatchPolicy`: adaptive batching. Commit as soon as the input is drained (low latency when
  idle); under load keep adding records until a size or age bound (throughput);
- :class:`Checkpoint`: the bookkeeping of one open transaction: input offsets consumed (the first
  one per partition, for rewinding after an abort, and the next one to commit), the store
  partition transactions begun in it, the outputs produced; and the numbered commit protocol that
  makes outputs, changelog records, input offsets and store state move together.

State diagram of a checkpoint::

    OPEN ──commit()──▶ COMMITTING ──(Step 4 done)──▶ COMMITTED
      │                    │
      │                    └──(Steps 1-4 raised)──▶ ABORTED (the loop aborts the producer)
      └──abort()──────────────────────────────────▶ ABORTED
    COMMITTING ──(Step 5 raised)──▶ FAILED   (Kafka committed; the stores need a restore)
"""

from __future__ import annotations

import enum
import logging
import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import TopicPartition

from processors.errors import StateError
from processors.state.base import PartitionTransaction, Store
from streams.errors import ConfigError, UsageError

logger = logging.getLogger(__name__)

#: Names of the points in the commit protocol a crash hook can be called at (tests kill here).
CRASH_POINTS = ("after_produce", "after_flush", "after_send_offsets", "after_commit", "after_apply")

CrashHook = Callable[[str], None]


def sigkill_at(point: str, after: int) -> CrashHook:
    """A crash hook for tests: SIGKILLs this process the ``after``-th time it passes ``point``.

    Args:
        point: One of :data:`CRASH_POINTS`, or ``"random"`` to pick one now.
        after: How many passes of that point to survive, minus one (``1``: the first pass).
    """
    chosen = random.choice(CRASH_POINTS) if point == "random" else point
    remaining = after

    def hook(at: str) -> None:
        nonlocal remaining
        if at != chosen:
            return
        remaining -= 1
        if remaining <= 0:
            logger.warning("crash hook: SIGKILL at %s", at)
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


@dataclass(frozen=True, kw_only=True)
class BatchPolicy:
    """When to commit the open transaction.

    A batch is committed when any of these holds:

    1. the input is drained: the last ``consume`` returned fewer records than asked for, so nothing
       more is waiting; committing now costs no throughput and gives the lowest latency;
    2. it holds ``max_records`` input records (bounds the work redone after an abort);
    3. it is ``max_age_ms`` old (bounds latency under sustained load).

    Under load the local fetch queue never drains, so batches grow to one of the bounds and the
    per-transaction cost (about 3-5 ms of coordinator round trips) is shared by many records.

    Attributes:
        max_records: Input records per transaction at most.
        max_age_ms: Age of the transaction at most, from its first record.
        fetch_records: Records asked of each ``consume`` call.
        idle_wait_ms: How long one loop iteration waits for input when there is none.
    """

    max_records: int = 5000
    max_age_ms: int = 100
    fetch_records: int = 500
    idle_wait_ms: int = 50

    def __post_init__(self) -> None:
        for name, minimum in (
            ("max_records", 1),
            ("max_age_ms", 0),
            ("fetch_records", 1),
            ("idle_wait_ms", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(f"batch.{name}", f"must be an integer >= {minimum}, got {value!r}")

    def should_commit(self, *, records: int, age_ms: float, drained: bool) -> bool:
        """Whether the batch should be committed now.

        Args:
            records: Input records in the open transaction.
            age_ms: Milliseconds since the transaction's first record.
            drained: The last consume returned fewer records than asked (nothing is waiting).
        """
        if records == 0:
            return False
        return drained or records >= self.max_records or age_ms >= self.max_age_ms

    def fetch_size(self, records: int) -> int:
        """How many records to ask of the next consume, never overshooting ``max_records``."""
        return max(1, min(self.fetch_records, self.max_records - records))


class CheckpointState(enum.Enum):
    """Lifecycle of a :class:`Checkpoint` (see the module docstring for the diagram)."""

    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"
    FAILED = "failed"


_ALLOWED: Mapping[CheckpointState, frozenset[CheckpointState]] = {
    CheckpointState.OPEN: frozenset({CheckpointState.COMMITTING, CheckpointState.ABORTED}),
    CheckpointState.COMMITTING: frozenset(
        {CheckpointState.COMMITTED, CheckpointState.ABORTED, CheckpointState.FAILED}
    ),
    CheckpointState.COMMITTED: frozenset(),
    CheckpointState.ABORTED: frozenset(),
    CheckpointState.FAILED: frozenset(),
}


class TransactionalProducer(Protocol):
    """What a checkpoint needs of :class:`processors.kafka.producer.Producer`."""

    @property
    def transactional(self) -> bool:
        """Whether the producer runs Kafka transactions."""
        ...

    def begin(self) -> None:
        """Opens a transaction."""
        ...

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        """Queues one record."""
        ...

    def flush(self, timeout_s: float | None = None) -> dict[tuple[str, int], int]:
        """Waits for deliveries; highest offset per partition."""
        ...

    def send_offsets(self, offsets: Any, group_metadata: Any, timeout_s: float | None = None) -> None:
        """Adds input offsets to the transaction."""
        ...

    def commit(self, timeout_s: float | None = None) -> None:
        """Commits the transaction."""
        ...


class OffsetSource(Protocol):
    """What a checkpoint needs of :class:`processors.kafka.consumer.Consumer`."""

    def group_metadata(self) -> Any:
        """Consumer group metadata for EOS v2."""
        ...

    def commit(self, offsets: Any) -> None:
        """Commits offsets (at-least-once mode)."""
        ...


@dataclass
class CommitResult:
    """What one commit did.

    Attributes:
        records: Input records committed.
        outputs: Records produced (outputs, DLQ and changelog records).
        changelog_offsets: Highest changelog offset per ``(store, partition)``.
        duration_ms: Time from the start of Step 1 to the end of Step 5.
    """

    records: int
    outputs: int
    changelog_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    duration_ms: float = 0.0


class Checkpoint:
    """Bookkeeping and commit protocol of one Kafka transaction.

    The producer transaction is begun lazily, by the first consumed record, produced record or
    store transaction, so an idle loop opens no transactions.

    Args:
        producer: The loop's producer (transactional for exactly-once).
        consumer: The loop's consumer (group metadata; offset commits in at-least-once mode).
        stores: The processor's stores by name.
        changelog_topics: Store name → full changelog topic name.
        crash_hook: Called with each :data:`CRASH_POINTS` name as the protocol passes it (tests).
        clock: Monotonic clock in seconds.
    """

    def __init__(
        self,
        *,
        producer: TransactionalProducer,
        consumer: OffsetSource,
        stores: Mapping[str, Store],
        changelog_topics: Mapping[str, str],
        crash_hook: CrashHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._producer = producer
        self._consumer = consumer
        self._stores = stores
        self._changelog_topics = changelog_topics
        self._crash_hook = crash_hook
        self._clock = clock
        self._state = CheckpointState.OPEN
        self._begun = False
        self._started_at: float | None = None
        self._records = 0
        self._produced = 0
        #: (topic, partition) → first offset consumed in this transaction (rewind target).
        self.first_offsets: dict[tuple[str, int], int] = {}
        #: (topic, partition) → next offset to read (what is committed).
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._transactions: dict[tuple[str, int], PartitionTransaction] = {}

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> CheckpointState:
        """Lifecycle state."""
        return self._state

    @property
    def records(self) -> int:
        """Input records consumed in this transaction."""
        return self._records

    @property
    def empty(self) -> bool:
        """Nothing consumed, produced or written: committing would do nothing."""
        return not self._begun

    def age_ms(self) -> float:
        """Milliseconds since the transaction began (0 when it has not)."""
        if self._started_at is None:
            return 0.0
        return (self._clock() - self._started_at) * 1000.0

    def _transition(self, target: CheckpointState) -> None:
        if target not in _ALLOWED[self._state]:
            raise UsageError(f"checkpoint cannot go from {self._state.value} to {target.value}")
        self._state = target

    def _raise_if_not_open(self) -> None:
        if self._state is not CheckpointState.OPEN:
            raise UsageError(f"the checkpoint is {self._state.value}; start a new one")

    def _ensure_begun(self) -> None:
        self._raise_if_not_open()
        if not self._begun:
            self._producer.begin()
            self._begun = True
            self._started_at = self._clock()

    # -- filling -----------------------------------------------------------------------------

    def consumed(self, topic: str, partition: int, offset: int) -> None:
        """Records that an input record was processed (its offset + 1 is committed)."""
        self._ensure_begun()
        key = (topic, partition)
        if key not in self.first_offsets:
            self.first_offsets[key] = offset
        self.next_offsets[key] = offset + 1
        self._records += 1

    def store_transaction(self, store: str, partition: int) -> PartitionTransaction:
        """The transaction of one store partition in this Kafka transaction, begun on first use.

        Raises:
            StateError: The store partition is not open (partition not assigned or not restored).
        """
        key = (store, partition)
        tx = self._transactions.get(key)
        if tx is None:
            self._ensure_begun()
            tx = self._stores[store].partition(partition).begin()
            self._transactions[key] = tx
        return tx

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        """Produces one record in the transaction."""
        self._ensure_begun()
        self._producer.produce(topic, key, value, partition=partition, headers=headers)
        self._produced += 1

    def partitions_with_work(self) -> set[int]:
        """Input or store partitions touched by this transaction."""
        return {p for _, p in self.first_offsets} | {p for _, p in self._transactions}

    # -- finishing ---------------------------------------------------------------------------

    def include_offset(self, topic: str, partition: int, offset: int) -> None:
        """Adds an input offset to commit for a partition that consumed nothing in this transaction.

        Committing the unchanged offset still ties the transaction to the consumer generation
        (KIP-447), so a fenced member cannot commit store writes made by ``punctuate``.
        """
        self.next_offsets.setdefault((topic, partition), offset)

    def commit(self, timeout_s: float | None = None) -> CommitResult:
        """Commits outputs, changelog records, input offsets and then the stores.

        Steps:
            1. Prepare every store transaction and produce its changelog records (last write per
               key, ``None`` = tombstone) to ``<changelog>`` partition = input partition.
            2. Flush: wait for every delivery report; they give the highest offset written to each
               changelog partition (with transactions they arrive before the commit completes).
               A failed delivery makes the transaction abortable.
            3. Exactly-once: ``send_offsets_to_transaction`` with the next offset of every input
               partition and the consumer's group metadata (KIP-447: a member fenced by a rebalance
               cannot commit).
            4. Exactly-once: ``commit_transaction``. At-least-once: commit the offsets with the
               consumer instead. From here the outputs are visible to ``read_committed`` readers.
            5. Apply each store transaction with its changelog offset: data and checkpoint in one
               write batch. A crash before this step loses nothing: the committed changelog holds
               the writes and the restore replays them from the stored checkpoint.

        Args:
            timeout_s: Time Steps 2-4 may take in all; default the producer's transaction timeout.

        Raises:
            TransactionAbortRequiredError: Steps 2-4 need an abort (the caller aborts and rewinds).
            FatalKafkaError: Stop the worker.
            StateError: Step 5 failed; Kafka committed, the store partitions must be restored.
        """
        started = self._clock()
        deadline = None if timeout_s is None else started + timeout_s
        self._transition(CheckpointState.COMMITTING)
        try:
            # Step 1
            produced_to: dict[tuple[str, int], str] = {}
            for (store, partition), tx in self._transactions.items():
                topic = self._changelog_topics.get(store)
                records = tx.prepare()
                if topic is None or not records:
                    continue
                produced_to[(store, partition)] = topic
                for key, value in records:
                    self._producer.produce(topic, key, value, partition=partition)
                self._produced += len(records)
            self._crash("after_produce")
            # Step 2
            delivered = self._producer.flush(self._remaining(deadline))
            self._crash("after_flush")
            offsets = [TopicPartition(t, p, o) for (t, p), o in self.next_offsets.items()]
            if self._producer.transactional:
                # Step 3
                self._producer.send_offsets(
                    offsets, self._consumer.group_metadata(), self._remaining(deadline)
                )
                self._crash("after_send_offsets")
                # Step 4
                self._producer.commit(self._remaining(deadline))
            else:
                # Step 4
                self._producer.commit(self._remaining(deadline))
                self._consumer.commit(offsets)
            self._crash("after_commit")
        except BaseException:
            self._abort_stores()
            self._state = CheckpointState.ABORTED
            raise
        # Step 5
        changelog_offsets: dict[tuple[str, int], int] = {}
        failed: StateError | None = None
        for (store, partition), tx in self._transactions.items():
            topic = produced_to.get((store, partition))
            offset = delivered.get((topic, partition)) if topic is not None else None
            if offset is not None:
                changelog_offsets[(store, partition)] = offset
            try:
                tx.on_committed(offset)
            except StateError as exc:
                failed = failed or exc
        if failed is not None:
            self._state = CheckpointState.FAILED
            raise failed
        self._transition(CheckpointState.COMMITTED)
        self._crash("after_apply")
        return CommitResult(
            records=self._records,
            outputs=self._produced,
            changelog_offsets=changelog_offsets,
            duration_ms=(self._clock() - started) * 1000.0,
        )

    def abort(self) -> dict[tuple[str, int], int]:
        """Discards the store transactions (the caller aborts the producer transaction).

        Returns:
            The first offset consumed per input partition: where to seek to redo the batch.
        """
        if self._state in (CheckpointState.OPEN, CheckpointState.COMMITTING):
            self._abort_stores()
            self._state = CheckpointState.ABORTED
        return dict(self.first_offsets)

    @property
    def begun(self) -> bool:
        """Whether a producer transaction was begun for this checkpoint."""
        return self._begun

    def _abort_stores(self) -> None:
        for tx in self._transactions.values():
            if not tx.finished:
                try:
                    tx.abort()
                except StateError as exc:  # pragma: no cover - abort only fails after commit
                    logger.warning("aborting a store transaction failed: %s", exc)

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return max(0.5, deadline - self._clock())

    def _crash(self, point: str) -> None:
        if self._crash_hook is not None:
            self._crash_hook(point)
