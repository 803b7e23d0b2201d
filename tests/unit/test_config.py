from pathlib import Path

import pytest

from streams import StreamsConfig
from streams._config import DEFAULT_PARTITIONS, SecretStr
from streams.errors import ConfigError


def test_defaults_and_topic_names() -> None:
    config = StreamsConfig(namespace="shop", bootstrap_servers="127.0.0.1:9092")
    assert config.topic("events") == "shop.events"
    assert dict(config.partitions) == dict(DEFAULT_PARTITIONS)
    assert config.max_event_bytes == 512 * 1024


def test_sasl_and_tls_settings_reach_librdkafka(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    config = StreamsConfig(
        namespace="shop",
        bootstrap_servers="broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="alice",
        sasl_password="s3cret",
        ssl_ca_location=str(ca),
        extra_config={"linger.ms": 7},
    )
    conf = config.client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "alice"
    assert conf["sasl.password"] == "s3cret"
    assert conf["ssl.ca.location"] == str(ca)
    assert conf["linger.ms"] == 7
    assert "s3cret" not in repr(config)
    assert isinstance(config.sasl_password, SecretStr)


def test_librdkafka_accepts_the_generated_sasl_config() -> None:
    from confluent_kafka import Producer

    config = StreamsConfig(
        namespace="shop",
        bootstrap_servers="127.0.0.1:1",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password="p",
    )
    Producer(config.client_config())  # librdkafka validates every key and value here


@pytest.mark.parametrize(
    ("kwargs", "setting", "fragment"),
    [
        ({"namespace": "bad name"}, "namespace", "letters, digits"),
        ({"namespace": "ok", "partitions": {"runs": 0}}, "partitions[runs]", "1 to 10000"),
        ({"namespace": "ok", "partitions": {"nope": 1}}, "partitions", "unknown topic"),
        ({"namespace": "ok", "security_protocol": "TLS"}, "security_protocol", "SASL_SSL"),
        ({"namespace": "ok", "security_protocol": "SASL_SSL"}, "sasl_mechanism", "needs one of"),
        (
            {"namespace": "ok", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
            "sasl_username",
            "username and password",
        ),
        ({"namespace": "ok", "ssl_ca_location": "/does/not/exist"}, "ssl_ca_location", "does not exist"),
        ({"namespace": "ok", "max_event_bytes": 10}, "max_event_bytes", "1024"),
        ({"namespace": "ok", "schema_registry_url": "registry:8081"}, "schema_registry_url", "http://"),
    ],
)
def test_wrong_values_name_the_setting(kwargs: dict[str, object], setting: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        StreamsConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.setting == setting
    assert fragment in str(info.value)


def test_environment_fills_what_kwargs_do_not_set() -> None:
    env = {
        "STREAMS_NAMESPACE": "fromenv",
        "STREAMS_BOOTSTRAP_SERVERS": "h:1",
        "STREAMS_PARTITIONS_RUNS": "12",
        "STREAMS_MAX_EVENT_BYTES": "2048",
        "STREAMS_KAFKA_LINGER_MS": "3",
    }
    config = StreamsConfig.from_env(env, namespace="fromkw")
    assert config.namespace == "fromkw"
    assert config.bootstrap_servers == "h:1"
    assert config.partitions["runs"] == 12
    assert config.max_event_bytes == 2048
    assert config.extra_config == {"linger.ms": "3"}


def test_environment_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="STREAMS_MAX_EVENT_BYTES: must be an integer"):
        StreamsConfig.from_env({"STREAMS_MAX_EVENT_BYTES": "lots"}, namespace="x")
    with pytest.raises(ConfigError, match="namespace: is required"):
        StreamsConfig.from_env({})
    with pytest.raises(ConfigError, match="unknown setting"):
        StreamsConfig.from_env({}, namespace="x", bootstrap="h:1")


def test_client_config_without_servers_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="streams kafka start"):
        StreamsConfig(namespace="x").client_config()
