import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streams import StreamsConfig
from streams._topics import app_topics, create_topics, describe_topics
from streams.errors import TopicMismatchError

pytestmark = pytest.mark.kafka


def test_create_is_idempotent_and_sets_layout(streams_config: StreamsConfig) -> None:
    created = create_topics(streams_config)
    assert sorted(created) == sorted(spec.name for spec in app_topics(streams_config))
    assert create_topics(streams_config) == []

    states = {state.spec.name: state for state in describe_topics(streams_config)}
    events = states[streams_config.topic("events")]
    assert events.partitions == streams_config.partitions["events"]
    assert events.cleanup_policy == "delete"
    assert states[streams_config.topic("correlations")].cleanup_policy == "compact"
    assert states[streams_config.topic("executor-runs-changelog")].cleanup_policy == "compact"
    assert (
        states[streams_config.topic("executor-runs-changelog")].partitions
        == streams_config.partitions["runs"]
    )

    admin = AdminClient(streams_config.client_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, streams_config.topic("events"))
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    assert entries["message.timestamp.type"].value == "LogAppendTime"


def test_mismatched_partition_count_is_rejected_with_migration(streams_config: StreamsConfig) -> None:
    create_topics(streams_config)
    other = streams_config.replace(
        partitions={**streams_config.partitions, "runs": streams_config.partitions["runs"] + 1}
    )
    with pytest.raises(TopicMismatchError) as info:
        create_topics(other)
    message = str(info.value)
    assert streams_config.topic("runs") in message
    assert "migrate" in message and "replay" in message


def test_mismatched_cleanup_policy_is_rejected(streams_config: StreamsConfig) -> None:
    admin = AdminClient(streams_config.client_config())
    from confluent_kafka.admin import NewTopic

    name = streams_config.topic("correlations")
    admin.create_topics([NewTopic(name, 1, 1, config={"cleanup.policy": "delete"})])[name].result(30)
    with pytest.raises(TopicMismatchError, match=r"cleanup\.policy=delete but must be compact"):
        create_topics(streams_config)
