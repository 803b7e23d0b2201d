"""The timers processor: durable timers that produce a record to a topic when they are due.

Responsibilities:

- keep pending timers in the ``timers`` store, ordered by due time, with a reverse index so that
  re-scheduling and cancelling a timer by id are O(1) store operations;
- apply ``TimerCommand`` records from the ``timers`` topic (key: run id): ``ScheduleTimer`` stores
  or replaces a timer, ``CancelTimer`` deletes it (a no-op when it is gone);
- on every wall-clock tick (``punctuate``, default every 50 ms) fire the due timers of the
  partition in due-time order: produce the timer's payload to its target topic under its target
  key and delete the timer, in the runtime's open Kafka transaction, so a timer fires exactly once;
- bound the work of one tick (``max_fires_per_tick``); after downtime the overdue timers fire over
  as many ticks as needed, oldest first;
- hold back timers scheduled with ``after_events_routed`` (wait and ``cancel_on`` deadlines) until
  the :class:`~processors.deadline.DeadlineGate` says the router has routed every ``events``
  partition past the deadline; plain timers never consult the gate;
- :func:`schedule_timer_command` and :func:`cancel_timer_command` build the encoded commands the
  executor and matcher produce to ``timers``.

Store layout (keys are bytes, ``be64`` is an unsigned 64-bit big-endian integer, so byte order is
due-time order)::

    b"t" + be64(fire_at_ms) + timer_id  →  TimerRecord (Avro)       plain timers
    b"g" + be64(fire_at_ms) + timer_id  →  TimerRecord (Avro)       gated (after_events_routed)
    b"r" + timer_id                     →  be64(fire_at_ms) + b"t" | b"g"   reverse index

Gated timers live under their own prefix so that, while the router lags, the blocked deadlines are
skipped with one comparison instead of being scanned (and re-scanned every tick) in front of plain
timers that are due.

Timer lifecycle (per timer id within a partition)::

    ABSENT ──ScheduleTimer──▶ PENDING ──ScheduleTimer──▶ PENDING   (replaced: new due time/payload)
                                 │
                                 ├──CancelTimer──────────────▶ CANCELLED (deleted)
                                 └──due (+ gate passes), tick──▶ FIRED    (produced and deleted)

A cancelled or fired timer is not remembered: scheduling the same id again starts a new timer.
"""

from __future__ import annotations

import enum
import functools
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from processors.deadline import DeadlineGate, RouterProgressGate
from processors.errors import StateError
from processors.runtime.processor import AvroDecoder, Processor, Record
from streams.errors import ConfigError, SerializationError

if TYPE_CHECKING:
    from processors.runtime.context import Context, StoreView
    from streams._codec import RecordCodec
    from streams._config import StreamsConfig

logger = logging.getLogger(__name__)

#: Processor name, input topic (logical) and store name.
TIMERS = "timers"
COMMAND_SCHEMA = "streams.TimerCommand"
RECORD_SCHEMA = "streams.TimerRecord"
SCHEDULE = "streams.ScheduleTimer"
CANCEL = "streams.CancelTimer"

#: Key prefixes of the store (see the module docstring).
PLAIN_PREFIX = b"t"
GATED_PREFIX = b"g"
REVERSE_PREFIX = b"r"

_BE64 = struct.Struct(">Q")
_MAX_FIRE_MS = 2**63 - 1


class TimerState(enum.Enum):
    """Lifecycle of one timer (see the module docstring for the diagram)."""

    ABSENT = "absent"
    PENDING = "pending"
    CANCELLED = "cancelled"
    FIRED = "fired"


_ALLOWED: Mapping[TimerState, frozenset[TimerState]] = {
    TimerState.ABSENT: frozenset({TimerState.PENDING}),
    TimerState.PENDING: frozenset({TimerState.PENDING, TimerState.CANCELLED, TimerState.FIRED}),
    TimerState.CANCELLED: frozenset(),
    TimerState.FIRED: frozenset(),
}


def raise_if_transition_invalid(current: TimerState, target: TimerState, timer_id: str) -> None:
    """Raises if a timer cannot go from ``current`` to ``target``.

    Raises:
        StateError: The transition is not in the lifecycle.
    """
    if target not in _ALLOWED[current]:
        raise StateError(f"timer {timer_id!r} cannot go from {current.value} to {target.value}", store=TIMERS)


@dataclass(frozen=True, kw_only=True)
class TimersConfig:
    """Settings of the timers processor.

    The tick itself is the runtime's ``punctuate_interval_ms`` (default 50 ms, i.e. a resolution
    of about 50-100 ms).

    Attributes:
        max_fires_per_tick: Timers fired per partition per tick at most; bounds the transaction
            size and the loop's pause after downtime (catch-up proceeds over several ticks).
    """

    max_fires_per_tick: int = 2000

    def __post_init__(self) -> None:
        value = self.max_fires_per_tick
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("timers.max_fires_per_tick", f"must be an integer >= 1, got {value!r}")


@dataclass
class TimerStats:
    """Counters of one processor instance (for metrics and benchmarks).

    Counted when a hook runs, so work of a transaction that later aborts (and is redone) is
    counted again: the counters are approximate, the store and the outputs are exact.

    Attributes:
        scheduled: ``ScheduleTimer`` commands applied (replacements included).
        cancelled: ``CancelTimer`` commands that deleted a pending timer.
        fired: Timers fired.
        gate_blocked_ticks: Ticks in which a due gated timer was held back by the gate.
        max_lateness_ms: Largest ``tick time - due time`` of a fired timer.
    """

    scheduled: int = 0
    cancelled: int = 0
    fired: int = 0
    gate_blocked_ticks: int = 0
    max_lateness_ms: int = 0


def be64(value: int) -> bytes:
    """``value`` as 8 bytes, unsigned big-endian (so byte order is numeric order)."""
    return _BE64.pack(value)


def timer_key(fire_at_ms: int, timer_id: str, *, gated: bool = False) -> bytes:
    """The store key of a pending timer."""
    return (GATED_PREFIX if gated else PLAIN_PREFIX) + be64(fire_at_ms) + timer_id.encode()


def reverse_key(timer_id: str) -> bytes:
    """The store key of a timer's reverse-index entry."""
    return REVERSE_PREFIX + timer_id.encode()


@functools.cache
def _codec() -> RecordCodec:
    from streams._codec import RecordCodec

    return RecordCodec()


def schedule_timer_command(
    timer_id: str,
    fire_at_ms: int,
    target_topic: str,
    target_key: bytes | str,
    payload: bytes,
    after_events_routed: bool = False,
) -> bytes:
    """Encodes a ``ScheduleTimer`` command; produce it to ``timers`` keyed by the run id.

    Args:
        timer_id: Unique, deterministic per run and step: re-sending it replaces the timer.
        fire_at_ms: Due time, ms since the epoch (wall clock; the log-append time for gated timers).
        target_topic: Logical topic to produce ``payload`` to (``"runs"``, ``"waits"``).
        target_key: Key of the produced record (``str`` is encoded as UTF-8).
        payload: The value of the produced record.
        after_events_routed: Fire only once the router has routed every ``events`` partition past
            ``fire_at_ms`` (wait and ``cancel_on`` deadlines).

    Returns:
        The encoded ``TimerCommand``.

    Raises:
        SerializationError: A value does not fit the schema, or ``fire_at_ms`` is negative.
    """
    _raise_for_invalid_schedule(timer_id, fire_at_ms, target_topic)
    key = target_key.encode() if isinstance(target_key, str) else target_key
    body = {
        "fire_at_ms": fire_at_ms,
        "target_topic": target_topic,
        "target_key": key,
        "payload": payload,
        "after_events_routed": after_events_routed,
    }
    return _codec().encode(COMMAND_SCHEMA, {"timer_id": timer_id, "body": (SCHEDULE, body)})


def cancel_timer_command(timer_id: str) -> bytes:
    """Encodes a ``CancelTimer`` command; produce it to ``timers`` keyed by the run id.

    Raises:
        SerializationError: ``timer_id`` is empty.
    """
    if not timer_id:
        raise SerializationError("must not be empty", field="timer_id")
    return _codec().encode(COMMAND_SCHEMA, {"timer_id": timer_id, "body": (CANCEL, {})})


def _raise_for_invalid_schedule(timer_id: str, fire_at_ms: int, target_topic: str) -> None:
    if not timer_id:
        raise SerializationError("must not be empty", field="timer_id")
    if not 0 <= fire_at_ms <= _MAX_FIRE_MS:
        raise SerializationError(
            f"must be from 0 to 2**63-1 ms since the epoch, got {fire_at_ms}", field="fire_at_ms"
        )
    if not target_topic:
        raise SerializationError("must name a topic", field="target_topic")


@dataclass(frozen=True, slots=True)
class _Due:
    key: bytes
    value: bytes

    @property
    def fire_at_ms(self) -> int:
        return int(_BE64.unpack_from(self.key, 1)[0])

    @property
    def order(self) -> bytes:
        """``be64(fire_at_ms) + timer_id``: the due order across both prefixes."""
        return self.key[1:]


class TimersProcessor(Processor[dict[str, Any]]):
    """Fires durable timers (see the module docstring).

    Args:
        gate: Decides when gated (``after_events_routed``) timers may fire; one gate serves every
            partition. Use :meth:`for_app` for the router-progress gate of an app.
        config: Settings; default :class:`TimersConfig`.
    """

    name = TIMERS
    input_topic = TIMERS
    stores = (TIMERS,)

    def __init__(self, gate: DeadlineGate, config: TimersConfig | None = None) -> None:
        self.decoder = AvroDecoder(COMMAND_SCHEMA)
        self.gate = gate
        self.config = config if config is not None else TimersConfig()
        self.stats = TimerStats()

    @classmethod
    def for_app(cls, streams_config: StreamsConfig, config: TimersConfig | None = None) -> TimersProcessor:
        """The processor of an app, gated by its router's progress on ``events``."""
        return cls(RouterProgressGate(streams_config), config)

    def __repr__(self) -> str:
        return f"TimersProcessor(gate={self.gate!r}, config={self.config!r})"

    # -- input ---------------------------------------------------------------------------------

    def process(self, record: Record[dict[str, Any]], ctx: Context) -> None:
        """Applies one ``TimerCommand``.

        Raises:
            SerializationError: The record has no key (run id), or the command is invalid; the
                record goes to the DLQ.
        """
        if record.key is None:
            raise SerializationError("a timers record needs the run id as its key")
        try:
            run_id = record.key.decode()
        except UnicodeDecodeError:
            raise SerializationError("the key (run id) is not UTF-8") from None
        command = record.value
        kind, body = command["body"]
        timer_id: str = command["timer_id"]
        if kind == CANCEL:
            self._apply_cancel_timer(timer_id, ctx)
        elif kind == SCHEDULE:
            self._apply_schedule_timer(run_id, timer_id, body, ctx)
        else:  # a newer writer's command: not ours to guess
            raise SerializationError(f"unknown timer command {kind!r}", field="body")

    def _apply_cancel_timer(self, timer_id: str, ctx: Context) -> None:
        store = ctx.store(TIMERS)
        current = self._pending_key(store, timer_id)
        if current is None:
            return
        raise_if_transition_invalid(TimerState.PENDING, TimerState.CANCELLED, timer_id)
        store.delete(current)
        store.delete(reverse_key(timer_id))
        self.stats.cancelled += 1

    def _apply_schedule_timer(self, run_id: str, timer_id: str, body: dict[str, Any], ctx: Context) -> None:
        fire_at_ms: int = body["fire_at_ms"]
        _raise_for_invalid_schedule(timer_id, fire_at_ms, body["target_topic"])
        gated = bool(body["after_events_routed"])
        store = ctx.store(TIMERS)
        key = timer_key(fire_at_ms, timer_id, gated=gated)
        current = self._pending_key(store, timer_id)
        raise_if_transition_invalid(
            TimerState.ABSENT if current is None else TimerState.PENDING, TimerState.PENDING, timer_id
        )
        if current is not None and current != key:
            store.delete(current)
        value = _codec().encode(RECORD_SCHEMA, {"timer_id": timer_id, "run_id": run_id, **body})
        store.put(key, value)
        store.put(reverse_key(timer_id), key[1:9] + key[:1])
        self.stats.scheduled += 1

    @staticmethod
    def _pending_key(store: StoreView, timer_id: str) -> bytes | None:
        """The primary key of the pending timer ``timer_id``, from the reverse index."""
        entry = store.get(reverse_key(timer_id))
        if entry is None:
            return None
        if len(entry) != 9 or entry[8:] not in (PLAIN_PREFIX, GATED_PREFIX):
            raise StateError(f"corrupt reverse index entry for timer {timer_id!r}: {entry!r}", store=TIMERS)
        return entry[8:] + entry[:8] + timer_id.encode()

    # -- ticks ---------------------------------------------------------------------------------

    def punctuate(self, now_ms: int, ctx: Context) -> None:
        """Fires the partition's due timers, oldest first, at most ``max_fires_per_tick``.

        Protocol:

        1. read up to the budget of due plain timers (``fire_at_ms <= now_ms``), in due order;
        2. read up to the budget of due gated timers, in due order;
        3. merge both in due order; a gated timer asks the gate (with the largest gated deadline
           read as the horizon), and the first ``False`` closes the gate for the rest of the tick
           (later deadlines cannot pass), while plain timers keep firing;
        4. fire each timer: produce its payload to its target topic and key, delete it and its
           reverse-index entry. All of it commits with the runtime's transaction, or none of it.
        """
        store = ctx.store(TIMERS)
        budget = self.config.max_fires_per_tick
        if now_ms < 0:
            return
        upper = be64(min(now_ms, _MAX_FIRE_MS - 1) + 1)
        # Step 1
        plain = [_Due(k, v) for k, v in islice(store.iter_range(PLAIN_PREFIX, PLAIN_PREFIX + upper), budget)]
        # Step 2
        gated = [_Due(k, v) for k, v in islice(store.iter_range(GATED_PREFIX, GATED_PREFIX + upper), budget)]
        if not plain and not gated:
            return
        # Step 3
        horizon = gated[-1].fire_at_ms if gated else None
        gate_open = True
        fired = 0
        i = j = 0
        while fired < budget:
            take_gated = gate_open and j < len(gated) and (i >= len(plain) or gated[j].order < plain[i].order)
            if take_gated:
                due = gated[j]
                if not self.gate.past(due.fire_at_ms, horizon_ms=horizon):
                    gate_open = False
                    self.stats.gate_blocked_ticks += 1
                    continue
                j += 1
            elif i < len(plain):
                due = plain[i]
                i += 1
            else:
                break
            # Step 4
            self._fire(due, now_ms, store, ctx)
            fired += 1

    def _fire(self, due: _Due, now_ms: int, store: StoreView, ctx: Context) -> None:
        timer_id = due.key[9:].decode()
        try:
            timer = _codec().decode(RECORD_SCHEMA, due.value)
        except SerializationError as exc:
            # Written by this processor, so only a foreign or corrupt write gets here; dropping it
            # keeps one bad entry from stopping every later timer of the partition.
            logger.error(
                "dropping undecodable timer %r: %s", timer_id, exc, extra={"partition": ctx.partition}
            )
        else:
            raise_if_transition_invalid(TimerState.PENDING, TimerState.FIRED, timer_id)
            ctx.produce(timer["target_topic"], timer["target_key"], timer["payload"])
            lateness = now_ms - due.fire_at_ms
            stats = self.stats
            stats.fired += 1
            stats.max_lateness_ms = max(stats.max_lateness_ms, lateness)
        store.delete(due.key)
        rkey = reverse_key(timer_id)
        if store.get(rkey) == due.key[1:9] + due.key[:1]:
            store.delete(rkey)
