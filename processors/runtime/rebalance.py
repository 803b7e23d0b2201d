"""Partition ownership: the lifecycle of an assigned partition and the rebalance callbacks.

Responsibilities:

- :class:`PartitionState` and :class:`AssignedPartition`: where each owned input partition is in
  its lifecycle, with guarded transitions;
- :class:`RebalanceHandler`: ``on_assign``, ``on_revoke`` and ``on_lost`` for a cooperative-sticky
  consumer whose single transactional producer spans all its partitions. The callbacks run inside
  ``consume()``; committing a transaction there is allowed by librdkafka, and it is required:
  an incremental revoke must commit (or abort) the open transaction before the partitions go, or
  their uncommitted work would be committed later by a member that no longer owns them.

Partition lifecycle::

    ASSIGNED ──restore starts──▶ RESTORING ──restored──▶ ACTIVE
        │                            │                      │
        │                            │                      └──on_revoke──▶ REVOKING ──▶ CLOSED
        └──────on_revoke / on_lost───┴──────────on_lost─────────────────────────────────▶ CLOSED
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import TopicPartition

from processors.runtime.context import Context
from streams.errors import UsageError

logger = logging.getLogger(__name__)


class PartitionState(enum.Enum):
    """Lifecycle of an owned input partition (see the module docstring)."""

    ASSIGNED = "assigned"
    RESTORING = "restoring"
    ACTIVE = "active"
    REVOKING = "revoking"
    CLOSED = "closed"


_ALLOWED: Mapping[PartitionState, frozenset[PartitionState]] = {
    PartitionState.ASSIGNED: frozenset(
        {PartitionState.RESTORING, PartitionState.REVOKING, PartitionState.CLOSED}
    ),
    PartitionState.RESTORING: frozenset(
        {PartitionState.ACTIVE, PartitionState.ASSIGNED, PartitionState.REVOKING, PartitionState.CLOSED}
    ),
    # ACTIVE → ASSIGNED: a committed transaction failed to apply to the stores; restore again.
    PartitionState.ACTIVE: frozenset(
        {PartitionState.REVOKING, PartitionState.ASSIGNED, PartitionState.CLOSED}
    ),
    PartitionState.REVOKING: frozenset({PartitionState.CLOSED}),
    PartitionState.CLOSED: frozenset(),
}


@dataclass
class AssignedPartition:
    """One owned input partition.

    Attributes:
        topic: Input topic.
        partition: Partition number.
        state: Lifecycle state.
        ctx: The partition's hook context, once active.
        committed_offset: Next offset to read as last committed (``None``: nothing committed yet).
    """

    topic: str
    partition: int
    state: PartitionState = PartitionState.ASSIGNED
    ctx: Context | None = None
    committed_offset: int | None = None

    def transition(self, target: PartitionState) -> None:
        """Moves to ``target``.

        Raises:
            UsageError: The transition is not in the lifecycle.
        """
        if target not in _ALLOWED[self.state]:
            raise UsageError(
                f"partition {self.topic}[{self.partition}] cannot go "
                f"from {self.state.value} to {target.value}"
            )
        self.state = target


class PartitionRegistry:
    """The partitions a loop owns, by number (one input topic per processor)."""

    def __init__(self) -> None:
        self._partitions: dict[int, AssignedPartition] = {}

    def add(self, topic: str, partition: int) -> AssignedPartition:
        """Registers a newly assigned partition (state ASSIGNED)."""
        entry = AssignedPartition(topic, partition)
        self._partitions[partition] = entry
        return entry

    def get(self, partition: int) -> AssignedPartition | None:
        """The entry of an owned partition, ``None`` if not owned."""
        return self._partitions.get(partition)

    def remove(self, partition: int) -> AssignedPartition | None:
        """Forgets a partition (after it was closed)."""
        return self._partitions.pop(partition, None)

    def in_state(self, state: PartitionState) -> list[AssignedPartition]:
        """Owned partitions in ``state``, by number."""
        return [p for _, p in sorted(self._partitions.items()) if p.state is state]

    def __iter__(self) -> Iterator[AssignedPartition]:
        return iter(list(self._partitions.values()))

    def __len__(self) -> int:
        return len(self._partitions)


class RebalanceTarget(Protocol):
    """What the handler needs of the processor loop."""

    def assign_paused(self, partitions: list[TopicPartition]) -> None:
        """Adds partitions to the consumer's assignment, paused until restored."""
        ...

    def finish_transaction(self, deadline_s: float, reason: str) -> None:
        """Commits the open transaction within the deadline, or aborts it and rewinds."""
        ...

    def abort_transaction(self, reason: str) -> None:
        """Aborts the open transaction and rewinds the partitions still owned."""
        ...

    def release_partition(self, partition: int, *, lost: bool) -> None:
        """Stops restoring/processing a partition, calls the revoke hook and closes its stores."""
        ...


class RebalanceHandler:
    """The consumer's rebalance callbacks for one processor loop.

    Args:
        processor: Processor name (for logs).
        registry: The loop's owned partitions.
        target: The loop.
        revoke_deadline_s: Time a revocation may spend committing before it aborts instead.
    """

    def __init__(
        self,
        *,
        processor: str,
        registry: PartitionRegistry,
        target: RebalanceTarget,
        revoke_deadline_s: float,
    ) -> None:
        self._processor = processor
        self._registry = registry
        self._target = target
        self._revoke_deadline_s = revoke_deadline_s

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        """New partitions: take them paused; the loop restores their stores before processing.

        Steps:
            1. Add the partitions to the assignment (committed offsets) and pause them at once.
            2. Register them as ASSIGNED; the loop starts their restore outside the callback.
        """
        if not partitions:
            return
        # Step 1
        self._target.assign_paused(partitions)
        # Step 2
        for tp in partitions:
            self._registry.add(tp.topic, tp.partition)
        logger.info(
            "%s: assigned partitions %s",
            self._processor,
            sorted(tp.partition for tp in partitions),
            extra={"processor": self._processor},
        )

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Partitions are taken away in an orderly rebalance.

        Steps:
            1. Finish the open transaction (it may hold work of the revoked partitions): commit it
               within the revoke deadline, or abort it and rewind the partitions kept.
            2. For each revoked partition: cancel its restore, call ``on_partition_revoked`` and
               close its stores (their checkpoints are on disk).
            3. librdkafka removes the partitions from the assignment when the callback returns.
        """
        owned = [tp for tp in partitions if self._registry.get(tp.partition) is not None]
        if not owned:
            return
        # Step 1
        self._target.finish_transaction(
            self._revoke_deadline_s, f"revoking partitions {sorted(tp.partition for tp in owned)}"
        )
        # Step 2
        for tp in owned:
            self._target.release_partition(tp.partition, lost=False)
        logger.info(
            "%s: revoked partitions %s",
            self._processor,
            sorted(tp.partition for tp in owned),
            extra={"processor": self._processor},
        )

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions were lost (session timeout, fenced member): others may own them already.

        Steps:
            1. Abort the open transaction: its offsets can no longer commit, and its outputs must
               not. Partitions still owned are rewound to their last committed offsets.
            2. Drop the lost partitions: cancel restores, call ``on_partition_revoked`` and close
               their stores without applying anything.
        """
        owned = [tp for tp in partitions if self._registry.get(tp.partition) is not None]
        if not owned:
            return
        # Step 1
        self._target.abort_transaction(f"lost partitions {sorted(tp.partition for tp in owned)}")
        # Step 2
        for tp in owned:
            self._target.release_partition(tp.partition, lost=True)
        logger.warning(
            "%s: lost partitions %s; their uncommitted work was aborted",
            self._processor,
            sorted(tp.partition for tp in owned),
            extra={"processor": self._processor},
        )
