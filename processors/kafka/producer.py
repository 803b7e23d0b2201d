"""Typed wrapper over ``confluent_kafka.Producer`` for transactional (EOS v2) and plain output.

Responsibilities:

- own the producer's transaction lifecycle (:class:`TransactionState`) and refuse calls that are
  illegal in the current state instead of letting librdkafka fail later;
- retry, abort or give up exactly as librdkafka's transactional API documents for each call;
- track delivery reports so the caller learns the highest offset written to every partition in the
  open transaction (the changelog offsets a store checkpoint records). With transactions the
  reports arrive on :meth:`Producer.flush`, before the commit completes;
- keep ``BufferError`` (local queue full) out of the caller's way by serving delivery reports.

State diagram::

    NEW ──init()──▶ READY ──begin()──▶ OPEN ──commit()──▶ READY
                      ▲                  │
                      └─────abort()──────┘
    any ──fatal error──▶ FATAL (terminal; close() only)
    any ──close()──▶ CLOSED
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException, Message, TopicPartition
from confluent_kafka import Producer as _ConfluentProducer

from processors.kafka.errors import (
    FatalKafkaError,
    RetriableKafkaError,
    TransactionAbortRequiredError,
    describe,
    is_fatal,
    map_error,
)
from streams._config import producer_defaults
from streams.errors import KafkaError, UsageError

logger = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]

#: librdkafka's default ``transaction.timeout.ms`` is 60 s; a crashed worker's open transaction
#: blocks its partitions' LSO until the broker aborts it, so keep it short (Kafka Streams uses 10 s).
DEFAULT_TRANSACTION_TIMEOUT_MS = 10_000


class TransactionState(enum.Enum):
    """Lifecycle of the producer's transactions (see the module docstring for the diagram)."""

    NEW = "new"
    READY = "ready"
    OPEN = "open"
    FATAL = "fatal"
    CLOSED = "closed"


_ALLOWED: Mapping[TransactionState, frozenset[TransactionState]] = {
    TransactionState.NEW: frozenset(
        {TransactionState.READY, TransactionState.FATAL, TransactionState.CLOSED}
    ),
    TransactionState.READY: frozenset(
        {TransactionState.OPEN, TransactionState.FATAL, TransactionState.CLOSED}
    ),
    TransactionState.OPEN: frozenset(
        {TransactionState.READY, TransactionState.FATAL, TransactionState.CLOSED}
    ),
    TransactionState.FATAL: frozenset({TransactionState.CLOSED}),
    TransactionState.CLOSED: frozenset(),
}


class Producer:
    """A producer that is either transactional (exactly-once) or idempotent (at-least-once).

    In at-least-once mode :meth:`begin` and :meth:`commit` only delimit delivery tracking and
    :meth:`commit` waits for every delivery; offsets are committed by the consumer.

    Args:
        config: librdkafka settings shared by every client (``StreamsConfig.client_config()``).
        transactional_id: ``transactional.id``; ``None`` makes an idempotent, non-transactional
            producer.
        transaction_timeout_ms: ``transaction.timeout.ms``.
        extra: Further librdkafka settings (win over the defaults set here).
        on_fatal: Called once with the error when librdkafka reports a fatal error via ``error_cb``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        transactional_id: str | None,
        transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS,
        extra: Mapping[str, Any] | None = None,
        on_fatal: Callable[[KafkaError], None] | None = None,
    ) -> None:
        conf: dict[str, Any] = dict(config)
        conf.update(
            {
                **producer_defaults(),
                "linger.ms": 5,
                "error_cb": self._on_error,
            }
        )
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = transaction_timeout_ms
        conf.update(extra or {})
        self.transactional_id = transactional_id
        self.transaction_timeout_s = transaction_timeout_ms / 1000.0
        self._producer = _ConfluentProducer(conf)
        self._state = TransactionState.NEW
        self._on_fatal = on_fatal
        self._fatal: KafkaError | None = None
        self._offsets: dict[tuple[str, int], int] = {}
        self._delivery_error: KafkaError | None = None
        self._pending = 0
        self._produced = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> TransactionState:
        """Current transaction state."""
        return self._state

    @property
    def transactional(self) -> bool:
        """Whether this producer runs Kafka transactions."""
        return self.transactional_id is not None

    def _transition(self, target: TransactionState) -> None:
        if target not in _ALLOWED[self._state]:
            raise UsageError(f"producer transaction cannot go from {self._state.value} to {target.value}")
        self._state = target

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def init(self, timeout_s: float = 60.0) -> None:
        """Initialises transactions (fencing older producers with the same id, aborting their txn).

        Raises:
            FatalKafkaError: librdkafka reports a fatal error (fenced, unsupported broker, ...).
            RetriableKafkaError: The coordinator could not be reached within ``timeout_s``.
        """
        if self.transactional:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    self._producer.init_transactions(max(1.0, deadline - time.monotonic()))
                    break
                except KafkaException as exc:
                    error = self._fail_if_fatal(map_error(exc, "init_transactions"))
                    if isinstance(error, RetriableKafkaError) and time.monotonic() < deadline:
                        logger.warning("init_transactions: %s; retrying", error)
                        continue
                    raise error from exc
        self._transition(TransactionState.READY)

    def begin(self) -> None:
        """Opens a transaction and starts tracking delivery offsets for it."""
        self._raise_if_fatal()
        self._offsets = {}
        self._delivery_error = None
        self._produced = 0
        if self.transactional:
            try:
                self._producer.begin_transaction()
            except KafkaException as exc:
                raise self._fail_if_fatal(map_error(exc, "begin_transaction")) from exc
        self._transition(TransactionState.OPEN)

    # -- producing ---------------------------------------------------------------------------

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queues one record in the open transaction.

        Raises:
            UsageError: No transaction is open.
            TransactionAbortRequiredError: The transaction is in an abortable error state.
            FatalKafkaError: The producer is unusable.
        """
        if self._state is not TransactionState.OPEN:
            raise UsageError(f"produce() needs an open transaction; the producer is {self._state.value}")
        while True:
            try:
                self._producer.produce(
                    topic,
                    value,
                    key,
                    partition=-1 if partition is None else partition,
                    on_delivery=self._on_delivery,
                    headers=list(headers) if headers else None,
                )
                break
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise self._fail_if_fatal(map_error(exc, f"produce to {topic}")) from exc
        self._pending += 1
        self._produced += 1

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serves delivery reports without blocking (call now and then while producing)."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> dict[tuple[str, int], int]:
        """Waits for every queued record's delivery report.

        Returns:
            Highest offset written per ``(topic, partition)`` since :meth:`begin`.

        Raises:
            TransactionAbortRequiredError: A record failed delivery or the flush timed out.
            FatalKafkaError: The producer is unusable.
        """
        limit = self.transaction_timeout_s if timeout_s is None else timeout_s
        remaining = self._producer.flush(limit)
        self._raise_if_fatal()
        if self._delivery_error is not None:
            raise TransactionAbortRequiredError(
                f"a record of the transaction failed delivery: {self._delivery_error}",
                code=self._delivery_error.code,
            )
        if remaining:
            raise TransactionAbortRequiredError(f"{remaining} records not delivered within {limit:.1f}s")
        return dict(self._offsets)

    @property
    def produced(self) -> int:
        """Records produced since :meth:`begin`."""
        return self._produced

    def _on_delivery(self, err: ConfluentKafkaError | None, msg: Message) -> None:
        self._pending -= 1
        if err is not None:
            if self._delivery_error is None:
                self._delivery_error = map_error(err, f"delivery to {msg.topic()}")
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return
        key = (topic, partition)
        if offset > self._offsets.get(key, -1):
            self._offsets[key] = offset

    def _on_error(self, err: ConfluentKafkaError) -> None:
        if is_fatal(err):
            error = map_error(err, "producer")
            self._fail_if_fatal(error)
        elif err.code() in (ConfluentKafkaError._TRANSPORT, ConfluentKafkaError._ALL_BROKERS_DOWN):
            logger.warning("producer: %s", describe(err), extra={"transactional_id": self.transactional_id})
        else:
            logger.info("producer: %s", describe(err), extra={"transactional_id": self.transactional_id})

    def _fail_if_fatal(self, error: KafkaError) -> KafkaError:
        if isinstance(error, FatalKafkaError) and self._fatal is None:
            self._fatal = error
            if self._state is not TransactionState.CLOSED:
                self._state = TransactionState.FATAL
            if self._on_fatal is not None:
                self._on_fatal(error)
        return error

    # -- completing --------------------------------------------------------------------------

    def send_offsets(
        self, offsets: Sequence[TopicPartition], group_metadata: Any, timeout_s: float | None = None
    ) -> None:
        """Adds the consumer's next offsets to the open transaction (EOS v2, group metadata fencing).

        Retriable errors are retried until the transaction timeout.

        Raises:
            TransactionAbortRequiredError: Abort and rewind (also: stale consumer generation).
            FatalKafkaError: Stop the worker.
        """
        if self._state is not TransactionState.OPEN:
            raise UsageError(f"send_offsets() needs an open transaction; the producer is {self._state.value}")
        if not self.transactional or not offsets:
            return
        self._retry(
            "send_offsets_to_transaction",
            lambda timeout: self._producer.send_offsets_to_transaction(
                list(offsets), group_metadata, timeout
            ),
            timeout_s=timeout_s,
        )

    def commit(self, timeout_s: float | None = None) -> None:
        """Commits the open transaction (flushing first); in at-least-once mode only flushes.

        Args:
            timeout_s: Give up (abortable) after this long; default the transaction timeout.

        Raises:
            TransactionAbortRequiredError: The transaction must be aborted (the caller aborts).
            FatalKafkaError: Stop the worker.
        """
        if self._state is not TransactionState.OPEN:
            raise UsageError(f"commit() needs an open transaction; the producer is {self._state.value}")
        if self.transactional:
            self._retry("commit_transaction", self._producer.commit_transaction, timeout_s=timeout_s)
        else:
            self.flush(timeout_s)
        self._transition(TransactionState.READY)

    def abort(self) -> None:
        """Aborts the open transaction (in at-least-once mode: drops queued records).

        Raises:
            FatalKafkaError: The abort itself failed fatally; stop the worker.
        """
        if self._state is TransactionState.READY:
            return
        if self._state is not TransactionState.OPEN:
            raise UsageError(f"abort() needs an open transaction; the producer is {self._state.value}")
        if self.transactional:
            self._retry("abort_transaction", self._producer.abort_transaction, abortable_is_error=True)
        else:
            self._producer.purge(in_queue=True, in_flight=False)
            self._producer.poll(0)
        self._offsets = {}
        self._delivery_error = None
        self._transition(TransactionState.READY)

    def _retry(
        self,
        what: str,
        call: Callable[[float], None],
        *,
        abortable_is_error: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        """Runs a transactional call, repeating it while librdkafka says the error is retriable."""
        limit = max(self.transaction_timeout_s, 5.0) if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while True:
            self._raise_if_fatal()
            try:
                call(max(0.5, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                error = self._fail_if_fatal(map_error(exc, what))
                if isinstance(error, RetriableKafkaError) and time.monotonic() < deadline:
                    logger.info(
                        "%s: %s; retrying", what, error, extra={"transactional_id": self.transactional_id}
                    )
                    continue
                if isinstance(error, TransactionAbortRequiredError) and abortable_is_error:
                    raise FatalKafkaError(str(error), code=error.code) from exc
                if isinstance(error, RetriableKafkaError):
                    # Out of time: the transaction's fate is unknown to us; librdkafka lets us abort.
                    raise TransactionAbortRequiredError(str(error), code=error.code) from exc
                raise error from exc

    def close(self, timeout_s: float = 5.0) -> None:
        """Aborts an open transaction if possible, flushes and releases the client."""
        if self._state is TransactionState.CLOSED:
            return
        if self._state is TransactionState.OPEN:
            try:
                self.abort()
            except KafkaError as exc:
                logger.warning("closing producer: abort failed: %s", exc)
        try:
            self._producer.flush(timeout_s)
        except KafkaException as exc:  # pragma: no cover - defensive
            logger.warning("closing producer: flush failed: %s", describe(exc))
        # Destroy the client now, not when a reference cycle is collected: a lingering client keeps
        # its threads and connections (and reconnect noise) alive after the loop stopped.
        self._producer.close()
        self._state = TransactionState.CLOSED
