"""Every error the package raises, under one root so users can catch one type.

::

    StreamsError
    ├── UsageError (also RuntimeError)      programmer mistakes: bad API use, limits exceeded
    │   ├── ConfigError                     a setting has a wrong value; names the setting
    │   ├── EventValidationError            an event breaks the envelope rules; names the field
    │   ├── DurationError                   a duration string or value cannot be understood
    │   ├── ExpressionError                 a CEL expression does not compile
    │   └── TopicMismatchError              an existing topic differs from what the app needs
    ├── SerializationError                  bytes that cannot be decoded / values that cannot be encoded
    ├── KafkaError                          a broker or client failure; exposes ``.code``
    │   └── DeliveryError                   a produced record was not acknowledged
    ├── BrokerError                         the local development broker cannot be installed or started
    ├── StepError                           a step failed after all its retries (raised into the function)
    ├── NonRetriableError                   raised by users: fail this step now, do not retry
    └── RetryAfterError                     raised by users: retry this step at a given time

``processors.errors.ProcessorError`` subclasses :class:`StreamsError` too.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


class StreamsError(Exception):
    """Root of every error raised by this package and the engine."""


class UsageError(StreamsError, RuntimeError):
    """The program used the API wrongly; fixing the code or configuration fixes it."""


class ConfigError(UsageError):
    """A configuration value is wrong.

    Attributes:
        setting: The setting's name as the user wrote it (keyword or ``STREAMS_*`` variable).
    """

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class EventValidationError(UsageError):
    """An event breaks the envelope rules.

    Attributes:
        field: The offending field (``name``, ``data``, ``ts``, ... or ``<record>`` for the whole).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"event field {field!r}: {message}")
        self.field = field


class DurationError(UsageError):
    """A duration cannot be parsed or is out of the allowed range."""


class ExpressionError(UsageError):
    """A CEL expression does not compile; the message carries the position."""

    def __init__(self, expression: str, message: str) -> None:
        super().__init__(f"invalid expression {expression!r}: {message}")
        self.expression = expression


class TopicMismatchError(UsageError):
    """An existing topic's layout differs from what the app requires."""

    def __init__(self, topic: str, message: str) -> None:
        super().__init__(f"topic {topic!r}: {message}")
        self.topic = topic


class SerializationError(StreamsError):
    """A record cannot be decoded or a value cannot be encoded.

    Attributes:
        field: The field at fault, when one can be named.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message if field is None else f"field {field!r}: {message}")
        self.field = field


class KafkaError(StreamsError):
    """A Kafka client or broker error.

    Attributes:
        code: The librdkafka error code (``confluent_kafka.KafkaError.code()``), when known.
        retriable: Whether librdkafka marks the error retriable.
    """

    def __init__(self, message: str, *, code: int | None = None, retriable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retriable = retriable

    @classmethod
    def from_confluent(cls, err: Any, context: str = "") -> KafkaError:
        """Wraps a ``confluent_kafka.KafkaError`` (or an exception carrying one)."""
        inner = err.args[0] if isinstance(err, Exception) and err.args else err
        code = inner.code() if hasattr(inner, "code") else None
        retriable = bool(inner.retriable()) if hasattr(inner, "retriable") else False
        text = inner.str() if hasattr(inner, "str") else str(inner)
        return cls(f"{context}: {text}" if context else text, code=code, retriable=retriable)


class DeliveryError(KafkaError):
    """A produced record was not acknowledged by the broker."""


class BrokerError(StreamsError):
    """The local development broker could not be installed, started or reached."""


class StepError(StreamsError):
    """A step failed after all its attempts; the function may catch it.

    Attributes:
        step_id: The step's id (with ``:N`` suffix for repeats).
        error_type: The class name of the last error the step raised.
        error_message: Its message.
    """

    def __init__(self, step_id: str, error_type: str, error_message: str) -> None:
        super().__init__(f"step {step_id!r} failed: {error_type}: {error_message}")
        self.step_id = step_id
        self.error_type = error_type
        self.error_message = error_message


class NonRetriableError(StreamsError):
    """Raise inside a step (or the function) to fail at once without further attempts."""


class RetryAfterError(StreamsError):
    """Raise inside a step to retry it no earlier than ``retry_after``.

    Args:
        message: What went wrong.
        retry_after: A delay or an absolute time.
    """

    def __init__(self, message: str, retry_after: timedelta | datetime) -> None:
        super().__init__(message)
        self.retry_after = retry_after
