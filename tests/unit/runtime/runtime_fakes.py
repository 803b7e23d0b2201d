"""In-memory stand-ins for the Kafka clients the runtime components talk to (no network)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from processors.kafka.consumer import ConsumeResult
from processors.kafka.errors import TransactionAbortRequiredError


class FakeProducer:
    """Records every call; assigns offsets per partition like a broker (markers take one)."""

    def __init__(self, *, transactional: bool = True) -> None:
        self.transactional = transactional
        self.calls: list[tuple[Any, ...]] = []
        self.next_offset: dict[tuple[str, int], int] = defaultdict(int)
        self.pending: dict[tuple[str, int], int] = {}
        self.fail_on: str | None = None

    def _maybe_fail(self, what: str) -> None:
        if self.fail_on == what:
            raise TransactionAbortRequiredError(f"injected failure in {what}")

    def begin(self) -> None:
        self.calls.append(("begin",))
        self.pending = {}

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        p = 0 if partition is None else partition
        offset = self.next_offset[(topic, p)]
        self.next_offset[(topic, p)] += 1
        self.pending[(topic, p)] = offset
        self.calls.append(("produce", topic, p, key, value))

    def flush(self, timeout_s: float | None = None) -> dict[tuple[str, int], int]:
        self.calls.append(("flush",))
        self._maybe_fail("flush")
        return dict(self.pending)

    def send_offsets(self, offsets: Any, group_metadata: Any, timeout_s: float | None = None) -> None:
        self.calls.append(
            ("send_offsets", sorted((tp.topic, tp.partition, tp.offset) for tp in offsets), group_metadata)
        )
        self._maybe_fail("send_offsets")

    def commit(self, timeout_s: float | None = None) -> None:
        self.calls.append(("commit",))
        self._maybe_fail("commit")
        for key in self.pending:  # the commit marker
            self.next_offset[key] += 1

    def abort(self) -> None:
        self.calls.append(("abort",))

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeGroupConsumer:
    """The checkpoint's view of the group consumer."""

    def __init__(self) -> None:
        self.commits: list[list[tuple[str, int, int]]] = []

    def group_metadata(self) -> str:
        return "group-metadata"

    def commit(self, offsets: Any) -> None:
        self.commits.append(sorted((tp.topic, tp.partition, tp.offset) for tp in offsets))


@dataclass
class LogEntry:
    offset: int
    key: bytes
    value: bytes | None
    kind: str = "record"  # record | marker | aborted


class FakeMessage:
    def __init__(self, topic: str, partition: int, entry: LogEntry) -> None:
        self._topic, self._partition, self._entry = topic, partition, entry

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._entry.offset

    def key(self) -> bytes:
        return self._entry.key

    def value(self) -> bytes | None:
        return self._entry.value


@dataclass
class FakeRestoreConsumer:
    """A ``read_committed`` changelog reader over in-memory logs.

    Markers and aborted records are skipped like librdkafka does; ``advance_past_skipped``
    controls whether the position moves past them (librdkafka does) or only EOF tells the end.
    """

    logs: dict[tuple[str, int], list[LogEntry]] = field(default_factory=dict)
    advance_past_skipped: bool = True
    emit_eof: bool = True
    assigned: dict[tuple[str, int], int] = field(default_factory=dict)
    closed: bool = False

    def add(self, topic: str, partition: int, kinds: str) -> None:
        """``kinds``: one letter per offset, r=record, m=marker, a=aborted."""
        names = {"r": "record", "m": "marker", "a": "aborted"}
        self.logs[(topic, partition)] = [
            LogEntry(i, f"k{i}".encode(), f"v{i}".encode(), names[c]) for i, c in enumerate(kinds)
        ]

    def end_offset(self, topic: str, partition: int, timeout_s: float = 30.0) -> tuple[int, int]:
        return 0, len(self.logs.get((topic, partition), []))

    def incremental_assign(self, partitions: Any) -> None:
        for tp in partitions:
            self.assigned[(tp.topic, tp.partition)] = tp.offset

    def incremental_unassign(self, partitions: Any) -> None:
        for tp in partitions:
            self.assigned.pop((tp.topic, tp.partition), None)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self.assigned[(topic, partition)] = offset

    def position(self, topic: str, partition: int) -> int | None:
        return self.assigned.get((topic, partition))

    def consume(self, max_records: int, timeout_s: float) -> ConsumeResult:
        result = ConsumeResult()
        for key, position in list(self.assigned.items()):
            log = self.logs.get(key, [])
            pos = position
            delivered_to = position
            while pos < len(log) and len(result.records) < max_records:
                entry = log[pos]
                pos += 1
                if entry.kind == "record":
                    result.records.append(FakeMessage(key[0], key[1], entry))  # type: ignore[arg-type]
                    delivered_to = pos
            self.assigned[key] = pos if self.advance_past_skipped else delivered_to
            if pos >= len(log) and self.emit_eof:
                result.eof.add(key)
        return result

    def close(self) -> None:
        self.closed = True


def tp(topic: str, partition: int, offset: int = -1001) -> TopicPartition:
    return TopicPartition(topic, partition, offset)
