"""Shared fixtures: one Kafka broker per test session and unique names per test.

The broker behind ``kafka_bootstrap`` is, first that applies:

1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (an existing cluster; plaintext);
2. a testcontainers Kafka (KRaft) when a Docker engine answers a ping
   (``STREAMS_TEST_BROKER=local`` skips this, e.g. to test the jar broker on a Docker machine);
3. the local jar broker (``streams kafka``): installed if needed, started on a free port with a
   per-session data directory, stopped at the end of the session.

It is started lazily, by the first test that needs it: tests marked ``kafka`` get it automatically,
and tests using it are marked ``kafka`` (so ``-m "not kafka"`` deselects them). Tests under
``tests/unit`` must not use it.
"""

from __future__ import annotations

import itertools
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streams import StreamsConfig
from streams._broker import LocalKafka

UNIT_TESTS = Path(__file__).parent / "unit"
#: Newest Confluent Platform the testcontainers module knows how to start in KRaft mode.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.0"
#: Small partition counts keep topic creation and consumer-group assignment fast.
TEST_PARTITIONS = {"events": 2, "runs": 2, "waits": 2, "timers": 2, "history": 1}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kafka_bootstrap" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(autouse=True)
def _broker_for_kafka_tests(request: pytest.FixtureRequest) -> None:
    in_unit = UNIT_TESTS in Path(request.node.path).parents
    wants_broker = request.node.get_closest_marker("kafka") is not None
    if in_unit and (wants_broker or "kafka_bootstrap" in request.fixturenames):
        pytest.fail("unit tests must not use a Kafka broker; move the test to tests/integration")
    if wants_broker:
        request.getfixturevalue("kafka_bootstrap")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of the session's broker (see the module docstring for which one)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield external
    elif os.environ.get("STREAMS_TEST_BROKER") != "local" and _docker_answers():
        yield from _container_broker()
    else:
        kafka = LocalKafka.from_env()
        data_dir = tmp_path_factory.mktemp("kafka")
        bootstrap = kafka.start(data_dir=data_dir, timeout=120)
        try:
            yield bootstrap
        finally:
            kafka.stop(data_dir)


@pytest.fixture
def namespace() -> str:
    """A topic prefix no other test uses."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def streams_config(namespace: str, kafka_bootstrap: str) -> StreamsConfig:
    """A config on the session broker with a fresh namespace and small partition counts."""
    return StreamsConfig(namespace=namespace, bootstrap_servers=kafka_bootstrap, partitions=TEST_PARTITIONS)


@pytest.fixture
def group_id(namespace: str) -> Callable[[str], str]:
    """Factory of consumer group ids unique to the test: ``group_id("router")``."""
    counter = itertools.count()

    def make(name: str = "group") -> str:
        return f"{namespace}.{name}.{next(counter)}"

    return make


def _docker_answers() -> bool:
    """Whether a Docker engine answers, checked without hanging or warning when there is none."""
    if not os.environ.get("DOCKER_HOST") and not any(
        Path(sock).exists()
        for sock in (
            "/var/run/docker.sock",
            Path.home() / ".docker" / "run" / "docker.sock",
            f"/run/user/{os.getuid()}/docker.sock",
        )
    ):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False


def _container_broker() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.kafka import KafkaContainer
    container = (
        KafkaContainer(KAFKA_IMAGE)
        .with_kraft()
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_MIN_INSYNC_REPLICAS", "1")
        .with_env("KAFKA_DEFAULT_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    container.start(timeout=120)
    try:
        yield container.get_bootstrap_server()
    finally:
        container.stop()
