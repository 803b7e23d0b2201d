"""The router: turns each event on ``events`` into run starts and correlated events for the matcher.

Responsibilities:

- start a run of every function the event triggers (name, plus the CEL ``if_`` filter over
  ``event``): ``StartRun`` to ``runs`` keyed by the deterministic run id, so a redelivered or replayed
  event never starts a second run while the first one's header lives (24 h after it ends);
- register the new run's ``cancel_on`` subscriptions with the matcher (and their expiry timers) in
  the same transaction as ``StartRun``, so no later event on the same key can overtake them;
- forward the event to ``waits`` under every match key the correlation index asks for;
- undecodable events go to the DLQ (the runtime does that when ``process`` raises).

Stateless: everything it writes is derived from the event and the code.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processors.cancellation import cancel_subscriptions, cancel_timer_id
from processors.records import (
    correlated_event,
    register_wait,
    start_run,
    wait_expired,
)
from processors.runtime.context import Context
from processors.runtime.processor import Processor, RawDecoder, Record
from processors.timers import schedule_timer_command
from streams._codec import EventCodec
from streams._correlation import CorrelationIndex
from streams._event import Event
from streams._expr import TRIGGER_VARIABLES, Bindings, CompiledExpression, compile_expression, evaluate
from streams._function import FunctionDef
from streams._json import canonical_json
from streams.errors import SerializationError, UsageError

logger = logging.getLogger(__name__)


def run_id_for(function_id: str, key: str) -> str:
    """The deterministic run id: hash of the function id and the event id (or idempotency key)."""
    digest = hashlib.blake2b(f"{function_id}\x00{key}".encode(), digest_size=16)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class _Route:
    """One function an event name triggers, with its compiled filter and idempotency key."""

    function: FunctionDef
    condition: CompiledExpression | None
    idempotency: CompiledExpression | None


class RouterProcessor(Processor[bytes | None]):
    """Routes events to runs and to the matcher.

    Args:
        functions: Every function of the app by id.
        index: The correlation index (code plus what other workers published); replaceable at run
            time through :attr:`index`.
        event_codec: Decodes events (size limit, schema registry).
    """

    name = "router"
    input_topic = "events"
    stores = ()

    def __init__(
        self,
        functions: Mapping[str, FunctionDef],
        index: CorrelationIndex,
        *,
        event_codec: EventCodec | None = None,
    ) -> None:
        self.decoder = RawDecoder()
        self.index = index
        self._codec = event_codec or EventCodec()
        self._routes: dict[str, list[_Route]] = {}
        for function in functions.values():
            idempotency = (
                compile_expression(function.idempotency, variables=TRIGGER_VARIABLES)
                if function.idempotency
                else None
            )
            for trigger in function.triggers:
                condition = (
                    compile_expression(trigger.if_, variables=TRIGGER_VARIABLES) if trigger.if_ else None
                )
                self._routes.setdefault(trigger.event, []).append(_Route(function, condition, idempotency))

    def process(self, record: Record[bytes | None], ctx: Context) -> None:
        """Starts triggered runs and forwards the event to the matcher.

        Raises:
            SerializationError: The record is not an event (it goes to the DLQ).
        """
        if record.value is None:
            raise SerializationError("tombstone (null value) on the events topic")
        # Events without id or ts get ones derived from their position, so a replay derives the same.
        append_ms = record.timestamp_ms if record.timestamp_ms is not None else ctx.now()
        event = self._codec.decode(
            record.value,
            default_id=f"{record.topic}-{record.partition}-{record.offset}",
            default_ts=append_ms,
        )
        event_dict = event.to_dict()
        for route in self._routes.get(event.name, ()):
            if route.condition is not None and not evaluate(route.condition, event=event_dict):
                continue
            self._start(route, event, event_dict, append_ms, ctx)
        for key in self.index.route_keys(event_dict):
            ctx.produce("waits", key, correlated_event(key, event, append_ms))

    def _start(
        self, route: _Route, event: Event, event_dict: dict[str, Any], append_ms: int, ctx: Context
    ) -> None:
        function = route.function
        idempotency_key: str | None = None
        if route.idempotency is not None:
            idempotency_key = self._idempotency_key(route.idempotency, event_dict, function.id)
        run_id = run_id_for(function.id, idempotency_key if idempotency_key is not None else event.id)
        ctx.produce("runs", run_id, start_run(run_id, function.id, event, append_ms, idempotency_key))
        try:
            subscriptions = cancel_subscriptions(function, event_dict, self.index)
        except UsageError as err:
            logger.error("cancel_on of function %s cannot be registered: %s", function.id, err)
            return
        for sub in subscriptions:
            if not sub.plan.satisfiable:
                continue
            expires = append_ms + sub.timeout_ms
            ctx.produce(
                "waits",
                sub.plan.key,
                register_wait(
                    sub.plan.key,
                    run_id=run_id,
                    function_id=function.id,
                    step_id="",
                    wait_id=sub.wait_id,
                    event_name=sub.plan.event_name,
                    expression=sub.plan.condition,
                    since_ts=event.ts,
                    since_event_id=event.id,
                    lookback_from_ts=event.ts,
                    expires_at_ms=expires,
                    kind="CANCEL",
                    exclude_event_ids=[event.id],
                ),
            )
            timer = schedule_timer_command(
                cancel_timer_id(run_id, sub.wait_id),
                expires,
                "waits",
                sub.plan.key,
                wait_expired(sub.plan.key, run_id, sub.wait_id, expires),
                after_events_routed=True,
            )
            ctx.produce("timers", run_id, timer)

    @staticmethod
    def _idempotency_key(
        compiled: CompiledExpression, event_dict: dict[str, Any], function_id: str
    ) -> str | None:
        """Evaluates the function's idempotency expression; ``None`` (use the event id) on failure."""
        try:
            value = compiled.program.execute(Bindings(event=event_dict).context)
        except Exception as exc:  # the CEL library raises several types for data-dependent failures
            logger.warning(
                "idempotency key of function %s failed for event %s (%s); deduping by event id",
                function_id,
                event_dict.get("id"),
                exc,
            )
            return None
        return canonical_json(value)
