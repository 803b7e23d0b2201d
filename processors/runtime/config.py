"""Settings of the processor runtime (one frozen, validated object per worker).

Connection settings, the namespace and the state directory come from
:class:`streams.StreamsConfig`; this object holds what only the engine needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from processors.kafka.producer import DEFAULT_TRANSACTION_TIMEOUT_MS
from processors.runtime.checkpoint import BatchPolicy
from streams.errors import ConfigError

Guarantee = Literal["exactly_once", "at_least_once"]
StoreBackend = Literal["rocksdb", "memory"]


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """How processor loops run.

    Attributes:
        guarantee: ``exactly_once`` (Kafka transactions, EOS v2) or ``at_least_once`` (idempotent
            producer, offsets committed after the outputs are acknowledged; for comparison).
        batch: Adaptive batching bounds.
        punctuate_interval_ms: Tick of ``Processor.punctuate`` per active partition.
        transaction_timeout_ms: ``transaction.timeout.ms``: how long the broker keeps a crashed
            worker's transaction open (it blocks the partitions' LSO until aborted).
        revoke_deadline_ms: Time a revocation may spend committing the open transaction before it
            aborts it instead.
        restore_step_records: Changelog records applied per loop iteration while restoring.
        restore_log_interval_s: Seconds between restore progress lines.
        store_backend: ``rocksdb`` (durable) or ``memory`` (tests; restores in full on every start).
        static_membership: Join the group as a static member (``group.instance.id`` =
            ``<processor>.<instance id>``, kept in the state directory). A restarted worker then
            takes its partitions back without a rebalance and without waiting for the crashed
            member's session to expire. The price: a worker that stops for good keeps its
            partitions until ``session.timeout.ms`` passes.
        state_dir: Overrides ``StreamsConfig.state_dir`` (``--state-dir``).
        consumer_config: librdkafka settings for the processor consumers (win over defaults).
        producer_config: librdkafka settings for the producers (win over defaults).
    """

    guarantee: Guarantee = "exactly_once"
    batch: BatchPolicy = field(default_factory=BatchPolicy)
    punctuate_interval_ms: int = 50
    transaction_timeout_ms: int = DEFAULT_TRANSACTION_TIMEOUT_MS
    revoke_deadline_ms: int = 10_000
    restore_step_records: int = 5000
    restore_log_interval_s: float = 5.0
    store_backend: StoreBackend = "rocksdb"
    static_membership: bool = True
    state_dir: Path | None = None
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    producer_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.guarantee not in ("exactly_once", "at_least_once"):
            raise ConfigError("guarantee", f"must be exactly_once or at_least_once, got {self.guarantee!r}")
        if self.store_backend not in ("rocksdb", "memory"):
            raise ConfigError("store_backend", f"must be rocksdb or memory, got {self.store_backend!r}")
        for name, minimum in (
            ("punctuate_interval_ms", 1),
            ("transaction_timeout_ms", 1000),
            ("revoke_deadline_ms", 100),
            ("restore_step_records", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
        if self.restore_log_interval_s <= 0:
            raise ConfigError("restore_log_interval_s", "must be positive")
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "consumer_config", dict(self.consumer_config))
        object.__setattr__(self, "producer_config", dict(self.producer_config))

    @property
    def exactly_once(self) -> bool:
        """Whether loops use Kafka transactions."""
        return self.guarantee == "exactly_once"
