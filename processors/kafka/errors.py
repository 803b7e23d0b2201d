"""Maps ``confluent_kafka`` errors onto the package's error tree, by what the caller must do.

Responsibilities:

- classify a librdkafka error the way librdkafka's transactional API documents it
  (``fatal()`` → stop, ``txn_requires_abort()`` → abort and rewind, ``retriable()`` → call again);
- keep fencing apart from other fatal errors so the log line says why the worker stopped.

::

    streams.errors.KafkaError
    ├── RetriableKafkaError             the same call may succeed if repeated (timeouts, coordinator moves)
    ├── TransactionAbortRequiredError   abort the transaction, rewind the input, process the batch again
    └── FatalKafkaError                 this client cannot continue; the worker stops with a non-zero exit
        └── ProducerFencedError         a newer producer with the same transactional.id took over
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException

from streams.errors import KafkaError

_FENCED_CODES = frozenset(
    {
        ConfluentKafkaError._FENCED,
        ConfluentKafkaError.PRODUCER_FENCED,
        ConfluentKafkaError.INVALID_PRODUCER_EPOCH,
        ConfluentKafkaError.TRANSACTION_COORDINATOR_FENCED,
    }
)


class RetriableKafkaError(KafkaError):
    """librdkafka marks the error retriable: repeating the same call may succeed."""


class TransactionAbortRequiredError(KafkaError):
    """The open transaction cannot commit: abort it, rewind the consumer and redo the batch.

    Raised for ``txn_requires_abort()`` errors, failed deliveries inside a transaction and stale
    consumer-group generations (KIP-447 fencing of a revoked member).
    """


class FatalKafkaError(KafkaError):
    """The client is unusable (librdkafka ``fatal()``); the worker must stop."""


class ProducerFencedError(FatalKafkaError):
    """Another producer with the same ``transactional.id`` (a newer instance) fenced this one."""


def is_fatal(err: ConfluentKafkaError) -> bool:
    """Whether librdkafka reports the error as fatal (``fatal()``, or the ``_FATAL`` event code)."""
    return bool(err.fatal()) or err.code() == ConfluentKafkaError._FATAL


def confluent_error(exc: BaseException | ConfluentKafkaError) -> ConfluentKafkaError | None:
    """Returns the ``confluent_kafka.KafkaError`` inside an exception, if it carries one."""
    if isinstance(exc, ConfluentKafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], ConfluentKafkaError):
        return exc.args[0]
    return None


def map_error(exc: BaseException | ConfluentKafkaError, context: str) -> KafkaError:
    """Builds the package error for a librdkafka error, by the action it requires.

    Order matters: an error can be both retriable and abortable; librdkafka's examples check
    ``retriable()`` first for ``commit_transaction``/``send_offsets_to_transaction`` because a
    retriable failure leaves the transaction intact.

    Args:
        exc: A ``KafkaException`` or a ``confluent_kafka.KafkaError``.
        context: What was being done, for the message (``"commit_transaction"``).

    Returns:
        One of :class:`RetriableKafkaError`, :class:`TransactionAbortRequiredError`,
        :class:`ProducerFencedError`, :class:`FatalKafkaError` or a plain
        :class:`~streams.errors.KafkaError` when librdkafka gives no hint.
    """
    err = confluent_error(exc)
    if err is None:
        return KafkaError(f"{context}: {exc}")
    kind: type[KafkaError]
    if is_fatal(err):
        kind = ProducerFencedError if err.code() in _FENCED_CODES else FatalKafkaError
    elif err.retriable():
        kind = RetriableKafkaError
    elif err.txn_requires_abort():
        kind = TransactionAbortRequiredError
    elif err.code() in _FENCED_CODES:
        kind = ProducerFencedError
    else:
        kind = KafkaError
    text = err.str()
    return kind(f"{context}: {text} ({err.name()})", code=err.code(), retriable=err.retriable())


def describe(err: Any) -> str:
    """Short ``NAME: text`` for a librdkafka error, for log lines."""
    if isinstance(err, ConfluentKafkaError):
        return f"{err.name()}: {err.str()}"
    return str(err)
