"""The app's topics: what each one is, creating them idempotently, and refusing silent drift.

Partition counts and cleanup policies are fixed when a topic is created. Partitioning by match key
and run id means a different partition count would send the same key somewhere else, so an existing
topic that differs is an error that explains the migration, never something we quietly accept.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from streams._config import StreamsConfig
from streams.errors import KafkaError, TopicMismatchError

#: Stateful processors and their stores: (processor, store, topic whose partitions it follows).
#: Each store has a compacted changelog ``<namespace>.<processor>-<store>-changelog``.
STORES: tuple[tuple[str, str, str], ...] = (
    ("executor", "runs", "runs"),
    ("matcher", "waits", "waits"),
    ("timers", "timers", "timers"),
)

_ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the app needs it.

    Attributes:
        name: Full topic name including the namespace prefix.
        partitions: Partition count.
        cleanup_policy: ``delete`` or ``compact``.
        config: Further topic-level settings set at creation (not enforced afterwards).
    """

    name: str
    partitions: int
    cleanup_policy: str
    config: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicState:
    """What ``describe_topics`` found for one topic (``None`` fields: the topic does not exist)."""

    spec: TopicSpec
    partitions: int | None
    cleanup_policy: str | None

    @property
    def exists(self) -> bool:
        """Whether the topic exists on the cluster."""
        return self.partitions is not None


def changelog_topic(config: StreamsConfig, processor: str, store: str) -> str:
    """Name of a store's changelog topic."""
    return config.topic(f"{processor}-{store}-changelog")


def app_topics(config: StreamsConfig) -> list[TopicSpec]:
    """Every topic of the design for this app, with its layout."""
    parts = config.partitions
    specs = [
        TopicSpec(
            config.topic("events"),
            parts["events"],
            "delete",
            {
                # Deadlines compare against append time, never against producer-chosen timestamps.
                "message.timestamp.type": "LogAppendTime",
                "retention.ms": str(config.events_retention_ms),
            },
        ),
        TopicSpec(config.topic("runs"), parts["runs"], "delete"),
        TopicSpec(config.topic("waits"), parts["waits"], "delete"),
        TopicSpec(config.topic("timers"), parts["timers"], "delete"),
        TopicSpec(config.topic("history"), parts["history"], "delete"),
        TopicSpec(config.topic("dlq"), parts["dlq"], "delete"),
        TopicSpec(config.topic("correlations"), parts["correlations"], "compact"),
    ]
    specs += [
        TopicSpec(changelog_topic(config, processor, store), parts[follows], "compact")
        for processor, store, follows in STORES
    ]
    return specs


def _admin(config: StreamsConfig) -> AdminClient:
    return AdminClient(config.client_config())


def describe_topics(config: StreamsConfig, specs: Iterable[TopicSpec] | None = None) -> list[TopicState]:
    """Reads partition counts and cleanup policies of the app's topics.

    Raises:
        KafkaError: The cluster could not be reached.
    """
    wanted = list(app_topics(config) if specs is None else specs)
    admin = _admin(config)
    try:
        metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
    except KafkaException as exc:
        raise KafkaError.from_confluent(exc, "listing topics") from exc
    existing = {name: len(meta.partitions) for name, meta in metadata.topics.items() if meta.error is None}
    present = [spec for spec in wanted if spec.name in existing]
    policies: dict[str, str] = {}
    if present:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, spec.name) for spec in present]
        for resource, future in admin.describe_configs(resources).items():
            try:
                entries = future.result(timeout=_ADMIN_TIMEOUT_S)
            except KafkaException as exc:
                raise KafkaError.from_confluent(exc, f"describing {resource.name}") from exc
            policies[resource.name] = entries["cleanup.policy"].value
    return [TopicState(spec, existing.get(spec.name), policies.get(spec.name)) for spec in wanted]


def raise_for_mismatch(state: TopicState) -> None:
    """Raises if an existing topic's partitions or cleanup policy differ from its spec.

    Raises:
        TopicMismatchError: With what differs and how to migrate.
    """
    spec = state.spec
    if state.partitions is not None and state.partitions != spec.partitions:
        raise TopicMismatchError(
            spec.name,
            f"has {state.partitions} partitions but the app is configured for {spec.partitions}. "
            "Records are partitioned by run id and match key, so changing the count moves keys to "
            "other partitions and strands their state. Either set partitions to "
            f"{state.partitions} for this topic, or migrate: stop all workers, create a new namespace "
            "with the new counts, and replay events into it (`streams replay`).",
        )
    if state.cleanup_policy is not None and state.cleanup_policy != spec.cleanup_policy:
        raise TopicMismatchError(
            spec.name,
            f"has cleanup.policy={state.cleanup_policy} but must be {spec.cleanup_policy}. "
            f"Fix it with kafka-configs --alter --entity-type topics --entity-name {spec.name} "
            f"--add-config cleanup.policy={spec.cleanup_policy}, then start the workers again.",
        )


def create_topics(config: StreamsConfig, specs: Iterable[TopicSpec] | None = None) -> list[str]:
    """Creates every missing topic; leaves matching ones alone. Safe to call any number of times.

    Returns:
        Names of the topics this call created.

    Raises:
        TopicMismatchError: An existing topic differs from its spec (nothing is changed).
        KafkaError: The cluster refused or could not be reached.
    """
    states = describe_topics(config, specs)
    for state in states:
        raise_for_mismatch(state)
    missing = [state.spec for state in states if not state.exists]
    if not missing:
        return []
    replication = config.replication_factor if config.replication_factor is not None else -1
    new_topics = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=replication,
            config={"cleanup.policy": spec.cleanup_policy, **spec.config},
        )
        for spec in missing
    ]
    created: list[str] = []
    admin = _admin(config)  # must outlive the futures, or librdkafka destroys the handle under them
    for name, future in admin.create_topics(new_topics, request_timeout=_ADMIN_TIMEOUT_S).items():
        try:
            future.result(timeout=_ADMIN_TIMEOUT_S)
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() != error.TOPIC_ALREADY_EXISTS:
                raise KafkaError.from_confluent(exc, f"creating {name}") from exc
    # A concurrent creator may have won the race with another layout.
    if len(created) != len(missing):
        for state in describe_topics(config, missing):
            raise_for_mismatch(state)
    _wait_until_visible(admin, {spec.name: spec.partitions for spec in missing})
    return created


def _wait_until_visible(admin: AdminClient, expected: dict[str, int]) -> None:
    """Waits until metadata shows the new topics with all partitions led, so clients can use them."""
    deadline = time.monotonic() + _ADMIN_TIMEOUT_S
    while True:
        metadata = admin.list_topics(timeout=_ADMIN_TIMEOUT_S)
        ready = all(
            name in metadata.topics
            and metadata.topics[name].error is None
            and len(metadata.topics[name].partitions) == count
            and all(p.leader >= 0 for p in metadata.topics[name].partitions.values())
            for name, count in expected.items()
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise KafkaError(f"created topics did not become visible within {_ADMIN_TIMEOUT_S:.0f}s")
        time.sleep(0.1)
