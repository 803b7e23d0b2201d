"""Typed wrapper over ``confluent_kafka.Consumer`` for processor loops and changelog restore.

Responsibilities:

- build consumers with the settings exactly-once processing relies on (``read_committed``, no
  auto commit, no auto offset store, cooperative-sticky assignment);
- turn error events in consumed batches into exceptions (fatal) or log lines (informational) and
  report partition EOF separately, so callers only ever see records;
- run rebalance callbacks with our typed signature and re-raise their failures after ``consume()``
  returns, never from inside librdkafka's callback;
- small typed helpers: pause/resume/seek/position, watermarks (the LSO for ``read_committed``),
  committed offsets and the group metadata EOS v2 sends with each transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaException, Message, TopicPartition
from confluent_kafka import Consumer as _ConfluentConsumer
from confluent_kafka import KafkaError as ConfluentKafkaError

from processors.kafka.errors import FatalKafkaError, describe, is_fatal, map_error
from streams.errors import KafkaError

logger = logging.getLogger(__name__)

RebalanceHandler = Callable[[list[TopicPartition]], None]

#: Settings every processor consumer needs for EOS v2 (the issue makes them binding).
PROCESSOR_CONSUMER_SETTINGS: Mapping[str, Any] = {
    "isolation.level": "read_committed",
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "partition.assignment.strategy": "cooperative-sticky",
    "auto.offset.reset": "earliest",
}


@dataclass
class ConsumeResult:
    """One ``consume()`` call's outcome.

    Attributes:
        records: Proper records, in the order librdkafka returned them.
        eof: Partitions that reached their end (only with ``enable.partition.eof``).
    """

    records: list[Message] = field(default_factory=list)
    eof: set[tuple[str, int]] = field(default_factory=set)


class Consumer:
    """A consumer whose errors and callbacks follow the package's conventions.

    Args:
        config: Shared librdkafka settings (``StreamsConfig.client_config()``).
        settings: Settings for this consumer (group id, isolation level, ...); win over ``config``.
    """

    def __init__(self, config: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
        conf: dict[str, Any] = dict(config)
        conf["error_cb"] = self._on_error
        conf.update(settings)
        self.group_id: str | None = conf.get("group.id")
        self._consumer = _ConfluentConsumer(conf)
        self._callback_error: BaseException | None = None
        self._fatal: KafkaError | None = None
        self._closed = False

    # -- subscription and callbacks ----------------------------------------------------------

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: RebalanceHandler,
        on_revoke: RebalanceHandler,
        on_lost: RebalanceHandler,
    ) -> None:
        """Subscribes with rebalance handlers that receive only the partition list."""
        self._consumer.subscribe(
            list(topics),
            on_assign=self._wrap(on_assign),
            on_revoke=self._wrap(on_revoke),
            on_lost=self._wrap(on_lost),
        )

    def _wrap(self, handler: RebalanceHandler) -> Callable[[Any, list[TopicPartition]], None]:
        def callback(_consumer: Any, partitions: list[TopicPartition]) -> None:
            try:
                handler(partitions)
            except BaseException as exc:
                if self._callback_error is None:
                    self._callback_error = exc

        return callback

    def _raise_pending(self) -> None:
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error
        if self._fatal is not None:
            raise self._fatal

    def _on_error(self, err: ConfluentKafkaError) -> None:
        if is_fatal(err):
            self._fatal = self._fatal or FatalKafkaError(
                f"consumer {self.group_id}: {describe(err)}", code=err.code()
            )
        else:
            logger.info("consumer %s: %s", self.group_id, describe(err), extra={"group_id": self.group_id})

    # -- consuming ---------------------------------------------------------------------------

    def consume(self, max_records: int, timeout_s: float) -> ConsumeResult:
        """Returns up to ``max_records`` records, waiting at most ``timeout_s`` for them.

        librdkafka waits the full timeout unless ``max_records`` arrive; call with
        ``timeout_s=0`` to take only what is already fetched.

        Raises:
            FatalKafkaError: The consumer is unusable.
            BaseException: Whatever a rebalance handler raised during the call.
        """
        try:
            messages = self._consumer.consume(max_records, timeout_s)
        except KafkaException as exc:
            raise map_error(exc, f"consume ({self.group_id})") from exc
        result = ConsumeResult()
        for message in messages:
            err = message.error()
            if err is None:
                result.records.append(message)
            elif err.code() == ConfluentKafkaError._PARTITION_EOF:
                topic, partition = message.topic(), message.partition()
                if topic is not None and partition is not None:
                    result.eof.add((topic, partition))
            elif is_fatal(err):
                raise map_error(err, f"consume ({self.group_id})")
            else:
                logger.warning(
                    "consumer %s: %s", self.group_id, describe(err), extra={"group_id": self.group_id}
                )
        self._raise_pending()
        return result

    # -- assignment and positions ------------------------------------------------------------

    def incremental_assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Adds partitions to the assignment (call inside ``on_assign`` to control it)."""
        self._consumer.incremental_assign(list(partitions))

    def incremental_unassign(self, partitions: Iterable[TopicPartition]) -> None:
        """Removes partitions from the assignment."""
        self._consumer.incremental_unassign(list(partitions))

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        """Replaces the whole assignment (restore consumers, which have no group)."""
        self._consumer.assign(list(partitions))

    def unassign(self) -> None:
        """Drops the whole assignment."""
        self._consumer.unassign()

    def assignment(self) -> list[TopicPartition]:
        """The current assignment."""
        return self._consumer.assignment()

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stops fetching the given partitions."""
        parts = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        if parts:
            self._consumer.pause(parts)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resumes fetching the given partitions."""
        parts = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        if parts:
            self._consumer.resume(parts)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Moves the fetch position of one assigned partition.

        Raises:
            KafkaError: The partition is not assigned or the seek failed.
        """
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            raise map_error(exc, f"seek {topic}[{partition}] to {offset}") from exc

    def position(self, topic: str, partition: int) -> int | None:
        """Next offset the application would read, or ``None`` when unknown."""
        [tp] = self._consumer.position([TopicPartition(topic, partition)])
        return tp.offset if tp.offset >= 0 else None

    def committed(
        self, partitions: Sequence[tuple[str, int]], timeout_s: float = 30.0
    ) -> dict[tuple[str, int], int | None]:
        """Committed offsets of the group (``None`` where nothing is committed).

        Raises:
            KafkaError: The coordinator could not answer.
        """
        try:
            tps = self._consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout_s)
        except KafkaException as exc:
            raise map_error(exc, "committed offsets") from exc
        return {(tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None) for tp in tps}

    def commit(self, offsets: Sequence[TopicPartition]) -> None:
        """Commits offsets synchronously (at-least-once mode only; EOS commits in the transaction).

        Raises:
            KafkaError: The commit failed.
        """
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=list(offsets), asynchronous=False)
        except KafkaException as exc:
            raise map_error(exc, "commit offsets") from exc

    def end_offset(self, topic: str, partition: int, timeout_s: float = 30.0) -> tuple[int, int]:
        """Low watermark and end offset, asked of the broker.

        For a ``read_committed`` consumer the end offset is the last stable offset (LSO): records of
        open transactions lie beyond it.

        Raises:
            KafkaError: The broker could not answer.
        """
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout_s, cached=False
            )
        except KafkaException as exc:
            raise map_error(exc, f"watermarks of {topic}[{partition}]") from exc
        return low, high

    def group_metadata(self) -> Any:
        """The consumer group metadata EOS v2 sends with the transaction's offsets."""
        return self._consumer.consumer_group_metadata()

    def member_id(self) -> str:
        """The group member id (empty before the first join)."""
        return self._consumer.memberid() or ""

    def close(self) -> None:
        """Leaves the group (running revoke callbacks) and releases the client."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning("closing consumer %s: %s", self.group_id, describe(exc))


def invalid_offset() -> int:
    """``OFFSET_INVALID``: "use the committed offset" in an assignment."""
    return int(OFFSET_INVALID)
