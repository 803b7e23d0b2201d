"""The processor contract: what a processor declares and the hooks the runtime calls.

Responsibilities:

- :class:`Processor`: name, input topic, store names, input decoder, and the hooks
  ``process``, ``on_partition_assigned``, ``on_partition_revoked`` and ``punctuate``;
- :class:`Record`: one decoded input record with its coordinates;
- decoders for raw bytes, events (JSON or Avro, :class:`streams._codec.EventCodec`) and internal
  Avro records (:class:`streams._codec.RecordCodec`). A decoder that raises sends the record to the
  namespace's ``dlq`` topic.

A processor is driven by one :class:`processors.runtime.loop.ProcessorLoop` per process: one
consumer group ``<namespace>.<name>``, one transactional producer. Every hook runs on the loop's
thread, inside the loop's open Kafka transaction, so everything a hook writes to a store or produces
through ``ctx`` commits atomically with the input offsets (exactly once).

Hooks must be deterministic in their store writes and outputs given the input and the store state:
after an abort (rebalance, crash, fencing) the same records are processed again from the last
committed state. Side effects outside ``ctx`` are not rolled back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from streams.errors import KafkaError, SerializationError

if TYPE_CHECKING:
    from processors.runtime.context import Context
    from streams._codec import EventCodec, RecordCodec
    from streams._event import Event

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

#: Record headers as the runtime passes them: ``(name, value)`` pairs in order.
Headers = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class Record(Generic[T]):
    """One input record, decoded.

    Attributes:
        topic: Full topic name.
        partition: Input partition; also the partition of the processor's stores and changelogs.
        offset: Offset in the partition.
        timestamp_ms: Record timestamp (create or log-append time), ms since the epoch; ``None`` when
            the record has none.
        key: Raw key bytes.
        value: The decoder's result.
        raw_value: The value bytes as read (what the DLQ receives when processing fails).
        headers: Record headers.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: T
    raw_value: bytes | None
    headers: Headers = ()


class Decoder(ABC, Generic[T_co]):
    """Turns an input record's value bytes into what :meth:`Processor.process` receives.

    Decoders are objects (not plain functions) so a class attribute ``decoder = RawDecoder()`` is
    not turned into a bound method.
    """

    @abstractmethod
    def __call__(self, value: bytes | None) -> T_co:
        """Decodes one value.

        Raises:
            Exception: Any exception sends the record to the DLQ (typically
                :class:`~streams.errors.SerializationError`).
        """


class RawDecoder(Decoder[bytes | None]):
    """Passes the value bytes through unchanged."""

    def __call__(self, value: bytes | None) -> bytes | None:
        """Returns ``value`` unchanged."""
        return value


class EventDecoder(Decoder["Event"]):
    """Decodes events (JSON, or Avro in the Confluent wire format) with :class:`EventCodec`.

    Args:
        codec: The app's event codec (size limit, schema registry); default: built-in schema only.
    """

    def __init__(self, codec: EventCodec | None = None) -> None:
        self._default = codec is None
        if codec is None:
            from streams._codec import EventCodec

            codec = EventCodec()
        self._codec = codec

    def __reduce__(self) -> tuple[Any, ...]:
        # A default codec is rebuilt in the receiving process (worker processes started by spawn).
        return (EventDecoder, ()) if self._default else (EventDecoder, (self._codec,))

    def __call__(self, value: bytes | None) -> Event:
        """Decodes one event.

        Raises:
            SerializationError: Not an event.
        """
        if value is None:
            raise SerializationError("tombstone (null value) where an event was expected")
        return self._codec.decode(value)


class AvroDecoder(Decoder[dict[str, Any]]):
    """Decodes an internal record with its Avro schema from ``schemas/``.

    Args:
        schema_name: Full or short schema name, e.g. ``"streams.RunCommand"``.
        codec: Codec to use; default: the package's schemas.
    """

    def __init__(self, schema_name: str, codec: RecordCodec | None = None) -> None:
        if codec is None:
            from streams._codec import RecordCodec

            codec = RecordCodec()
        self.schema_name = schema_name
        self._codec = codec

    def __reduce__(self) -> tuple[Any, ...]:
        return (AvroDecoder, (self.schema_name,))

    def __call__(self, value: bytes | None) -> dict[str, Any]:
        """Decodes one record.

        Raises:
            SerializationError: The bytes are not a record of the schema.
        """
        if value is None:
            raise SerializationError(f"tombstone (null value) where a {self.schema_name} was expected")
        return self._codec.decode(self.schema_name, value)


class Processor(ABC, Generic[T]):
    """A stateful stream processor: one input topic, named stores, exactly-once outputs.

    Subclasses set the attributes (as class attributes or in ``__init__``) and implement
    :meth:`process`.

    Attributes:
        name: Processor name; consumer group ``<namespace>.<name>``, changelogs
            ``<namespace>.<name>-<store>-changelog``, state under ``<state_dir>/<namespace>/<name>``.
        input_topic: Logical input topic (``"events"``); the runtime reads ``<namespace>.<input_topic>``.
        stores: Names of the processor's stores (one changelog each, partitioned like the input).
        decoder: Decodes input values; a failure sends the record to the DLQ.
    """

    name: str
    input_topic: str
    stores: Sequence[str] = ()
    decoder: Decoder[T]

    @abstractmethod
    def process(self, record: Record[T], ctx: Context) -> None:
        """Processes one input record.

        Store writes and ``ctx.produce`` outputs of a call that raises are discarded; the record goes
        to the DLQ with the error's type and message, and processing continues. Engine failures
        (:class:`~streams.errors.KafkaError`, :class:`~processors.errors.StateError`) are not the
        record's fault: they propagate and abort the transaction instead.

        Args:
            record: The decoded record.
            ctx: The record's partition context: stores, ``produce``, coordinates and ``now()``.
        """

    def on_partition_assigned(self, partition: int, ctx: Context) -> None:
        """Called after a partition's stores are restored, before its first record.

        Args:
            partition: The input partition.
            ctx: The partition's context (stores restored; ``offset``/``timestamp_ms`` are ``None``).
        """

    def on_partition_revoked(self, partition: int) -> None:
        """Called after the partition's last transaction finished, before its stores close.

        Also called when the partition is lost (its uncommitted work was aborted).
        """

    def punctuate(self, now_ms: int, ctx: Context) -> None:
        """Called every tick (default 50 ms) for each active partition, inside the open transaction.

        Args:
            now_ms: Wall-clock time of the tick, ms since the epoch.
            ctx: The partition's context (``offset``/``timestamp_ms`` are ``None``).
        """

    def on_committed(self) -> None:
        """Called on the loop's thread right after a transaction committed.

        The place for effects that must never happen for work that may still be aborted, such as
        starting a step whose start the committed transaction recorded.
        """

    def on_aborted(self) -> None:
        """Called after the open transaction was aborted; its records will be processed again."""

    @property
    def has_punctuate(self) -> bool:
        """Whether the subclass overrides :meth:`punctuate` (the loop skips ticks otherwise)."""
        return type(self).punctuate is not Processor.punctuate


def is_engine_error(exc: BaseException) -> bool:
    """Whether an exception from a hook is the engine's, not the record's (it aborts, never DLQs)."""
    from processors.errors import StateError

    return isinstance(exc, KafkaError | StateError) or not isinstance(exc, Exception)
