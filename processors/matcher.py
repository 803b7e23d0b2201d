r"""The matcher: owns every wait and ``cancel_on`` subscription, and decides each event/timeout race.

Responsibilities:

- apply each ``WaitCommand`` of its ``waits`` partitions (key: the match key, so all traffic of a
  key is in one partition, in log order):

  - ``RegisterWait``: scan the key's recent-event buffer for the earliest event that matches; if
    there is one, resolve at once, otherwise store the wait;
  - ``CorrelatedEvent``: buffer the event, then resolve every stored wait under its key that it
    matches (fan-out, each wait once) and cancel the runs of matching ``cancel_on`` subscriptions;
  - ``WaitExpired``: resolve a still-stored wait with ``None`` (the timeout won the race);
  - ``CancelWait``: forget a wait the run no longer needs;

- keep the buffer bounded: a retention measured on log-append time, and a cap per match key.

"Resolve" means ``WaitResolved`` to ``runs`` (key: run id) plus ``CancelTimer`` of the wait's timeout
to ``timers``; for a ``CANCEL`` subscription it means ``CancelRun`` plus ``CancelTimer`` of its expiry.
The first record to reach the matcher wins a race; the loser finds no wait and is a no-op.

Matching rules (an event *E* against a wait *W*, both under the same match key)::

    E.name == W.event_name
    (E.ts, E.id) >= (W.since_ts, W.since_event_id)     ts >= since_ts; at ts == since_ts and a
                                                       since_event_id, only ids sorting after it
    E.id not in W.exclude_event_ids                    events the run already consumed
    E.log_append_ms <= W.expires_at_ms                 deadline: appended after it, the event loses
    W.expression is None or it evaluates to true with ``async`` = E
    (buffer scan only) E.ts >= W.lookback_from_ts      how far back a new wait looks

Wait lifecycle (:class:`WaitState`, per run id + wait id within a match key)::

    ABSENT ──RegisterWait, no buffered match──▶ PENDING ──RegisterWait──▶ PENDING (replaced)
      │                                           ├──CorrelatedEvent matches──▶ RESOLVED
      │                                           ├──WaitExpired (same deadline)──▶ EXPIRED
      │                                           └──CancelWait──▶ REMOVED
      └──RegisterWait, a buffered event matches──▶ RESOLVED

RESOLVED, EXPIRED and REMOVED are not remembered (the key is deleted): a later ``WaitExpired`` or
``CancelWait`` for it finds nothing and does nothing.

Store layout (store ``waits``; ``be32``/``be64`` are unsigned big-endian, ``K`` = ``be32(len(match
key)) ∥ match key``, so a key prefix never runs into the next key even though match keys contain
``\x00``)::

    b"w" K be16(len(run id)) run id ∥ wait id  →  WaitRecord (Avro)     a stored wait
    b"b" K be64(ts) event id                  →  BufferedEvent (Avro)  buffer, in (ts, id) order
    b"x" be64(log_append_ms) K be64(ts) id    →  b""                   retention index
    b"c" K                                    →  be32(count)           buffered events of the key

A retention-index key is its buffer key with ``b"b"`` replaced by ``b"x" ∥ be64(log_append_ms)``, so
pruning walks ``x`` keys in log-append order and derives each buffer key without a read.

Retention is measured on log-append time relative to the ``CorrelatedEvent`` being processed (stream
time), never the wall clock: processing stays deterministic, and after an outage the backlog of
``RegisterWait`` records still finds the events it was registered to see. ``BufferedEvent.buffered_ms``
therefore holds the log-append time. ``docs/matching.md`` ("Matcher") has the per-wait footprint.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from processors.cancellation import cancel_timer_id
from processors.errors import StateError
from processors.records import (
    CODEC,
    WAIT_COMMAND,
    body,
    cancel_run,
    event_from_record,
    wait_resolved,
    wait_timer_id,
)
from processors.runtime.context import Context, StoreView
from processors.runtime.processor import AvroDecoder, Processor, Record
from processors.state.base import prefix_upper_bound
from processors.timers import cancel_timer_command
from streams._event import Event
from streams._expr import STORED_VARIABLES, Bindings, compile_expression, evaluate_bound
from streams.errors import ConfigError, ExpressionError, SerializationError

logger = logging.getLogger(__name__)

#: Processor name, input topic (logical) and store name.
MATCHER = "matcher"
WAITS = "waits"
WAIT_RECORD = "streams.WaitRecord"
BUFFERED_EVENT = "streams.BufferedEvent"

#: Key prefixes of the store (see the module docstring).
WAIT_PREFIX = b"w"
BUFFER_PREFIX = b"b"
RETENTION_PREFIX = b"x"
COUNT_PREFIX = b"c"

DEFAULT_BUFFER_RETENTION_MS = 5 * 60 * 1000
DEFAULT_MAX_BUFFERED_PER_KEY = 1000
DEFAULT_PRUNE_BATCH = 64

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_MAX_U64 = 2**64 - 1


class WaitState(enum.Enum):
    """Lifecycle of one wait (see the module docstring for the diagram)."""

    ABSENT = "absent"
    PENDING = "pending"
    RESOLVED = "resolved"
    EXPIRED = "expired"
    REMOVED = "removed"


_ALLOWED: Mapping[WaitState, frozenset[WaitState]] = {
    WaitState.ABSENT: frozenset({WaitState.PENDING, WaitState.RESOLVED}),
    WaitState.PENDING: frozenset(
        {WaitState.PENDING, WaitState.RESOLVED, WaitState.EXPIRED, WaitState.REMOVED}
    ),
    WaitState.RESOLVED: frozenset(),
    WaitState.EXPIRED: frozenset(),
    WaitState.REMOVED: frozenset(),
}


def raise_if_transition_invalid(current: WaitState, target: WaitState, run_id: str, wait_id: str) -> None:
    """Raises if a wait cannot go from ``current`` to ``target``.

    Raises:
        StateError: The transition is not in the lifecycle.
    """
    if target not in _ALLOWED[current]:
        raise StateError(
            f"wait {wait_id!r} of run {run_id} cannot go from {current.value} to {target.value}", store=WAITS
        )


@dataclass
class MatcherStats:
    """Counters of one processor instance (for metrics and tests).

    Attributes:
        stored: Waits and subscriptions stored (replacements included).
        resolved_on_register: Waits (``WAIT`` kind) resolved by a buffered event when registered.
        resolved_by_event: Waits (``WAIT`` kind) resolved by a ``CorrelatedEvent`` (fan-out counts
            each).
        runs_cancelled: ``cancel_on`` subscriptions that matched (``CancelRun`` produced).
        expired: Waits resolved with ``None`` (``WaitExpired`` won); subscriptions that expired.
        stale_expiries: ``WaitExpired`` records that found no wait, or one with another deadline.
        removed: Waits deleted by ``CancelWait``.
        buffered: Events added to the buffer.
        pruned_retention: Buffered events dropped because they were older than the retention.
        pruned_count: Buffered events dropped because their key had too many.
        expression_errors: Evaluations that failed at run time (counted as "no match").
    """

    stored: int = 0
    resolved_on_register: int = 0
    resolved_by_event: int = 0
    runs_cancelled: int = 0
    expired: int = 0
    stale_expiries: int = 0
    removed: int = 0
    buffered: int = 0
    pruned_retention: int = 0
    pruned_count: int = 0
    expression_errors: int = 0


# -- keys -------------------------------------------------------------------------------------------


def be64(value: int) -> bytes:
    """``value`` as 8 bytes, unsigned big-endian (byte order is numeric order); clamped to 0..2**64-1."""
    return _BE64.pack(min(max(value, 0), _MAX_U64))


def key_part(match_key: bytes) -> bytes:
    """``be32(len(match_key)) ∥ match_key``: the unambiguous form of a match key inside store keys."""
    return _BE32.pack(len(match_key)) + match_key


def wait_key(match_key: bytes, run_id: str, wait_id: str) -> bytes:
    """The store key of a wait."""
    run = run_id.encode()
    return WAIT_PREFIX + key_part(match_key) + _BE16.pack(len(run)) + run + wait_id.encode()


def buffer_key(match_key: bytes, ts: int, event_id: str) -> bytes:
    """The store key of a buffered event."""
    return BUFFER_PREFIX + key_part(match_key) + be64(ts) + event_id.encode()


def retention_key(log_append_ms: int, buffer_key_: bytes) -> bytes:
    """The retention-index key of a buffered event."""
    return RETENTION_PREFIX + be64(log_append_ms) + buffer_key_[1:]


def count_key(match_key: bytes) -> bytes:
    """The store key of a match key's buffered-event count."""
    return COUNT_PREFIX + key_part(match_key)


def _split_key_part(key: bytes, start: int) -> tuple[bytes, int]:
    """Reads ``K`` at ``key[start:]``; returns the match key and the offset after it."""
    (length,) = _BE32.unpack_from(key, start)
    end = start + 4 + length
    return key[start + 4 : end], end


# -- matching ---------------------------------------------------------------------------------------


def admits(wait: Mapping[str, Any], name: str, event_id: str, ts: int, log_append_ms: int) -> bool:
    """Whether an event passes a wait's rules other than the expression (see the module docstring).

    Args:
        wait: A ``WaitRecord``.
        name: The event's name.
        event_id: The event's id.
        ts: The event's ``ts``.
        log_append_ms: When the event was appended to ``events``.

    Returns:
        ``True`` when name, logical clock, tie-break, exclusions and deadline all allow it.
    """
    if name != wait["event_name"]:
        return False
    since = wait["since_ts"]
    if ts < since:
        return False
    since_id = wait["since_event_id"]
    if ts == since and since_id is not None and event_id <= since_id:
        return False
    if event_id in wait["exclude_event_ids"]:
        return False
    deadline = wait["expires_at_ms"]
    return deadline is None or log_append_ms <= deadline


class _Candidate:
    """One event being checked against waits; converts it for CEL once, on first need."""

    __slots__ = ("_bindings", "event", "log_append_ms")

    def __init__(self, event: Event, log_append_ms: int) -> None:
        self.event = event
        self.log_append_ms = log_append_ms
        self._bindings: Bindings | None = None

    def bindings(self) -> Bindings:
        if self._bindings is None:
            self._bindings = Bindings(async_event=self.event.to_dict())
        return self._bindings


class MatcherProcessor(Processor[dict[str, Any]]):
    """Matches correlated events to stored waits (see the module docstring).

    Args:
        buffer_retention_ms: How long (log-append time) a correlated event stays in its key's buffer
            for waits registered later; the worker passes ``max(default, largest lookback in code)``.
        max_buffered_per_key: Buffered events per match key at most; the oldest (by ``ts``) go first.
        prune_batch: Expired buffer entries removed per ``CorrelatedEvent`` at most (bounds the work
            of one record; above 1 the backlog shrinks faster than events add to it).

    Raises:
        ConfigError: A setting is out of range.
    """

    name = MATCHER
    input_topic = WAITS
    stores = (WAITS,)

    def __init__(
        self,
        *,
        buffer_retention_ms: int = DEFAULT_BUFFER_RETENTION_MS,
        max_buffered_per_key: int = DEFAULT_MAX_BUFFERED_PER_KEY,
        prune_batch: int = DEFAULT_PRUNE_BATCH,
    ) -> None:
        for setting, value, minimum in (
            ("matcher.buffer_retention_ms", buffer_retention_ms, 0),
            ("matcher.max_buffered_per_key", max_buffered_per_key, 0),
            ("matcher.prune_batch", prune_batch, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(setting, f"must be an integer >= {minimum}, got {value!r}")
        self.decoder = AvroDecoder(WAIT_COMMAND)
        self.buffer_retention_ms = buffer_retention_ms
        self.max_buffered_per_key = max_buffered_per_key
        self.prune_batch = prune_batch
        self.stats = MatcherStats()

    def __repr__(self) -> str:
        return (
            f"MatcherProcessor(buffer_retention_ms={self.buffer_retention_ms}, "
            f"max_buffered_per_key={self.max_buffered_per_key})"
        )

    # -- input ---------------------------------------------------------------------------------

    def process(self, record: Record[dict[str, Any]], ctx: Context) -> None:
        """Applies one ``WaitCommand``.

        Raises:
            SerializationError: An unknown command (a newer writer's); the record goes to the DLQ.
        """
        command = record.value
        match_key: bytes = command["match_key"]
        kind, fields = body(command)
        if kind == "CancelWait":
            self._apply_cancel_wait(match_key, fields, ctx)
        elif kind == "CorrelatedEvent":
            self._apply_correlated_event(match_key, fields, ctx)
        elif kind == "RegisterWait":
            self._apply_register_wait(match_key, fields, record, ctx)
        elif kind == "WaitExpired":
            self._apply_wait_expired(match_key, fields, ctx)
        else:
            raise SerializationError(f"unknown wait command {kind!r}", field="body")

    def _apply_cancel_wait(self, match_key: bytes, fields: dict[str, Any], ctx: Context) -> None:
        store = ctx.store(WAITS)
        run_id, wait_id = fields["run_id"], fields["wait_id"]
        key = wait_key(match_key, run_id, wait_id)
        if store.get(key) is None:
            return
        raise_if_transition_invalid(WaitState.PENDING, WaitState.REMOVED, run_id, wait_id)
        store.delete(key)
        self.stats.removed += 1

    def _apply_correlated_event(self, match_key: bytes, fields: dict[str, Any], ctx: Context) -> None:
        """Buffers the event, resolves every stored wait it matches, then prunes the buffer.

        Protocol:

        1. add the event to the key's buffer (a duplicate, same ``ts`` and id, is not added twice)
           and drop the key's oldest buffered events beyond ``max_buffered_per_key``;
        2. check every stored wait under the key, in key order (run id, wait id), and resolve each
           one the event matches, deleting it (each wait resolves at most once);
        3. drop up to ``prune_batch`` buffered events (any key) appended more than
           ``buffer_retention_ms`` before this one.
        """
        store = ctx.store(WAITS)
        record_event: dict[str, Any] = fields["event"]
        log_append_ms: int = fields["log_append_ms"]
        candidate = _Candidate(event_from_record(record_event), log_append_ms)
        # Step 1
        self._buffer(store, match_key, record_event, candidate)
        # Step 2
        prefix = WAIT_PREFIX + key_part(match_key)
        # The scan reads the store as it was when the scan started; the deletes below do not disturb it.
        for key, value in store.iter_prefix(prefix):
            wait = CODEC.decode(WAIT_RECORD, value)
            if self._matches(wait, candidate):
                raise_if_transition_invalid(
                    WaitState.PENDING, WaitState.RESOLVED, wait["run_id"], wait["wait_id"]
                )
                store.delete(key)
                self._resolve(wait, candidate.event, ctx, on_register=False)
        # Step 3
        self._prune(store, log_append_ms - self.buffer_retention_ms)

    def _apply_register_wait(
        self, match_key: bytes, fields: dict[str, Any], record: Record[dict[str, Any]], ctx: Context
    ) -> None:
        store = ctx.store(WAITS)
        run_id, wait_id = fields["run_id"], fields["wait_id"]
        key = wait_key(match_key, run_id, wait_id)
        current = WaitState.ABSENT if store.get(key) is None else WaitState.PENDING
        registered_ms = record.timestamp_ms if record.timestamp_ms is not None else ctx.now()
        wait = {**fields, "match_key": match_key, "registered_ms": registered_ms}
        candidate = self._scan_buffer(store, match_key, wait)
        if candidate is not None:
            raise_if_transition_invalid(current, WaitState.RESOLVED, run_id, wait_id)
            if current is WaitState.PENDING:
                store.delete(key)
            self._resolve(wait, candidate.event, ctx, on_register=True)
            return
        raise_if_transition_invalid(current, WaitState.PENDING, run_id, wait_id)
        store.put(key, CODEC.encode(WAIT_RECORD, wait))
        self.stats.stored += 1

    def _apply_wait_expired(self, match_key: bytes, fields: dict[str, Any], ctx: Context) -> None:
        store = ctx.store(WAITS)
        run_id, wait_id = fields["run_id"], fields["wait_id"]
        key = wait_key(match_key, run_id, wait_id)
        value = store.get(key)
        if value is None:
            self.stats.stale_expiries += 1  # an event won the race, or the run stopped waiting
            return
        wait = CODEC.decode(WAIT_RECORD, value)
        if wait["expires_at_ms"] != fields["expires_at_ms"]:
            # A timer of an earlier registration with another deadline; the current one has its own.
            logger.debug(
                "ignoring WaitExpired of wait %s for deadline %s; the wait expires at %s",
                wait_id,
                fields["expires_at_ms"],
                wait["expires_at_ms"],
                extra={"run_id": run_id, "function_id": wait["function_id"]},
            )
            self.stats.stale_expiries += 1
            return
        raise_if_transition_invalid(WaitState.PENDING, WaitState.EXPIRED, run_id, wait_id)
        store.delete(key)
        self.stats.expired += 1
        if wait["kind"] == "WAIT":
            ctx.produce(
                "runs",
                run_id,
                wait_resolved(run_id, wait["function_id"], wait["step_id"], wait_id, None, wait["index"]),
            )

    # -- matching ------------------------------------------------------------------------------

    def _scan_buffer(self, store: StoreView, match_key: bytes, wait: Mapping[str, Any]) -> _Candidate | None:
        """The earliest buffered event, by ``(ts, id)``, that matches a new wait; ``None`` if none."""
        prefix = BUFFER_PREFIX + key_part(match_key)
        lower = prefix + be64(max(wait["since_ts"], wait["lookback_from_ts"]))
        id_at = len(prefix) + 8
        excluded = wait["exclude_event_ids"]
        for key, value in store.iter_range(lower, prefix_upper_bound(prefix)):
            event_id = key[id_at:].decode()
            if event_id in excluded:
                continue  # cheap pre-check from the key, before decoding
            buffered = CODEC.decode(BUFFERED_EVENT, value)
            candidate = _Candidate(event_from_record(buffered["event"]), buffered["log_append_ms"])
            if self._matches(wait, candidate):
                return candidate
        return None

    def _matches(self, wait: Mapping[str, Any], candidate: _Candidate) -> bool:
        event = candidate.event
        if not admits(wait, event.name, event.id, event.ts, candidate.log_append_ms):
            return False
        source = wait["expression"]
        if source is None:
            return True
        try:
            compiled = compile_expression(source, variables=STORED_VARIABLES)
        except ExpressionError as exc:
            # The executor compiled it before registering, so only a foreign writer gets here.
            logger.warning(
                "wait %s has an expression that does not compile; it never matches: %s",
                wait["wait_id"],
                exc,
                extra={"run_id": wait["run_id"], "function_id": wait["function_id"]},
            )
            self.stats.expression_errors += 1
            return False
        outcome = evaluate_bound(compiled, candidate.bindings())
        if outcome.error is not None:
            self.stats.expression_errors += 1
            logger.debug(
                "event %s does not match wait %s: %s",
                event.id,
                wait["wait_id"],
                outcome.error,
                extra={"run_id": wait["run_id"], "function_id": wait["function_id"]},
            )
        return outcome.matched

    def _resolve(self, wait: Mapping[str, Any], event: Event, ctx: Context, *, on_register: bool) -> None:
        """Produces the outputs of a wait an event won: resume (or cancel) the run, drop its timer."""
        run_id: str = wait["run_id"]
        wait_id: str = wait["wait_id"]
        if wait["kind"] == "CANCEL":
            reason = f"cancelled by {event.name} {event.id}"
            ctx.produce("runs", run_id, cancel_run(run_id, wait["function_id"], reason, event.id))
            ctx.produce("timers", run_id, cancel_timer_command(cancel_timer_id(run_id, wait_id)))
            self.stats.runs_cancelled += 1
            return
        if on_register:
            self.stats.resolved_on_register += 1
        else:
            self.stats.resolved_by_event += 1
        resolved = wait_resolved(run_id, wait["function_id"], wait["step_id"], wait_id, event, wait["index"])
        ctx.produce("runs", run_id, resolved)
        ctx.produce("timers", run_id, cancel_timer_command(wait_timer_id(run_id, wait_id)))

    # -- buffer --------------------------------------------------------------------------------

    def _buffer(
        self, store: StoreView, match_key: bytes, record_event: dict[str, Any], candidate: _Candidate
    ) -> None:
        if self.max_buffered_per_key == 0:
            return
        event = candidate.event
        key = buffer_key(match_key, event.ts, event.id)
        if store.get(key) is not None:
            return  # the same event again (a replay): buffered already
        value = {
            "match_key": match_key,
            "event": record_event,
            "log_append_ms": candidate.log_append_ms,
            "buffered_ms": candidate.log_append_ms,
        }
        store.put(key, CODEC.encode(BUFFERED_EVENT, value))
        store.put(retention_key(candidate.log_append_ms, key), b"")
        self.stats.buffered += 1
        ckey = count_key(match_key)
        raw = store.get(ckey)
        count = 1 + (0 if raw is None else _BE32.unpack(raw)[0])
        excess = count - self.max_buffered_per_key
        if excess > 0:
            prefix = BUFFER_PREFIX + key_part(match_key)
            for old_key, old_value in list(islice(store.iter_prefix(prefix), excess)):
                old = CODEC.decode(BUFFERED_EVENT, old_value)
                store.delete(old_key)
                store.delete(retention_key(old["log_append_ms"], old_key))
            count -= excess
            self.stats.pruned_count += excess
        store.put(ckey, _BE32.pack(count))

    def _prune(self, store: StoreView, cutoff_ms: int) -> None:
        """Drops up to ``prune_batch`` buffered events appended before ``cutoff_ms``."""
        if cutoff_ms <= 0:
            return
        expired = list(
            islice(store.iter_range(RETENTION_PREFIX, RETENTION_PREFIX + be64(cutoff_ms)), self.prune_batch)
        )
        if not expired:
            return
        dropped: dict[bytes, int] = {}
        for xkey, _ in expired:
            store.delete(xkey)
            store.delete(BUFFER_PREFIX + xkey[9:])
            match_key, _ = _split_key_part(xkey, 9)
            dropped[match_key] = dropped.get(match_key, 0) + 1
        for match_key, n in dropped.items():
            ckey = count_key(match_key)
            raw = store.get(ckey)
            left = (0 if raw is None else _BE32.unpack(raw)[0]) - n
            if left > 0:
                store.put(ckey, _BE32.pack(left))
            else:
                store.delete(ckey)
        self.stats.pruned_retention += len(expired)
