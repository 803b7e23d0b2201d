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

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _generate(schema: Any, variant: int, namespace: str = "streams", *, reference: bool = False) -> Any:
    """A value of ``schema``; variant ``k`` takes branch ``k % len`` of every union, so variants
    ``0..n-1`` (n = the longest union) cover every branch. ``reference=True`` gives timestamp-millis as
    the aware ``datetime`` the reference ``avro`` library wants.
    """
    definitions = load_schemas().definitions
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return _primitive(schema, variant)
        full = schema if "." in schema else f"{namespace}.{schema}"
        return _generate(definitions[full], variant, namespace, reference=reference)
    if isinstance(schema, list):
        branch = schema[variant % len(schema)]
        value = _generate(branch, variant, namespace, reference=reference)
        records = [b for b in schema if _record_name(b, namespace) is not None]
        if len(records) > 1:
            return (_record_name(branch, namespace), value)
        return value
    kind = schema["type"]
    if kind == "record":
        full = _record_name(schema, namespace)
        assert full is not None
        inner = full.rpartition(".")[0]
        return {
            f["name"]: _generate(f["type"], variant, inner, reference=reference) for f in schema["fields"]
        }
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "array":
        return [_generate(schema["items"], variant + i, namespace, reference=reference) for i in range(2)]
    if kind == "map":
        return {"k": _generate(schema["values"], variant, namespace, reference=reference)}
    if kind == "fixed":
        return bytes(schema["size"])
    if reference and schema.get("logicalType") == "timestamp-millis":
        return EPOCH + timedelta(milliseconds=_primitive(kind, variant))
    return _generate(kind, variant, namespace, reference=reference)


def _primitive(kind: str, variant: int) -> Any:
    return {
        "null": None,
        "boolean": variant % 2 == 0,
        "int": variant + 1,
        "long": TS + variant,
        "float": 1.5,
        "double": 2.25,
        "bytes": bytes([0, 255, variant]),
        "string": f'say "hi" \\ ü {variant}',
    }[kind]


def _record_name(schema: Any, namespace: str) -> str | None:
    definitions = load_schemas().definitions
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return None
        full = schema if "." in schema else f"{namespace}.{schema}"
        return full if definitions[full]["type"] == "record" else None
    if isinstance(schema, dict) and schema["type"] == "record":
        name = str(schema["name"])
        return name if "." in name else f"{schema.get('namespace', namespace)}.{name}"
    return None


def _longest_union(schema: Any, seen: set[str]) -> int:
    definitions = load_schemas().definitions
    if isinstance(schema, str):
        if schema in PRIMITIVES or schema in seen:
            return 1
        full = schema if "." in schema else f"streams.{schema}"
        return _longest_union(definitions[full], seen | {full})
    if isinstance(schema, list):
        return max([len(schema), *(_longest_union(b, seen) for b in schema)])
    kind = schema["type"]
    if kind == "record":
        return max([1, *(_longest_union(f["type"], seen) for f in schema["fields"])])
    if kind == "array":
        return _longest_union(schema["items"], seen)
    if kind == "map":
        return _longest_union(schema["values"], seen)
    return 1


def _cases() -> list[tuple[str, int]]:
    schemas = load_schemas()
    return [
        (name, variant)
        for name in RecordCodec().names
        for variant in range(max(2, _longest_union(schemas.published[name], set())))
    ]


CASES = _cases()
IDS = [f"{name.removeprefix('streams.')}-{variant}" for name, variant in CASES]


def _sample(name: str, variant: int, *, reference: bool = False) -> dict[str, Any]:
    value = _generate(load_schemas().published[name], variant, reference=reference)
    assert isinstance(value, dict)
    return value


# --- loading ----------------------------------------------------------------------------------


def test_schemas_dir_is_the_repo_folder_in_a_checkout() -> None:
    assert schemas_dir() == REPO_SCHEMAS


def test_schemas_dir_prefers_the_wheel_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import streams._schemas as module

    (tmp_path / "streams" / "_avsc").mkdir(parents=True)
    monkeypatch.setattr(module, "__file__", str(tmp_path / "streams" / "_schemas.py"))
    assert schemas_dir() == tmp_path / "streams" / "_avsc"
    (tmp_path / "streams" / "_avsc").rmdir()
    with pytest.raises(SerializationError, match="Avro schemas not found"):
        schemas_dir()


def test_all_schemas_load() -> None:
    schemas = load_schemas()
    declared = set()
    for path in REPO_SCHEMAS.glob("*.avsc"):
        doc = json.loads(path.read_text())
        declared.add(f"{doc['namespace']}.{doc['name']}")
    assert set(schemas.names) == declared
    assert {"streams.Event", "streams.RunCommand", "streams.WaitCommand", "streams.TimerCommand"} <= declared
    assert load_schemas() is schemas  # parsed once


def test_samples_cover_every_union_branch() -> None:
    codec = RecordCodec()
    assert sorted({name for name, _ in CASES}) == codec.names
    schemas = load_schemas()
    for name in codec.names:
        for field in schemas.published[name]["fields"]:
            if isinstance(field["type"], list) and sum(isinstance(b, dict) for b in field["type"]) > 1:
                branches = {f"streams.{b['name']}" for b in field["type"]}
                covered = {_sample(n, v)[field["name"]][0] for n, v in CASES if n == name}
                assert covered == branches, name


def test_the_design_records_exist() -> None:
    bodies = {
        "streams.RunCommand": {
            "StartRun",
            "StepCompleted",
            "StepFailed",
            "SleepElapsed",
            "RetryStep",
            "CancelRun",
            "WaitResolved",
        },
        "streams.WaitCommand": {"RegisterWait", "CancelWait", "CorrelatedEvent", "WaitExpired"},
        "streams.TimerCommand": {"ScheduleTimer", "CancelTimer"},
    }
    schemas = load_schemas()
    for name, expected in bodies.items():
        body = next(f for f in schemas.published[name]["fields"] if f["name"] == "body")
        assert expected <= {branch["name"] for branch in body["type"]}, name
    assert {
        "streams.Event",
        "streams.HistoryEntry",
        "streams.Correlation",
        "streams.RunHeader",
        "streams.StepRecord",
        "streams.WaitRecord",
        "streams.TimerRecord",
        "streams.BufferedEvent",
    } <= set(RecordCodec().names)


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
    wait_resolved = next(b for b in run_command["fields"][2]["type"] if b["name"] == "WaitResolved")
    assert wait_resolved["fields"][2]["type"] == ["null", "streams.Event"]  # referenced afterwards


def test_load_from_another_folder(tmp_path: Path) -> None:
    shutil.copytree(REPO_SCHEMAS, tmp_path / "_avsc")
    schemas = load_schemas(tmp_path / "_avsc")
    assert schemas.names == load_schemas().names


def test_unknown_type_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.avsc").write_text(
        json.dumps(
            {"type": "record", "name": "A", "namespace": "x", "fields": [{"name": "b", "type": "x.B"}]}
        )
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
            json.dumps(
                {
                    "type": "record",
                    "name": me,
                    "namespace": "x",
                    "fields": [{"name": "o", "type": f"x.{other}"}],
                }
            )
        )
    with pytest.raises(SerializationError, match="circular"):
        load_schemas(tmp_path)


# --- RecordCodec round trips ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), CASES, ids=IDS)
def test_record_codec_round_trip(name: str, variant: int) -> None:
    value = _sample(name, variant)
    codec = RecordCodec()
    raw = codec.encode(name, value)
    assert raw[0] == RECORD_FORMAT_VERSION
    assert codec.decode(name, raw) == value
    assert codec.decode(name.removeprefix("streams."), raw) == value


@pytest.mark.parametrize(("name", "variant"), CASES, ids=IDS)
def test_reference_avro_reads_our_bytes(name: str, variant: int) -> None:
    value = _sample(name, variant)
    raw = RecordCodec().encode(name, value)
    schema = avro.schema.parse(load_schemas().schema_json(name))
    decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(raw[1:])))
    assert _from_reference(decoded) == _untagged(value)


@pytest.mark.parametrize(("name", "variant"), CASES, ids=IDS)
def test_we_read_reference_avro_bytes(name: str, variant: int) -> None:
    value = _sample(name, variant)
    schema = avro.schema.parse(load_schemas().schema_json(name))
    out = io.BytesIO()
    _TaggedUnionWriter(schema).write(_sample(name, variant, reference=True), avro.io.BinaryEncoder(out))
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
    raw = codec.encode(
        "Correlation", {"event_name": "a", "path": "data.x", "published_by": "w1", "published_ms": TS}
    )
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
