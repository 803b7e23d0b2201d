"""The one validated configuration object, and the one place that reads ``STREAMS_*`` variables.

Precedence: keyword arguments, then environment variables, then defaults. A wrong value raises
:class:`~streams.errors.ConfigError` naming the setting and what is allowed, so a worker stops at
start-up instead of failing later inside librdkafka.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ConfigError

#: Topics of the design and their default partition counts. ``correlations`` is one partition:
#: every router reads all of it.
DEFAULT_PARTITIONS: Mapping[str, int] = {
    "events": 6,
    "runs": 6,
    "waits": 6,
    "timers": 6,
    "history": 3,
    "dlq": 1,
    "correlations": 1,
}

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_ENV_PREFIX = "STREAMS_"
#: ``STREAMS_KAFKA_*`` variables that configure the local broker launcher, not librdkafka.
_NOT_LIBRDKAFKA = frozenset({"STREAMS_KAFKA_HOME"})


class SecretStr:
    """A string that never shows itself in ``repr``/``str``, so configs can be logged safely."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """Returns the secret itself; call only where it is handed to the Kafka client."""
        return self._value

    def __repr__(self) -> str:
        return "SecretStr('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class StreamsConfig:
    """Connection, topic layout and limits for one app.

    Attributes:
        namespace: Prefix of every topic (``<namespace>.events``) and consumer group.
        bootstrap_servers: Kafka bootstrap servers; ``None`` means "use the local development broker".
        partitions: Partition count per topic of the design; missing topics use
            :data:`DEFAULT_PARTITIONS`. Fixed at creation: changing them is a migration.
        replication_factor: Replication of created topics; ``None`` takes the broker default.
        events_retention_ms: Retention of the ``events`` topic, i.e. the replay window.
        security_protocol: ``security.protocol`` of every client.
        sasl_mechanism: SASL mechanism when the protocol is ``SASL_*``.
        sasl_username: SASL user name.
        sasl_password: SASL password (masked in ``repr``).
        ssl_ca_location: CA bundle file for TLS.
        ssl_certificate_location: Client certificate file for mutual TLS.
        ssl_key_location: Client key file for mutual TLS.
        ssl_key_password: Password of the client key (masked).
        schema_registry_url: Confluent-compatible Schema Registry; enables registered Avro ids.
        max_event_bytes: Largest encoded event accepted (default 512 KiB).
        state_dir: Where processors keep their RocksDB stores.
        extra_config: Raw librdkafka settings applied to every client, last (they win).
    """

    namespace: str
    bootstrap_servers: str | None = None
    partitions: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PARTITIONS))
    replication_factor: int | None = None
    events_retention_ms: int = 7 * 24 * 3600 * 1000
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    schema_registry_url: str | None = None
    max_event_bytes: int = 512 * 1024
    state_dir: Path = Path(".state")
    extra_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        merged = dict(DEFAULT_PARTITIONS)
        for name, count in dict(self.partitions).items():
            if name not in DEFAULT_PARTITIONS:
                raise ConfigError(
                    "partitions", f"unknown topic {name!r}; allowed: {', '.join(DEFAULT_PARTITIONS)}"
                )
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 10_000:
                raise ConfigError(f"partitions[{name}]", f"must be an integer from 1 to 10000, got {count!r}")
            merged[name] = count
        object.__setattr__(self, "partitions", merged)
        for name in ("sasl_password", "ssl_key_password"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, SecretStr(value))
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "extra_config", dict(self.extra_config))
        self._raise_for_invalid()

    def _raise_for_invalid(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE_RE.match(self.namespace):
            raise ConfigError(
                "namespace",
                f"{self.namespace!r} must be 1-63 characters of letters, digits, '_' or '-', "
                "starting with a letter or digit",
            )
        if self.bootstrap_servers is not None and not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap_servers", "must be host:port[,host:port...] or unset")
        if self.replication_factor is not None and not 1 <= self.replication_factor <= 32:
            raise ConfigError("replication_factor", f"must be 1-32 or unset, got {self.replication_factor}")
        if self.events_retention_ms < 60_000 and self.events_retention_ms != -1:
            raise ConfigError("events_retention_ms", "must be at least 60000 (1 minute) or -1 (forever)")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                "security_protocol",
                f"{self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}",
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    "sasl_mechanism",
                    f"{self.security_protocol} needs one of {', '.join(SASL_MECHANISMS)}, "
                    f"got {self.sasl_mechanism!r}",
                )
            if self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512") and not (
                self.sasl_username and self.sasl_password
            ):
                raise ConfigError(
                    "sasl_username", f"SASL {self.sasl_mechanism} needs a username and password"
                )
        elif self.sasl_mechanism is not None:
            raise ConfigError(
                "sasl_mechanism", f"is set but security_protocol is {self.security_protocol}; use SASL_SSL"
            )
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(name, f"file {path!r} does not exist")
        if not 1024 <= self.max_event_bytes <= 64 * 1024 * 1024:
            raise ConfigError("max_event_bytes", "must be from 1024 to 67108864 bytes")
        if self.schema_registry_url is not None and not self.schema_registry_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError("schema_registry_url", "must start with http:// or https://")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> StreamsConfig:
        """Builds a config from keyword arguments, filling the rest from ``STREAMS_*`` variables.

        ``STREAMS_PARTITIONS_<TOPIC>`` sets one topic's partitions, ``STREAMS_KAFKA_<KEY>`` passes a
        librdkafka setting (``STREAMS_KAFKA_LINGER_MS=5`` → ``linger.ms``).

        Raises:
            ConfigError: A variable has a wrong value.
        """
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in fields.items():
            var = _ENV_PREFIX + name.upper()
            if name in ("partitions", "extra_config") or var not in source:
                continue
            values[name] = _coerce(var, source[var], f.type)
        partitions = {
            key[len(_ENV_PREFIX + "PARTITIONS_") :].lower(): _coerce(key, val, "int")
            for key, val in source.items()
            if key.startswith(_ENV_PREFIX + "PARTITIONS_")
        }
        if partitions:
            values["partitions"] = partitions
        extra = {
            key[len(_ENV_PREFIX + "KAFKA_") :].lower().replace("_", "."): val
            for key, val in source.items()
            if key.startswith(_ENV_PREFIX + "KAFKA_") and key not in _NOT_LIBRDKAFKA
        }
        if extra:
            values["extra_config"] = extra
        for name, value in kwargs.items():
            if name not in fields:
                raise ConfigError(name, f"unknown setting; allowed: {', '.join(sorted(fields))}")
            if name in ("partitions", "extra_config") and name in values:
                value = {**values[name], **dict(value)}
            values[name] = value
        if "namespace" not in values:
            raise ConfigError("namespace", "is required (App('shop') or STREAMS_NAMESPACE=shop)")
        return cls(**values)

    def replace(self, **changes: Any) -> StreamsConfig:
        """Returns a copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def topic(self, name: str) -> str:
        """Full topic name, e.g. ``topic("events")`` → ``"shop.events"``."""
        return f"{self.namespace}.{name}"

    def client_config(self) -> dict[str, Any]:
        """Settings for librdkafka shared by every producer, consumer and admin client.

        Raises:
            ConfigError: ``bootstrap_servers`` is unset (start the local broker or set it).
        """
        if self.bootstrap_servers is None:
            raise ConfigError(
                "bootstrap_servers",
                "is not set; run `streams kafka start` and export STREAMS_BOOTSTRAP_SERVERS, "
                "or pass bootstrap_servers=...",
            )
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        for name, key in (
            ("ssl_ca_location", "ssl.ca.location"),
            ("ssl_certificate_location", "ssl.certificate.location"),
            ("ssl_key_location", "ssl.key.location"),
        ):
            if getattr(self, name):
                conf[key] = getattr(self, name)
        if self.ssl_key_password:
            conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        conf.update(self.extra_config)
        return conf


def producer_defaults() -> dict[str, Any]:
    """Settings every producer of the project uses.

    ``murmur2_random`` is librdkafka's Java-compatible partitioner: a keyed record lands on the
    partition a Java producer (and :func:`streams._matchkey.partition_for`) would pick, so run ids
    and match keys map to the same partition whoever writes them. librdkafka's own default
    (``consistent_random``, CRC32) would scatter a run's commands over partitions.
    """
    return {"partitioner": "murmur2_random", "acks": "all", "enable.idempotence": True}


def _coerce(var: str, raw: str, type_name: Any) -> Any:
    text = str(type_name)
    if "int" in text and "str" not in text:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(var, f"must be an integer, got {raw!r}") from None
    if "Path" in text:
        return Path(raw)
    return raw
