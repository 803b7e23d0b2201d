"""The deadline gate: fire a wait's timeout only once the router has routed past its deadline.

Responsibilities:

- :class:`DeadlineGate`: what the timers processor asks, during a tick, before it fires a timer
  scheduled with ``after_events_routed`` (wait and ``cancel_on`` deadlines);
- :class:`RouterProgressGate`: answers from the router consumer group's committed offsets on the
  ``events`` topic compared with ``offsets_for_times(deadline)``, with at most one broker check per
  tick, never blocking the tick for longer than a short wait;
- :class:`AlwaysPastGate`: every deadline is past (unit tests, or deployments without a router).

Why: event time decides, not processing order. ``events`` uses ``LogAppendTime``, so an event
appended before a wait's deadline has a timestamp below it. The router forwards correlated events to
``waits`` in ``events`` order, and commits its input offsets in the same transaction. Once its
committed offset on every ``events`` partition is at or beyond ``offsets_for_times(deadline)`` (the
first record appended at or after the deadline), every event that beat the deadline is already in
``waits``, ahead of the ``WaitExpired`` the timer is about to produce, so the matcher sees the event
first and the timeout loses.

When a partition has no record at or after the deadline (``offsets_for_times`` finds none), later
appends will still get timestamps after the check's wall time, so the partition is past the
deadline when the router has consumed up to the end (the high watermark) and the deadline is at
least ``grace_ms`` before the check's wall time (the grace absorbs clock skew between this process
and the broker, and replication lag between the log end and the high watermark).

A router group with no committed offset on a partition is treated as being at the partition's log
start: a partition without records is past every deadline, one with records is past only deadlines
that precede all of its retained records (the same rule as for committed offsets, so a fresh
deployment with an empty ``events`` topic does not hold every timeout back until the first event).

Serving many deadlines with one check: "past" is monotone in the deadline (``offsets_for_times`` is
non-decreasing in its timestamp) and in time (committed offsets only grow), so the gate keeps the
largest deadline known to be past and answers every deadline at or below it without a broker call,
across ticks. On a miss it starts one check: one concurrent round of admin requests (the group's
committed offsets, the log start and end offsets, and ``offsets_for_times`` at up to ``max_probes``
timestamps spread between the asked deadline and the caller's ``horizon_ms``, the largest deadline
due this tick). The largest probe that passes becomes the known-past deadline, so one round serves
every due deadline when the router keeps up, and the smallest one when it lags (which is the only
one that could pass anyway). If all partitions are at their end, the known-past deadline jumps to
the check's wall time minus the grace.

Check lifecycle::

    IDLE ──past() misses, interval elapsed──▶ IN_FLIGHT ──all answers in──▶ IDLE
                                                 └──────error or timeout────▶ IDLE (nothing learnt)
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec

from streams._config import StreamsConfig
from streams.errors import ConfigError

logger = logging.getLogger(__name__)

Clock = Callable[[], int]

_EARLIEST = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
_LATEST = OffsetSpec.latest()  # type: ignore[no-untyped-call]


class DeadlineGate(Protocol):
    """Decides whether a deadline is past in event time (see the module docstring)."""

    def past(self, deadline_ms: int, *, horizon_ms: int | None = None) -> bool:
        """Whether every event appended before ``deadline_ms`` has been routed.

        The timers processor asks in ascending deadline order within a tick and stops asking (for
        gated timers) at the first ``False``: later deadlines cannot pass when an earlier one fails.

        Args:
            deadline_ms: The deadline, ms since the epoch (log-append time).
            horizon_ms: The largest deadline the caller may ask about in this tick; a hint that
                lets one broker check answer all of them.

        Returns:
            ``True`` when the deadline is past; ``False`` when it is not, or not known yet.
        """
        ...


class AlwaysPastGate:
    """A gate under which every deadline is past: gated timers fire like plain ones."""

    def past(self, deadline_ms: int, *, horizon_ms: int | None = None) -> bool:
        """Returns ``True``."""
        return True

    def __repr__(self) -> str:
        return "AlwaysPastGate()"


class CheckState(enum.Enum):
    """Lifecycle of one broker check of :class:`RouterProgressGate` (module docstring diagram)."""

    IDLE = "idle"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """What one check learnt about one ``events`` partition.

    Attributes:
        committed: The router group's committed offset, ``None`` when it has none.
        start: The log start offset (earliest retained record).
        end: The high watermark.
    """

    committed: int | None
    start: int
    end: int

    @property
    def routed_up_to(self) -> int:
        """The first offset the router has not routed.

        No committed offset means nothing was routed; an offset below the log start means the
        records in between were deleted by retention and will never be routed, so they cannot
        matter for a deadline.
        """
        if self.committed is None:
            return self.start
        return max(self.committed, self.start)

    @property
    def at_end(self) -> bool:
        """Whether the router has routed every record up to the high watermark."""
        return self.routed_up_to >= self.end


def passed_deadline(
    partitions: Mapping[int, PartitionOffsets],
    probes: Mapping[int, Mapping[int, int]],
    *,
    checked_at_ms: int,
    grace_ms: int,
) -> int | None:
    """The largest deadline one check proves past, or ``None`` when it proves none.

    Args:
        partitions: Offsets per ``events`` partition.
        probes: ``offsets_for_times`` answers: probe timestamp → partition → first offset with a
            timestamp at or after the probe, ``-1`` when there is none below the high watermark.
        checked_at_ms: Wall-clock time taken before any request of the check was sent.
        grace_ms: Clock-skew allowance for deadlines after the last appended record.

    Returns:
        The largest probe such that it and every smaller probe pass on every partition; or
        ``checked_at_ms - grace_ms`` when that is larger and every partition is at its end.
    """
    if not partitions:
        return None
    settled = checked_at_ms - grace_ms
    best: int | None = None
    for probe in sorted(probes):
        answers = probes[probe]
        if not all(
            _probe_passes(offsets, answers.get(number), probe, settled)
            for number, offsets in partitions.items()
        ):
            break
        best = probe
    if all(offsets.at_end for offsets in partitions.values()) and (best is None or settled > best):
        best = settled
    return best


def _probe_passes(offsets: PartitionOffsets, first_at_or_after: int | None, probe: int, settled: int) -> bool:
    if first_at_or_after is None:
        return False
    if first_at_or_after >= 0:
        return offsets.routed_up_to >= first_at_or_after
    # No record at or after the probe yet: later appends get later append times, so the probe is
    # past once everything there is has been routed and the probe is safely behind the wall clock.
    return offsets.at_end and probe <= settled


def probe_points(deadline_ms: int, horizon_ms: int | None, max_probes: int) -> list[int]:
    """Timestamps to probe for one check: ``deadline_ms``, ``horizon_ms`` and evenly between.

    Args:
        deadline_ms: The smallest deadline not known to be past.
        horizon_ms: The largest deadline due this tick (``None``: only ``deadline_ms``).
        max_probes: How many timestamps at most (at least 1).

    Returns:
        Sorted distinct timestamps.
    """
    high = deadline_ms if horizon_ms is None else max(horizon_ms, deadline_ms)
    if high == deadline_ms or max_probes <= 1:
        return [deadline_ms]
    span = high - deadline_ms
    steps = max_probes - 1
    return sorted({deadline_ms + span * i // steps for i in range(max_probes)})


@dataclass
class _Check:
    started_ms: int
    partitions: list[int]
    futures: dict[str, Any]  # "group" → future; "start"/"end"/probe → {TopicPartition: future}
    probes: list[int]

    def all_futures(self) -> list[concurrent.futures.Future[Any]]:
        found: list[concurrent.futures.Future[Any]] = []
        for value in self.futures.values():
            if isinstance(value, dict):
                found.extend(value.values())
            else:
                found.append(value)
        return found


class RouterProgressGate:
    """A :class:`DeadlineGate` reading the router's progress on ``events`` from the broker.

    One gate serves every partition of a timers processor; its cache is shared by them, and so is
    its limit of one broker check per ``check_interval_ms``.

    Args:
        config: The app's config (connection, namespace).
        router_group: The router's consumer group; default ``<namespace>.router``.
        events_topic: Full name of the events topic; default ``<namespace>.events``.
        grace_ms: Clock-skew allowance for deadlines later than every appended record.
        check_interval_ms: At most one broker check starts per interval (the timers tick).
        wait_ms: How long ``past`` waits for a check it just started before answering ``False``
            (the answer is then picked up by a later call; the tick is never blocked for longer).
        max_probes: ``offsets_for_times`` timestamps per check.
        request_timeout_s: Timeout of each admin request.
        admin: An admin client to use (tests); default one built from ``config``.
        clock: Wall clock in ms (tests); default ``time.time``.

    Raises:
        ConfigError: A setting is out of range.
    """

    def __init__(
        self,
        config: StreamsConfig,
        *,
        router_group: str | None = None,
        events_topic: str | None = None,
        grace_ms: int = 1000,
        check_interval_ms: int = 50,
        wait_ms: int = 20,
        max_probes: int = 8,
        request_timeout_s: float = 10.0,
        admin: Any | None = None,
        clock: Clock | None = None,
    ) -> None:
        for name, value, minimum in (
            ("grace_ms", grace_ms, 0),
            ("check_interval_ms", check_interval_ms, 1),
            ("wait_ms", wait_ms, 0),
            ("max_probes", max_probes, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"deadline_gate.{name}", f"must be an integer >= {minimum}, got {value!r}")
        self.router_group = router_group or f"{config.namespace}.router"
        self.events_topic = events_topic or config.topic("events")
        self.grace_ms = grace_ms
        self.check_interval_ms = check_interval_ms
        self.wait_ms = wait_ms
        self.max_probes = max_probes
        self._request_timeout_s = request_timeout_s
        self._admin = admin if admin is not None else AdminClient(config.client_config())
        self._clock: Clock = clock if clock is not None else _wall_clock_ms
        self._partitions: list[int] | None = None
        self._past_ms: int | None = None
        self._state = CheckState.IDLE
        self._check: _Check | None = None
        self._last_start_ms: int | None = None
        #: Broker checks started (each one concurrent round of admin requests).
        self.checks = 0

    def __repr__(self) -> str:
        return (
            f"RouterProgressGate(router_group={self.router_group!r}, events_topic={self.events_topic!r}, "
            f"past_ms={self._past_ms})"
        )

    @property
    def known_past_ms(self) -> int | None:
        """The largest deadline known to be past, ``None`` before the first successful check."""
        return self._past_ms

    def past(self, deadline_ms: int, *, horizon_ms: int | None = None) -> bool:
        """Whether every event appended before ``deadline_ms`` has been routed (see the module docs).

        Protocol:

        1. a deadline at or below the known-past deadline passes, without a broker call;
        2. a finished check is folded into the known-past deadline;
        3. while a check is in flight, or one started less than ``check_interval_ms`` ago, the
           answer is ``False`` (retry next tick);
        4. otherwise one check starts, probing ``[deadline_ms, horizon_ms]``, and is waited for up to
           ``wait_ms``.
        """
        # Step 1
        if self._is_known_past(deadline_ms):
            return True
        # Step 2
        self._harvest(timeout_s=0.0)
        if self._is_known_past(deadline_ms):
            return True
        # Step 3
        now = self._clock()
        if self._state is CheckState.IN_FLIGHT or (
            self._last_start_ms is not None and now - self._last_start_ms < self.check_interval_ms
        ):
            return False
        # Step 4
        self._start(deadline_ms, horizon_ms, now)
        self._harvest(timeout_s=self.wait_ms / 1000)
        return self._is_known_past(deadline_ms)

    def _is_known_past(self, deadline_ms: int) -> bool:
        return self._past_ms is not None and deadline_ms <= self._past_ms

    def _start(self, deadline_ms: int, horizon_ms: int | None, now_ms: int) -> None:
        self._last_start_ms = now_ms
        partitions = self._events_partitions()
        if partitions is None:
            return
        probes = probe_points(deadline_ms, horizon_ms, self.max_probes)
        tps = [TopicPartition(self.events_topic, number) for number in partitions]
        timeout = self._request_timeout_s
        uncommitted = IsolationLevel.READ_UNCOMMITTED
        try:
            futures: dict[str, Any] = {
                "group": self._admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(self.router_group, tps)], request_timeout=timeout
                )[self.router_group],
                "start": self._admin.list_offsets({tp: _EARLIEST for tp in tps}, request_timeout=timeout),
                # The high watermark, not the last stable offset: records of an open transaction
                # appended before a deadline must be routed (so the transaction resolved) first.
                "end": self._admin.list_offsets(
                    {tp: _LATEST for tp in tps}, isolation_level=uncommitted, request_timeout=timeout
                ),
            }
            for probe in probes:
                futures[str(probe)] = self._admin.list_offsets(
                    {tp: OffsetSpec.for_timestamp(probe) for tp in tps},
                    isolation_level=uncommitted,
                    request_timeout=timeout,
                )
        except (KafkaException, ValueError, TypeError) as exc:
            logger.warning("deadline gate: cannot start a router progress check: %s", exc)
            return
        self._check = _Check(now_ms, partitions, futures, probes)
        self._state = CheckState.IN_FLIGHT
        self.checks += 1

    def _harvest(self, *, timeout_s: float) -> None:
        check = self._check
        if check is None:
            return
        pending = check.all_futures()
        _, not_done = concurrent.futures.wait(pending, timeout=timeout_s)
        if not_done:
            return
        self._check = None
        self._state = CheckState.IDLE
        try:
            partitions, probes = self._read(check)
        except Exception as exc:  # KafkaException from any future: nothing learnt from this check
            logger.warning(
                "deadline gate: router progress check failed: %s", exc, extra={"group": self.router_group}
            )
            return
        passed = passed_deadline(partitions, probes, checked_at_ms=check.started_ms, grace_ms=self.grace_ms)
        if passed is not None and (self._past_ms is None or passed > self._past_ms):
            self._past_ms = passed
        logger.debug(
            "deadline gate: check done",
            extra={"group": self.router_group, "probes": check.probes, "past_ms": self._past_ms},
        )

    def _read(self, check: _Check) -> tuple[dict[int, PartitionOffsets], dict[int, dict[int, int]]]:
        group = check.futures["group"].result()
        committed: dict[int, int | None] = {number: None for number in check.partitions}
        for tp in group.topic_partitions or ():
            if tp.topic == self.events_topic and tp.error is None and tp.offset >= 0:
                committed[tp.partition] = tp.offset
        starts = _offsets(check.futures["start"])
        ends = _offsets(check.futures["end"])
        partitions = {
            number: PartitionOffsets(committed[number], starts[number], ends[number])
            for number in check.partitions
        }
        probes = {probe: _offsets(check.futures[str(probe)]) for probe in check.probes}
        return partitions, probes

    def _events_partitions(self) -> list[int] | None:
        if self._partitions is not None:
            return self._partitions
        try:
            metadata = self._admin.list_topics(topic=self.events_topic, timeout=self._request_timeout_s)
        except KafkaException as exc:
            logger.warning("deadline gate: cannot read partitions of %s: %s", self.events_topic, exc)
            return None
        topic = metadata.topics.get(self.events_topic)
        if topic is None or topic.error is not None or not topic.partitions:
            logger.warning("deadline gate: topic %s does not exist", self.events_topic)
            return None
        self._partitions = sorted(topic.partitions)
        return self._partitions


def _offsets(futures: Mapping[TopicPartition, concurrent.futures.Future[Any]]) -> dict[int, int]:
    return {tp.partition: int(future.result().offset) for tp, future in futures.items()}


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000
