"""Typed builders and readers for the engine's internal records (the ``.avsc`` files in ``schemas/``).

Responsibilities:

- one shared :class:`RecordCodec` (schemas parsed once per process);
- converting :class:`Event` to and from its Avro record form (``data``/``user`` as JSON text);
- building the values of the ``runs``, ``waits`` and ``timers`` topics, so every processor writes
  the same shapes and a field rename is one edit.

Union bodies are ``(full_name, dict)`` tuples, as :class:`RecordCodec` takes and gives them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from streams._codec import RecordCodec
from streams._event import Event

CODEC = RecordCodec()

RUN_COMMAND = "streams.RunCommand"
WAIT_COMMAND = "streams.WaitCommand"
TIMER_COMMAND = "streams.TimerCommand"
HISTORY_ENTRY = "streams.HistoryEntry"

_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def event_to_record(event: Event) -> dict[str, Any]:
    """The Avro ``streams.Event`` form of an event."""
    return {
        "id": event.id,
        "name": event.name,
        "data": _dumps(dict(event.data)),
        "ts": event.ts,
        "v": event.v,
        "user": None if event.user is None else _dumps(dict(event.user)),
    }


def event_from_record(record: Mapping[str, Any]) -> Event:
    """Reads :func:`event_to_record`'s form back (fastavro gives ``ts`` as an int or datetime)."""
    ts = record["ts"]
    if not isinstance(ts, int):
        ts = int(ts.timestamp() * 1000)
    user = record.get("user")
    return Event(
        name=record["name"],
        data=json.loads(record["data"]),
        id=record["id"],
        ts=ts,
        v=record.get("v"),
        user=None if user is None else json.loads(user),
    )


def body(value: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``(short name, fields)`` of a decoded command's union body, e.g. ``("StartRun", {...})``."""
    full, fields = value["body"]
    return full.rpartition(".")[2], fields


# -- runs -------------------------------------------------------------------------------------------


def run_command(run_id: str, function_id: str, kind: str, fields: Mapping[str, Any]) -> bytes:
    """Encodes a ``RunCommand`` whose body is the record ``streams.<kind>``."""
    return CODEC.encode(
        RUN_COMMAND, {"run_id": run_id, "function_id": function_id, "body": (f"streams.{kind}", dict(fields))}
    )


def start_run(
    run_id: str, function_id: str, event: Event, log_append_ms: int, idempotency_key: str | None
) -> bytes:
    """The router's command that starts a run."""
    return run_command(
        run_id,
        function_id,
        "StartRun",
        {
            "event": event_to_record(event),
            "event_log_append_ms": log_append_ms,
            "idempotency_key": idempotency_key,
            "replay_id": None,
        },
    )


def wait_resolved(
    run_id: str, function_id: str, step_id: str, wait_id: str, event: Event | None, index: int | None
) -> bytes:
    """The matcher's command resolving one wait (``event=None``: timed out)."""
    return run_command(
        run_id,
        function_id,
        "WaitResolved",
        {
            "step_id": step_id,
            "wait_id": wait_id,
            "event": None if event is None else event_to_record(event),
            "index": index,
        },
    )


def cancel_run(run_id: str, function_id: str, reason: str, cancel_event_id: str | None) -> bytes:
    """Cancels a run (from ``app.cancel``, the CLI or a ``cancel_on`` match)."""
    return run_command(
        run_id, function_id, "CancelRun", {"reason": reason, "cancel_event_id": cancel_event_id}
    )


# -- waits ------------------------------------------------------------------------------------------


def wait_command(match_key: bytes, kind: str, fields: Mapping[str, Any]) -> bytes:
    """Encodes a ``WaitCommand`` whose body is the record ``streams.<kind>``."""
    return CODEC.encode(WAIT_COMMAND, {"match_key": match_key, "body": (f"streams.{kind}", dict(fields))})


def register_wait(
    match_key: bytes,
    *,
    run_id: str,
    function_id: str,
    step_id: str,
    wait_id: str,
    event_name: str,
    expression: str | None,
    since_ts: int,
    since_event_id: str | None = None,
    lookback_from_ts: int,
    expires_at_ms: int | None,
    kind: str,
    exclude_event_ids: Sequence[str] = (),
    index: int | None = None,
) -> bytes:
    """A wait (``kind="WAIT"``) or cancel subscription (``kind="CANCEL"``) for the matcher."""
    return wait_command(
        match_key,
        "RegisterWait",
        {
            "run_id": run_id,
            "function_id": function_id,
            "step_id": step_id,
            "wait_id": wait_id,
            "event_name": event_name,
            "expression": expression,
            "since_ts": since_ts,
            "since_event_id": since_event_id,
            "lookback_from_ts": lookback_from_ts,
            "expires_at_ms": expires_at_ms,
            "kind": kind,
            "exclude_event_ids": list(exclude_event_ids),
            "index": index,
        },
    )


def cancel_wait(match_key: bytes, run_id: str, wait_id: str) -> bytes:
    """Removes a wait that is no longer needed (race loser, ended run)."""
    return wait_command(match_key, "CancelWait", {"run_id": run_id, "wait_id": wait_id})


def wait_expired(match_key: bytes, run_id: str, wait_id: str, expires_at_ms: int) -> bytes:
    """The timeout of a wait, delivered to the matcher that owns the race."""
    return wait_command(
        match_key, "WaitExpired", {"run_id": run_id, "wait_id": wait_id, "expires_at_ms": expires_at_ms}
    )


def correlated_event(match_key: bytes, event: Event, log_append_ms: int) -> bytes:
    """An event the router forwards to the matcher under one of its match keys."""
    return wait_command(
        match_key, "CorrelatedEvent", {"event": event_to_record(event), "log_append_ms": log_append_ms}
    )


def wait_timer_id(run_id: str, wait_id: str) -> str:
    """Timer id of a wait's timeout; the matcher cancels it by this id when an event wins."""
    return f"{run_id}/wait/{wait_id}"
