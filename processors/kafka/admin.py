"""Topic look-ups and creation the runtime needs before a processor starts.

Responsibilities:

- read a topic's partition count (changelogs must have the input topic's count);
- create a processor's changelog topics (compacted, input's partition count) idempotently, through
  :func:`streams._topics.create_topics`, which refuses silent layout drift.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from processors.kafka.errors import map_error
from streams._config import StreamsConfig
from streams._topics import TopicSpec, changelog_topic, create_topics
from streams.errors import KafkaError

_TIMEOUT_S = 30.0


def partition_count(config: StreamsConfig, topic: str) -> int | None:
    """Partition count of a topic, or ``None`` when it does not exist.

    Raises:
        KafkaError: The cluster could not be reached.
    """
    admin = AdminClient(config.client_config())
    try:
        metadata = admin.list_topics(topic=topic, timeout=_TIMEOUT_S)
    except KafkaException as exc:
        raise map_error(exc, f"metadata of {topic}") from exc
    meta = metadata.topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        return None
    return len(meta.partitions)


def changelog_specs(
    config: StreamsConfig, processor: str, stores: Iterable[str], partitions: int
) -> list[TopicSpec]:
    """Specs of a processor's changelog topics (compacted, one partition per input partition)."""
    return [TopicSpec(changelog_topic(config, processor, store), partitions, "compact") for store in stores]


def ensure_changelogs(config: StreamsConfig, processor: str, stores: Iterable[str], input_topic: str) -> int:
    """Creates the processor's missing changelog topics; checks existing ones.

    Returns:
        The input topic's partition count.

    Raises:
        KafkaError: The input topic does not exist or the cluster refused.
        TopicMismatchError: A changelog exists with another partition count or cleanup policy.
    """
    count = partition_count(config, input_topic)
    if count is None:
        raise KafkaError(f"input topic {input_topic!r} of processor {processor!r} does not exist")
    names = list(stores)
    if names:
        create_topics(config, changelog_specs(config, processor, names, count))
    return count
