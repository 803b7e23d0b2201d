from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest

from streams._codec import RECORD_FORMAT_VERSION, RecordCodec
from streams._schemas import load_schemas, schemas_dir
from streams.errors import SerializationError

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TS = 1_700_000_000_123

EVENT = {"id": "01HX", "name": "cart/purchased", "data": '{"cart_id":"c\\"1"}', "ts": TS, "v": None, "user": None}
FULL_EVENT = {**EVENT, "id": "e2", "v": "2", "user": '{"id":"u1"}'}


def _register_wait(kind: str, expires: int | None) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "function_id": "cart-abandonment",
        "step_id": "wait-for-purchase",
        "wait_id": "wait-for-purchase",
        "event_name": "cart/purchased",
        "expression": "async.data.total > 10" if kind == "WAIT" else None,
        "since_ts": TS,
        "lookback_from_ts": TS - 300_000,
        "expires_at_ms": expires,
        "kind": kind,
        "exclude_event_ids": ["e0"] if kind == "WAIT" else [],
        "index": 1 if kind == "WAIT" else None,
    }


#: Every record schema with values covering every union branch.
SAMPLES: dict[str, list[dict[str, Any]]] = {
    "streams.Event": [EVENT, FULL_EVENT],
    "streams.RunCommand": [
        {"run_id": "r1", "function_id": "f", "body": (name, body)}
        for name, body in [
            ("streams.StartRun", {"event": EVENT, "event_log_append_ms": TS + 1, "idempotency_key": None, "replay_id": None}),
            ("streams.StartRun", {"event": FULL_EVENT, "event_log_append_ms": TS, "idempotency_key": "k", "replay_id": "rp"}),
            ("streams.StepCompleted", {"step_id": "s", "attempt": 0, "output_json": '{"ok":true}'}),
            (
                "streams.StepFailed",
                {
                    "step_id": "s:1",
                    "attempt": 2,
                    "error_type": "ValueError",
                    "error_message": "bad",
                    "retriable": True,
                    "retry_at_ms": TS + 2000,
                    "error_stack": "Traceback ...",
                },
            ),
            (
                "streams.StepFailed",
                {
                    "step_id": "s",
                    "attempt": 4,
                    "error_type": "X",
                    "error_message": "",
                    "retriable": False,
                    "retry_at_ms": None,
                    "error_stack": None,
                },
            ),
            ("streams.SleepElapsed", {"step_id": "nap"}),
            ("streams.RetryStep", {"step_id": "s", "attempt": 3}),
            ("streams.CancelRun", {"reason": "cancel_on", "cancel_event_id": "e9"}),
            ("streams.CancelRun", {"reason": "operator", "cancel_event_id": None}),
            ("streams.WaitResolved", {"step_id": "w", "wait_id": "w", "event": EVENT, "index": None}),
            ("streams.WaitResolved", {"step_id": "w", "wait_id": "w:1", "event": None, "index": 1}),
        ]
    ],
    "streams.WaitCommand": [
        {"match_key": "cart/purchased\x00data.cart_id\x00\"c1\"", "body": (name, body)}
        for name, body in [
            ("streams.RegisterWait", _register_wait("WAIT", TS + 86_400_000)),
            ("streams.RegisterWait", _register_wait("CANCEL", None)),
            ("streams.CancelWait", {"run_id": "r1", "wait_id": "w"}),
            ("streams.CorrelatedEvent", {"event": FULL_EVENT, "log_append_ms": TS + 5}),
            ("streams.WaitExpired", {"run_id": "r1", "wait_id": "w", "expires_at_ms": TS + 30_000}),
        ]
    ],
    "streams.TimerCommand": [
        {
            "timer_id": "r1/nap",
            "body": (
                "streams.ScheduleTimer",
                {
                    "fire_at_ms": TS,
                    "target_topic": "runs",
                    "target_key": b"r1",
                    "payload": b"\x01\x00\xff",
                    "after_events_routed": True,
                },
            ),
        },
        {"timer_id": "r1/nap", "body": ("streams.CancelTimer", {})},
    ],
    "streams.HistoryEntry": [
        {
            "run_id": "r1",
            "function_id": "f",
            "status": "RUNNING",
            "trigger": EVENT,
            "output_json": None,
            "error": None,
            "started_ms": TS,
            "ended_ms": None,
        },
        {
            "run_id": "r1",
            "function_id": "f",
            "status": "COMPLETED",
            "trigger": FULL_EVENT,
            "output_json": "[1,2]",
            "error": None,
            "started_ms": TS,
            "ended_ms": TS + 10,
        },
        {
            "run_id": "r2",
            "function_id": "f",
            "status": "CANCELLED",
            "trigger": EVENT,
            "output_json": None,
            "error": "cancel_on",
            "started_ms": TS,
            "ended_ms": TS + 10,
        },
    ],
    "streams.Correlation": [
        {"event_name": "cart/purchased", "path": "data.cart_id", "published_by": "host/1 v1", "published_ms": TS},
        {"event_name": "cart/purchased", "path": None, "published_by": "host/1 v1", "published_ms": TS},
    ],
    "streams.RunHeader": [
        {
            "run_id": "r1",
            "function_id": "f",
            "status": "RUNNING",
            "trigger": EVENT,
            "clock_ts": TS + 7,
            "consumed_event_ids": ["e1", "e2"],
            "step_count": 3,
            "started_ms": TS,
            "updated_ms": TS + 9,
            "ended_ms": None,
            "output_json": None,
            "error": None,
            "cancel_reason": None,
        },
        {
            "run_id": "r1",
            "function_id": "f",
            "status": "FAILED",
            "trigger": FULL_EVENT,
            "clock_ts": TS,
            "consumed_event_ids": [],
            "step_count": 0,
            "started_ms": TS,
            "updated_ms": TS,
            "ended_ms": TS,
            "output_json": None,
            "error": "StepError: boom",
            "cancel_reason": None,
        },
    ],
    "streams.StepRecord": [
        {
            "run_id": "r1",
            "step_id": "s",
            "kind": "RUN",
            "status": "COMPLETED",
            "attempt": 1,
            "output_json": "null",
            "error_type": None,
            "error_message": None,
            "wait_ids": [],
            "timer_id": None,
            "started_ms": TS,
            "ended_ms": TS + 1,
        },
        {
            "run_id": "r1",
            "step_id": "any",
            "kind": "WAIT_FOR_ANY",
            "status": "PENDING",
            "attempt": 0,
            "output_json": None,
            "error_type": None,
            "error_message": None,
            "wait_ids": ["any:0", "any:1"],
            "timer_id": "r1/any",
            "started_ms": TS,
            "ended_ms": None,
        },
    ],
    "streams.WaitRecord": [
        {
            **{k: v for k, v in _register_wait("WAIT", TS).items()},
            "match_key": "cart/purchased\x00data.cart_id\x00\"c1\"",
            "registered_ms": TS,
        }
    ],
    "streams.TimerRecord": [
        {
            "timer_id": "t",
            "run_id": "r1",
            "fire_at_ms": TS,
            "target_topic": "waits",
            "target_key": b"k\x00",
            "payload": b"",
            "after_events_routed": False,
        }
    ],
    "streams.BufferedEvent": [
        {"match_key": "cart/purchased\x00data.cart_id\x001", "event": EVENT, "log_append_ms": TS, "buffered_ms": TS + 3}
    ],
}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _cases() -> list[tuple[str, int, dict[str, Any]]]:
    return [(name, i, value) for name, values in SAMPLES.items() for i, value in enumerate(values)]


CASES = _cases()
IDS = [f"{name.removeprefix('streams.')}-{i}" for name, i, _ in CASES]


# --- loading ----------------------------------------------------------------------------------


def test_schemas_dir_is_the_repo_folder_in_a_checkout() -> None:
    assert schemas_dir() == REPO_SCHEMAS


def test_all_schemas_load() -> None:
    schemas = load_schemas()
    declared = set()
    for path in REPO_SCHEMAS.glob("*.avsc"):
        doc = json.loads(path.read_text())
        declared.add(f"{doc['namespace']}.{doc['name']}")
    assert set(schemas.names) == declared
    assert {"streams.Event", "streams.RunCommand", "streams.WaitCommand", "streams.TimerCommand"} <= declared
    assert load_schemas() is schemas  # parsed once


def test_every_record_schema_has_samples_covering_every_union_branch() -> None:
    codec = RecordCodec()
    assert sorted(SAMPLES) == codec.names
    schemas = load_schemas()
    for name in codec.names:
        for field in schemas.published[name]["fields"]:
            if isinstance(field["type"], list) and sum(isinstance(b, dict) for b in field["type"]) > 1:
                branches = {f"streams.{b['name']}" for b in field["type"]}
                covered = {value[field["name"]][0] for value in SAMPLES[name]}
                assert covered == branches, name


def test_event_schema_keeps_its_logical_type_when_published() -> None:
    published = json.loads(load_schemas().schema_json("Event"))
    ts = next(f for f in published["fields"] if f["name"] == "ts")
    assert ts["type"] == {"type": "long", "logicalType": "timestamp-millis"}


def test_schema_json_is_self_contained() -> None:
    schemas = load_schemas()
    for name in schemas.names:
        text = schemas.schema_json(name)
        fastavro.parse_schema(json.loads(text), {})  # no outside named types needed
        avro.schema.parse(text)
    run_command = json.loads(schemas.schema_json("RunCommand"))
    start_run = run_command["fields"][2]["type"][0]
    assert start_run["fields"][0]["type"]["name"] == "Event"  # inlined at first use
    wait_resolved = run_command["fields"][2]["type"][-1]
    assert wait_resolved["fields"][2]["type"] == ["null", "streams.Event"]  # referenced afterwards


def test_load_from_another_folder(tmp_path: Path) -> None:
    shutil.copytree(REPO_SCHEMAS, tmp_path / "_avsc")
    schemas = load_schemas(tmp_path / "_avsc")
    assert schemas.names == load_schemas().names


def test_unknown_type_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text(
        json.dumps({"type": "record", "name": "A", "namespace": "x", "fields": [{"name": "b", "type": "x.B"}]})
    )
    with pytest.raises(SerializationError, match=r"a\.avsc: unknown type 'x\.B'"):
        load_schemas(tmp_path)


def test_invalid_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text("{")
    with pytest.raises(SerializationError, match=r"bad\.avsc"):
        load_schemas(tmp_path)


def test_circular_file_references_are_reported(tmp_path: Path) -> None:
    for me, other in (("A", "B"), ("B", "A")):
        (tmp_path / f"{me}.avsc").write_text(
            json.dumps({"type": "record", "name": me, "namespace": "x", "fields": [{"name": "o", "type": f"x.{other}"}]})
        )
    with pytest.raises(SerializationError, match="circular"):
        load_schemas(tmp_path)


# --- RecordCodec round trips ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "index", "value"), CASES, ids=IDS)
def test_record_codec_round_trip(name: str, index: int, value: dict[str, Any]) -> None:
    codec = RecordCodec()
    raw = codec.encode(name, value)
    assert raw[0] == RECORD_FORMAT_VERSION
    assert codec.decode(name, raw) == value
    assert codec.decode(name.removeprefix("streams."), raw) == value


@pytest.mark.parametrize(("name", "index", "value"), CASES, ids=IDS)
def test_reference_avro_reads_our_bytes(name: str, index: int, value: dict[str, Any]) -> None:
    raw = RecordCodec().encode(name, value)
    schema = avro.schema.parse(load_schemas().schema_json(name))
    decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(raw[1:])))
    assert _from_reference(decoded) == _untagged(value)


@pytest.mark.parametrize(("name", "index", "value"), CASES, ids=IDS)
def test_we_read_reference_avro_bytes(name: str, index: int, value: dict[str, Any]) -> None:
    schema = avro.schema.parse(load_schemas().schema_json(name))
    out = io.BytesIO()
    _TaggedUnionWriter(schema).write(_to_reference(value), avro.io.BinaryEncoder(out))
    raw = bytes([RECORD_FORMAT_VERSION]) + out.getvalue()
    codec = RecordCodec()
    assert raw == codec.encode(name, value)
    assert codec.decode(name, raw) == value


# --- RecordCodec errors -----------------------------------------------------------------------


def test_unknown_schema() -> None:
    with pytest.raises(SerializationError, match="unknown record schema 'Nope'"):
        RecordCodec().encode("Nope", {})
    with pytest.raises(SerializationError, match="unknown record schema 'RunStatus'"):
        RecordCodec().encode("RunStatus", {})  # enums are not standalone records


def test_encode_wrong_value_names_the_field() -> None:
    value = {"event_name": "a", "path": None, "published_by": "x", "published_ms": "soon"}
    with pytest.raises(SerializationError, match="published_ms") as info:
        RecordCodec().encode("Correlation", value)
    assert "cannot encode Correlation" in str(info.value)
    with pytest.raises(SerializationError, match="event_name"):
        RecordCodec().encode("Correlation", {"path": None, "published_by": "x", "published_ms": 1})


def test_decode_errors() -> None:
    codec = RecordCodec()
    raw = codec.encode("Correlation", SAMPLES["streams.Correlation"][0])
    with pytest.raises(SerializationError, match="expected format byte 0x01, got 0x02"):
        codec.decode("Correlation", b"\x02" + raw[1:])
    with pytest.raises(SerializationError, match="empty record"):
        codec.decode("Correlation", b"")
    with pytest.raises(SerializationError, match="cannot decode Correlation"):
        codec.decode("Correlation", raw[:-3])
    with pytest.raises(SerializationError, match="1 bytes after the record"):
        codec.decode("Correlation", raw + b"\x00")
    with pytest.raises(SerializationError, match="cannot decode RunCommand"):
        codec.decode("RunCommand", b"\x01\x02a\x02b\x7f")  # union index out of range


# --- helpers for the reference implementation ---------------------------------------------------


class _TaggedUnionWriter(avro.io.DatumWriter):  # type: ignore[misc]
    """The reference writer, told which union branch to take by a ``(name, value)`` tuple.

    avro picks the last branch a value validates against, which is ambiguous for records of the same
    shape; everything but that choice is the reference implementation's own encoding.
    """

    def write(self, datum: Any, encoder: avro.io.BinaryEncoder) -> None:
        self.write_data(self.writers_schema, datum, encoder)

    def write_union(self, writers_schema: Any, datum: Any, encoder: avro.io.BinaryEncoder) -> None:
        if isinstance(datum, tuple):
            name, inner = datum
            for index, branch in enumerate(writers_schema.schemas):
                if getattr(branch, "fullname", None) == name:
                    encoder.write_long(index)
                    self.write_data(branch, inner, encoder)
                    return
            raise AssertionError(f"no branch {name}")
        super().write_union(writers_schema, datum, encoder)


def _is_event(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == set(EVENT)


def _to_reference(value: Any) -> Any:
    """Our values as avro wants them: timestamp-millis as an aware datetime."""
    if _is_event(value):
        return {**value, "ts": EPOCH + timedelta(milliseconds=value["ts"])}
    if isinstance(value, dict):
        return {k: _to_reference(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return (value[0], _to_reference(value[1]))
    if isinstance(value, list):
        return [_to_reference(v) for v in value]
    return value


def _from_reference(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: _from_reference(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_reference(v) for v in value]
    return value


def _untagged(value: Any) -> Any:
    if isinstance(value, tuple):
        return _untagged(value[1])
    if isinstance(value, dict):
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value
