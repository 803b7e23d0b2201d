"""Durable, event-coordinated functions on Apache Kafka.

Users import everything from here; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from streams._app import App
from streams._config import SecretStr, StreamsConfig
from streams._event import Event
from streams._function import CancelOn, FunctionDef, Trigger, Wait
from streams._step import Step, SyncStep
from streams.errors import (
    ConfigError,
    DeliveryError,
    EventValidationError,
    ExpressionError,
    KafkaError,
    NonRetriableError,
    RetryAfterError,
    SerializationError,
    StepError,
    StreamsError,
    UsageError,
)

__all__ = [
    "App",
    "CancelOn",
    "ConfigError",
    "DeliveryError",
    "Event",
    "EventValidationError",
    "ExpressionError",
    "FunctionDef",
    "KafkaError",
    "NonRetriableError",
    "RetryAfterError",
    "SecretStr",
    "SerializationError",
    "Step",
    "StepError",
    "StreamsConfig",
    "StreamsError",
    "SyncStep",
    "Trigger",
    "UsageError",
    "Wait",
]
