"""Topic look-ups and creation the runtime needs before a processor starts.

Responsibilities:

- read a topic's partition count (changelogs must have the input topic's count);
- create a processor's changelog topics (compacted, input's partition count) idempotently, through
  :func:`streams._topics.create_topics`, which refuses silent layout drift.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError as ConfluentKafkaError
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from processors.kafka.errors import map_error
from streams._config import StreamsConfig
from streams._topics import TopicSpec, changelog_topic, describe_topics, raise_for_mismatch
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


def create_topics(config: StreamsConfig, specs: Iterable[TopicSpec]) -> list[str]:
    """Creates the missing topics of ``specs``; checks the layout of existing ones.

    Like :func:`streams._topics.create_topics`, but keeps the admin client referenced until every
    future resolved (a collected client fails its pending futures with ``_DESTROY``).

    Returns:
        Names of the topics this call created.

    Raises:
        TopicMismatchError: An existing topic differs from its spec.
        KafkaError: The cluster refused or could not be reached.
    """
    wanted = list(specs)
    states = describe_topics(config, wanted)
    for state in states:
        raise_for_mismatch(state)
    missing = [state.spec for state in states if not state.exists]
    if not missing:
        return []
    replication = config.replication_factor if config.replication_factor is not None else -1
    admin = AdminClient(config.client_config())
    futures = admin.create_topics(
        [
            NewTopic(
                spec.name,
                num_partitions=spec.partitions,
                replication_factor=replication,
                config={"cleanup.policy": spec.cleanup_policy, **spec.config},
            )
            for spec in missing
        ],
        request_timeout=_TIMEOUT_S,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=_TIMEOUT_S)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != ConfluentKafkaError.TOPIC_ALREADY_EXISTS:
                raise map_error(exc, f"creating {name}") from exc
    if len(created) != len(missing):
        for state in describe_topics(config, missing):
            raise_for_mismatch(state)
    del admin
    return created


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
