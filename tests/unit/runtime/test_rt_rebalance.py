"""Rebalance callbacks: assignment paused until restored, revoke commits first, lost aborts."""

from __future__ import annotations

import pytest
from runtime_fakes import tp

from processors.runtime.rebalance import (
    AssignedPartition,
    PartitionRegistry,
    PartitionState,
    RebalanceHandler,
)
from streams.errors import UsageError


class FakeLoop:
    def __init__(self, registry: PartitionRegistry) -> None:
        self.registry = registry
        self.events: list[tuple[object, ...]] = []

    def assign_paused(self, partitions: list[object]) -> None:
        self.events.append(("assign_paused", sorted(p.partition for p in partitions)))  # type: ignore[attr-defined]

    def finish_transaction(self, deadline_s: float, reason: str) -> None:
        self.events.append(("finish", deadline_s))

    def abort_transaction(self, reason: str) -> None:
        self.events.append(("abort",))

    def release_partition(self, partition: int, *, lost: bool) -> None:
        self.events.append(("release", partition, lost))
        self.registry.remove(partition)


@pytest.fixture
def handler() -> tuple[RebalanceHandler, FakeLoop, PartitionRegistry]:
    registry = PartitionRegistry()
    loop = FakeLoop(registry)
    return (
        RebalanceHandler(processor="p", registry=registry, target=loop, revoke_deadline_s=7.0),
        loop,
        registry,
    )


def test_assigned_partitions_are_paused_and_wait_for_restore(
    handler: tuple[RebalanceHandler, FakeLoop, PartitionRegistry],
) -> None:
    rebalance, loop, registry = handler
    rebalance.on_assign([tp("in", 0), tp("in", 2)])
    assert loop.events == [("assign_paused", [0, 2])]
    assert [p.partition for p in registry.in_state(PartitionState.ASSIGNED)] == [0, 2]


def test_revoke_commits_the_open_transaction_before_releasing(
    handler: tuple[RebalanceHandler, FakeLoop, PartitionRegistry],
) -> None:
    rebalance, loop, registry = handler
    rebalance.on_assign([tp("in", 0), tp("in", 1)])
    loop.events.clear()
    rebalance.on_revoke([tp("in", 1)])
    assert loop.events == [("finish", 7.0), ("release", 1, False)]
    assert registry.get(0) is not None and registry.get(1) is None


def test_lost_partitions_abort_instead_of_committing(
    handler: tuple[RebalanceHandler, FakeLoop, PartitionRegistry],
) -> None:
    rebalance, loop, _ = handler
    rebalance.on_assign([tp("in", 0)])
    loop.events.clear()
    rebalance.on_lost([tp("in", 0)])
    assert loop.events == [("abort",), ("release", 0, True)]


def test_revoking_partitions_not_owned_does_nothing(
    handler: tuple[RebalanceHandler, FakeLoop, PartitionRegistry],
) -> None:
    rebalance, loop, _ = handler
    rebalance.on_revoke([tp("in", 5)])
    rebalance.on_lost([tp("in", 5)])
    assert loop.events == []


def test_partition_lifecycle_is_guarded() -> None:
    entry = AssignedPartition("in", 0)
    entry.transition(PartitionState.RESTORING)
    entry.transition(PartitionState.ACTIVE)
    with pytest.raises(UsageError, match="cannot go from active to restoring"):
        entry.transition(PartitionState.RESTORING)
    entry.transition(PartitionState.REVOKING)
    entry.transition(PartitionState.CLOSED)
    with pytest.raises(UsageError):
        entry.transition(PartitionState.ACTIVE)
