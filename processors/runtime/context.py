"""What a processor hook sees: ``ctx`` with its partition's stores, ``produce`` and clocks.

Responsibilities:

- :class:`Context`: one per assigned partition, reused for every record of it. Gives the partition's
  stores (:class:`StoreView`), ``produce(topic, key, value, headers)``, the current record's
  partition/offset/timestamp and ``now()``;
- make each hook call all-or-nothing: outputs are held until the call returns and store writes are
  journalled, so a call that raises leaves neither (its record then goes to the DLQ);
- resolve logical topic names (``"runs"`` → ``"<namespace>.runs"``).

Store reads and writes go to the partition transaction of the loop's open Kafka transaction, looked
up on each call, so a context never holds on to a finished transaction.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from processors.state.base import PartitionTransaction
from streams.errors import UsageError

Headers = Sequence[tuple[str, bytes]]


class TransactionSink(Protocol):
    """The loop's open transaction as a context uses it (implemented by ``Checkpoint``)."""

    def store_transaction(self, store: str, partition: int) -> PartitionTransaction:
        """The partition transaction of ``store``/``partition`` in the open Kafka transaction."""
        ...

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None,
        headers: Headers | None,
    ) -> None:
        """Produces one output record inside the open Kafka transaction."""
        ...


@dataclass(frozen=True, slots=True)
class Output:
    """One record produced by a hook, held until the hook returns.

    Attributes:
        topic: Full topic name.
        key: Key bytes.
        value: Value bytes; ``None`` is a tombstone.
        partition: Explicit partition, or ``None`` for the murmur2 key partitioner.
        headers: Headers.
    """

    topic: str
    key: bytes | None
    value: bytes | None
    partition: int | None
    headers: Headers | None


class ScopeState(enum.Enum):
    """Lifecycle of one hook call's scope.

    ::

        IDLE ──begin──▶ ACTIVE ──commit──▶ IDLE
                          └─────rollback───▶ IDLE
    """

    IDLE = "idle"
    ACTIVE = "active"


class StoreView:
    """A store as a hook sees it: the partition transaction, with writes journalled for rollback."""

    __slots__ = ("_ctx", "name")

    def __init__(self, ctx: Context, name: str) -> None:
        self._ctx = ctx
        self.name = name

    def _tx(self) -> PartitionTransaction:
        return self._ctx._sink().store_transaction(self.name, self._ctx.partition)

    def get(self, key: bytes) -> bytes | None:
        """Returns the value as the open transaction sees it, ``None`` if absent."""
        return self._tx().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Writes a key (applied to the store only after the Kafka transaction commits)."""
        tx = self._tx()
        self._ctx._journal(self.name, key, tx)
        tx.put(key, value)

    def delete(self, key: bytes) -> None:
        """Deletes a key (a tombstone in the changelog)."""
        tx = self._tx()
        self._ctx._journal(self.name, key, tx)
        tx.delete(key)

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with ``prefix``, ascending, including this transaction's writes."""
        return self._tx().iter_prefix(prefix)

    def iter_range(
        self, lower: bytes | None = None, upper: bytes | None = None
    ) -> Iterator[tuple[bytes, bytes]]:
        """Items with ``lower <= key < upper``, ascending, including this transaction's writes."""
        return self._tx().iter_range(lower, upper)


class Context:
    """The context of one assigned partition, handed to every hook call for that partition.

    Args:
        processor: Processor name.
        partition: Input partition (= store and changelog partition).
        store_names: The processor's stores.
        sink: Returns the loop's open transaction.
        resolve_topic: Logical topic name → full name.
        clock: Wall clock in ms since the epoch.
    """

    def __init__(
        self,
        *,
        processor: str,
        partition: int,
        store_names: Sequence[str],
        sink: Callable[[], TransactionSink],
        resolve_topic: Callable[[str], str],
        clock: Callable[[], int],
    ) -> None:
        self.processor = processor
        self._partition = partition
        self._sink = sink
        self._resolve_topic = resolve_topic
        self._clock = clock
        self._stores = {name: StoreView(self, name) for name in store_names}
        self._topics: dict[str, str] = {}
        self._state = ScopeState.IDLE
        self._outputs: list[Output] = []
        self._undo: dict[tuple[str, bytes], bytes | None] = {}
        self.offset: int | None = None
        self.timestamp_ms: int | None = None

    @property
    def partition(self) -> int:
        """The input partition this context belongs to."""
        return self._partition

    @property
    def stores(self) -> Mapping[str, StoreView]:
        """The partition's stores by name."""
        return self._stores

    def store(self, name: str) -> StoreView:
        """One store of the partition.

        Raises:
            UsageError: The processor declares no store of that name.
        """
        try:
            return self._stores[name]
        except KeyError:
            raise UsageError(
                f"processor {self.processor!r} has no store {name!r}; declared: {sorted(self._stores)}"
            ) from None

    def now(self) -> int:
        """Wall-clock time in ms since the epoch (for deciding *when* to act, never for ordering)."""
        return self._clock()

    def topic(self, name: str) -> str:
        """Full name of a logical topic (``"runs"`` → ``"<namespace>.runs"``)."""
        full = self._topics.get(name)
        if full is None:
            full = self._topics[name] = self._resolve_topic(name)
        return full

    def produce(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes | str | None,
        headers: Headers | None = None,
        *,
        partition: int | None = None,
    ) -> None:
        """Produces a record inside the open transaction (sent when the hook returns normally).

        Args:
            topic: Logical topic name (``"runs"``), resolved within the namespace.
            key: Key; ``str`` is encoded as UTF-8. Partitioned with the Java-compatible murmur2.
            value: Value; ``None`` is a tombstone.
            headers: ``(name, bytes)`` pairs.
            partition: Explicit partition instead of the key's.
        """
        out = Output(
            self.topic(topic),
            key.encode() if isinstance(key, str) else key,
            value.encode() if isinstance(value, str) else value,
            partition,
            headers,
        )
        if self._state is ScopeState.ACTIVE:
            self._outputs.append(out)
        else:
            self._sink().produce(out.topic, out.key, out.value, partition=out.partition, headers=out.headers)

    # -- used by the loop --------------------------------------------------------------------

    def begin_scope(self, offset: int | None, timestamp_ms: int | None) -> None:
        """Starts one hook call: sets the record coordinates and starts holding effects."""
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self._state = ScopeState.ACTIVE

    def commit_scope(self) -> int:
        """Ends a hook call that returned: sends its outputs. Returns how many."""
        outputs = self._outputs
        self._reset()
        if outputs:
            sink = self._sink()
            for out in outputs:
                sink.produce(out.topic, out.key, out.value, partition=out.partition, headers=out.headers)
        return len(outputs)

    def rollback_scope(self) -> None:
        """Ends a hook call that raised: drops its outputs and undoes its store writes."""
        undo = self._undo
        self._reset()
        if not undo:
            return
        sink = self._sink()
        for (store, key), previous in undo.items():
            tx = sink.store_transaction(store, self._partition)
            # Re-writing the previous value (or a tombstone) is harmless for the changelog.
            if previous is None:
                tx.delete(key)
            else:
                tx.put(key, previous)

    def _reset(self) -> None:
        self._state = ScopeState.IDLE
        self._outputs = []
        self._undo = {}
        self.offset = None
        self.timestamp_ms = None

    def _journal(self, store: str, key: bytes, tx: PartitionTransaction) -> None:
        if self._state is ScopeState.ACTIVE:
            slot = (store, key)
            if slot not in self._undo:
                self._undo[slot] = tx.get(key)
