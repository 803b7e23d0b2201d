"""Durable, event-coordinated functions on Apache Kafka."""

from __future__ import annotations

from streams._config import StreamsConfig

__all__ = ["StreamsConfig"]
