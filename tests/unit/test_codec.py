from __future__ import annotations

import base64
import io
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest

from streams import StreamsConfig
from streams._codec import BUILTIN_SCHEMA_ID, EventCodec, SchemaRegistryClient
from streams._event import Event
from streams._schemas import load_schemas
from streams.errors import EventValidationError, SerializationError, UsageError

TS = 1_700_000_000_123
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

EVENTS = [
    Event(name="cart/product.added", data={"cart_id": "c1"}, id="e1", ts=TS),
    Event(name="a", data={}, id="e2", ts=TS),
    Event(
        name="ünï/côdé ✓",
        data={"q": 'say "hi" \\ bye', "n": [1, 2.5, -0.0, 2**70, None, True], "nested": {"z": {}, "a": []}},
        id="01HX0000000000000000000000",
        ts=TS,
        v="2024-01-01.1",
        user={"id": "u1", "tags": ["x"]},
    ),
    Event(name="b", data={"k": "v"}, id="e4", ts=TS, user={}),
]


@pytest.fixture
def codec() -> EventCodec:
    return EventCodec()


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.id)
def test_json_round_trip(codec: EventCodec, event: Event) -> None:
    raw = codec.encode_json(event)
    assert raw.startswith(b"{")
    assert json.loads(raw) == event.to_dict()
    assert codec.decode(raw) == event


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.id)
def test_avro_round_trip(codec: EventCodec, event: Event) -> None:
    raw = codec.encode_avro(event)
    assert raw[:5] == b"\x00\x00\x00\x00\x00"  # magic 0, built-in schema id 0
    decoded = codec.decode(raw)
    assert decoded == event
    assert [type(x) for x in decoded.data.get("n", [])] == [type(x) for x in event.data.get("n", [])]


def test_json_is_inngest_shaped_and_utf8(codec: EventCodec) -> None:
    raw = codec.encode_json(EVENTS[2])
    assert "ünï/côdé ✓".encode() in raw  # not \u-escaped
    assert list(json.loads(raw)) == ["name", "data", "id", "ts", "v", "user"]
    assert list(json.loads(codec.encode_json(EVENTS[0]))) == ["name", "data", "id", "ts"]


def test_avro_data_is_compact_sorted_json(codec: EventCodec) -> None:
    raw = codec.encode_avro(Event(name="a", data={"b": 1, "a": {"d": 1.0, "c": 2}}, id="e", ts=TS))
    assert b'{"a":{"c":2,"d":1.0},"b":1}' in raw


# --- auto-detection ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b" ", b"\n\t\r ", b"\xef\xbb\xbf", b"\xef\xbb\xbf  "])
def test_json_after_whitespace_or_bom(codec: EventCodec, prefix: bytes) -> None:
    raw = prefix + codec.encode_json(EVENTS[0])
    assert codec.decode(raw) == EVENTS[0]


@pytest.mark.parametrize(
    "raw", [b"[1]", b"x", b"\x01\x02", b"  [", b'"event"', b"\xff{}"], ids=lambda r: repr(r)
)
def test_unknown_format(codec: EventCodec, raw: bytes) -> None:
    with pytest.raises(SerializationError) as info:
        codec.decode(raw)
    message = str(info.value)
    assert f"record starts with byte 0x{raw[0]:02x}" in message
    assert "expected a JSON object ('{') or Avro in the Confluent wire format (magic byte 0x00)" in message


def test_empty_record(codec: EventCodec) -> None:
    with pytest.raises(SerializationError, match="empty record"):
        codec.decode(b"")


def test_decode_accepts_memoryview_like_bytes(codec: EventCodec) -> None:
    assert codec.decode(bytes(bytearray(codec.encode_avro(EVENTS[0])))) == EVENTS[0]


# --- limits ------------------------------------------------------------------------------------


def test_oversize_encode() -> None:
    codec = EventCodec(max_event_bytes=1024)
    event = Event(name="big", data={"blob": "x" * 2000}, id="e", ts=TS)
    for encode in (codec.encode_json, codec.encode_avro):
        with pytest.raises(EventValidationError) as info:
            encode(event)
        assert info.value.field == "<record>"
        assert "more than max_event_bytes=1024" in str(info.value)
        assert "bytes" in str(info.value)


def test_oversize_decode() -> None:
    raw = EventCodec().encode_json(Event(name="big", data={"blob": "x" * 2000}, id="e", ts=TS))
    with pytest.raises(EventValidationError) as info:
        EventCodec(max_event_bytes=1024).decode(raw)
    assert info.value.field == "<record>"
    assert f"record is {len(raw)} bytes, more than max_event_bytes=1024" in str(info.value)


def test_exactly_at_the_limit_is_fine() -> None:
    event = Event(name="big", data={"blob": "x" * 1500}, id="e", ts=TS)
    size = len(EventCodec().encode_json(event))
    codec = EventCodec(max_event_bytes=size)
    assert codec.decode(codec.encode_json(event)) == event


def test_from_config_uses_the_limit() -> None:
    codec = EventCodec.from_config(StreamsConfig(namespace="shop", max_event_bytes=2048))
    assert codec.max_event_bytes == 2048
    assert codec.registry is None


# --- malformed JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        (b'{"name": "a", "ts": "soon"}', "ts", "field 'ts': expected integer ms since epoch, got string"),
        (b'{"name": 5}', "name", "field 'name': expected a string, got integer"),
        (b'{"data": {}}', "name", "field 'name': is required"),
        (b'{"name": "a", "data": [1]}', "data", "field 'data': expected a JSON object (dict), got array"),
        (b'{"name": "a", "id": 7}', "id", "field 'id': expected a string, got integer"),
        (b'{"name": "a", "ts": 1700000000}', "ts", "looks like seconds"),
        (b'{"name": "a", "user": "me"}', "user", "field 'user': expected a JSON object or None, got string"),
        (b'{"name": "a", "data": {"x": "\\ud800"}}', "data", "lone surrogate"),
    ],
)
def test_invalid_json_event_names_the_field(codec: EventCodec, raw: bytes, field: str, message: str) -> None:
    with pytest.raises(SerializationError) as info:
        codec.decode(raw)
    assert info.value.field == field
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"name": "a",', "invalid JSON at line 1 column 14"),
        (b'{"name": "a"} trailing', "invalid JSON at line 1 column 15: Extra data"),
        (b'{"name": "a", "data": {"x": NaN}}', "NaN is not valid JSON"),
        (b'{"name": "a", "data": {"x": -Infinity}}', "-Infinity is not valid JSON"),
        (b'{"name": "\xff"}', "not UTF-8"),
        (b'{"name": "a", "data": {"x": 1e999}}', "inf is not allowed"),
    ],
)
def test_malformed_json(codec: EventCodec, raw: bytes, message: str) -> None:
    with pytest.raises(SerializationError, match=None) as info:
        codec.decode(raw)
    assert message in str(info.value)


def test_deeply_nested_json(codec: EventCodec) -> None:
    raw = b'{"name": "a", "data": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    with pytest.raises(SerializationError, match="nested"):
        EventCodec(max_event_bytes=1024 * 1024).decode(raw)


def test_json_defaults_for_missing_id_and_ts(codec: EventCodec) -> None:
    raw = b'{"name": "a", "data": {"x": 1}}'
    event = codec.decode(raw, default_id="shop.events-0-42", default_ts=TS)
    assert (event.id, event.ts) == ("shop.events-0-42", TS)
    assert codec.decode(raw, default_id="shop.events-0-42", default_ts=TS) == event
    assert len(codec.decode(raw).id) == 26


# --- malformed Avro ----------------------------------------------------------------------------


def _avro_body(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, load_schemas().parsed["streams.Event"], record)
    return out.getvalue()


def _record(**changes: Any) -> dict[str, Any]:
    return {"id": "e", "name": "a", "data": "{}", "ts": TS, "v": None, "user": None, **changes}


def test_truncated_avro(codec: EventCodec) -> None:
    with pytest.raises(SerializationError, match="truncated Avro record: 3 bytes"):
        codec.decode(b"\x00\x00\x00")
    raw = codec.encode_avro(EVENTS[0])
    with pytest.raises(SerializationError, match=r"invalid Avro event \(schema id 0\)"):
        codec.decode(raw[:-4])


def test_avro_trailing_bytes(codec: EventCodec) -> None:
    with pytest.raises(SerializationError, match="2 bytes after the record"):
        codec.decode(codec.encode_avro(EVENTS[0]) + b"\x00\x00")


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        (_record(data="not json"), "data", "field 'data': not valid JSON text"),
        (_record(data="[1, 2]"), "data", "field 'data': expected JSON object text, got list"),
        (_record(data='{"x": NaN}'), "data", "NaN is not valid JSON"),
        (_record(user="{"), "user", "field 'user': not valid JSON text"),
        (_record(ts=5), "ts", "field 'ts': 5 ms is outside"),
        (_record(name=""), "name", "field 'name': must be 1 to 256 characters"),
        (_record(id=""), "id", "field 'id': must be 1 to 256 characters"),
    ],
)
def test_invalid_avro_event_names_the_field(
    codec: EventCodec, record: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(SerializationError) as info:
        codec.decode(b"\x00\x00\x00\x00\x00" + _avro_body(record))
    assert info.value.field == field
    assert message in str(info.value)


def test_unknown_schema_id_without_registry(codec: EventCodec) -> None:
    raw = b"\x00\x00\x00\x00\x05" + _avro_body(_record())
    with pytest.raises(SerializationError, match="schema id 5 but no schema registry is configured"):
        codec.decode(raw)


# --- interop with the reference avro implementation ----------------------------------------------


def _reference_schema() -> Any:
    return avro.schema.parse(load_schemas().schema_json("streams.Event"))


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.id)
def test_reference_avro_reads_our_bytes(codec: EventCodec, event: Event) -> None:
    raw = codec.encode_avro(event)
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == BUILTIN_SCHEMA_ID
    record = avro.io.DatumReader(_reference_schema()).read(avro.io.BinaryDecoder(io.BytesIO(raw[5:])))
    assert record["id"] == event.id
    assert record["name"] == event.name
    assert json.loads(record["data"]) == event.data
    assert record["ts"] == EPOCH + timedelta(milliseconds=event.ts)
    assert record["v"] == event.v
    assert (None if record["user"] is None else json.loads(record["user"])) == event.user


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.id)
def test_we_read_reference_avro_bytes(codec: EventCodec, event: Event) -> None:
    record = {
        "id": event.id,
        "name": event.name,
        "data": json.dumps(event.data),  # any JSON text, not only ours
        "ts": EPOCH + timedelta(milliseconds=event.ts),
        "v": event.v,
        "user": None if event.user is None else json.dumps(event.user, indent=2),
    }
    out = io.BytesIO()
    out.write(b"\x00" + BUILTIN_SCHEMA_ID.to_bytes(4, "big"))
    avro.io.DatumWriter(_reference_schema()).write(record, avro.io.BinaryEncoder(out))
    assert codec.decode(out.getvalue()) == event


# --- schema registry ---------------------------------------------------------------------------


class FakeRegistry:
    """Just enough of the Confluent Schema Registry REST API, in memory."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.next_id = 7  # registries never hand out 0; make ids obviously not the built-in one
        self.requests: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()

    def id_of(self, schema: str) -> int | None:
        wanted = json.loads(schema)
        return next((i for i, s in self.schemas.items() if json.loads(s) == wanted), None)

    def add(self, subject: str, schema: str) -> int:
        with self.lock:
            schema_id = self.id_of(schema)
            if schema_id is None:
                schema_id, self.next_id = self.next_id, self.next_id + 1
                self.schemas[schema_id] = schema
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path))
        parts = [p for p in path.split("/") if p]
        if method == "GET" and parts[:2] == ["schemas", "ids"]:
            schema = self.schemas.get(int(parts[2]))
            if schema is None:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            return 200, {"schema": schema}
        if method == "POST" and parts[0] == "subjects" and len(parts) == 3 and parts[2] == "versions":
            return 200, {"id": self.add(_unquote(parts[1]), body["schema"])}
        if method == "POST" and parts[0] == "subjects" and len(parts) == 2:
            subject = _unquote(parts[1])
            if subject not in self.subjects:
                return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
            schema_id = self.id_of(body["schema"])
            if schema_id is None or schema_id not in self.subjects[subject]:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            version = self.subjects[subject].index(schema_id) + 1
            return 200, {"subject": subject, "id": schema_id, "version": version, "schema": body["schema"]}
        return 404, {"error_code": 404, "message": "HTTP 404 Not Found"}


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


@pytest.fixture
def registry() -> Iterator[tuple[FakeRegistry, str]]:
    fake = FakeRegistry()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            fake.auth.append(self.headers.get("Authorization"))
            status, answer = fake.handle(method, self.path, body)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_registry_registers_on_first_avro_encode(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    codec = EventCodec.from_config(StreamsConfig(namespace="shop", schema_registry_url=url))
    assert codec.subject == "shop.events-value"
    assert fake.requests == []  # nothing happens before the first Avro record
    raw = codec.encode_avro(EVENTS[0])
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == 7
    assert codec.schema_id == 7
    assert fake.subjects == {"shop.events-value": [7]}
    assert json.loads(fake.schemas[7]) == json.loads(load_schemas().schema_json("streams.Event"))
    codec.encode_avro(EVENTS[1])
    assert fake.requests == [("POST", "/subjects/shop.events-value/versions")]
    assert codec.decode(raw) == EVENTS[0]
    assert codec.decode(EventCodec().encode_avro(EVENTS[1])) == EVENTS[1]  # id 0 stays readable
    assert codec.encode_json(EVENTS[0]) == EventCodec().encode_json(EVENTS[0])


def test_registered_schema_is_readable_by_a_second_codec(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    writer = EventCodec(registry=SchemaRegistryClient(url), subject="s-value")
    raw = writer.encode_avro(EVENTS[2])
    reader = EventCodec(registry=SchemaRegistryClient(url), subject="s-value")
    assert reader.decode(raw) == EVENTS[2]
    assert reader.decode(raw) == EVENTS[2]
    assert fake.requests.count(("GET", "/schemas/ids/7")) == 1  # cached by id


def test_decode_with_an_older_writer_schema(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    older = {
        "type": "record",
        "name": "Envelope",
        "namespace": "com.acme",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "name", "type": "string"},
            {"name": "data", "type": "string"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "source", "type": "string"},
        ],
    }
    schema_id = fake.add("shop.events-value", json.dumps(older))
    body = io.BytesIO()
    record = {"id": "x1", "name": "legacy/thing", "data": '{"a": 1}', "ts": TS, "source": "erp"}
    fastavro.schemaless_writer(body, fastavro.parse_schema(older), record)
    raw = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    codec = EventCodec(registry=SchemaRegistryClient(url), subject="shop.events-value")
    assert codec.decode(raw) == Event(name="legacy/thing", data={"a": 1}, id="x1", ts=TS)


def test_incompatible_writer_schema(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    other = {"type": "record", "name": "Other", "fields": [{"name": "id", "type": "string"}]}
    schema_id = fake.add("x-value", json.dumps(other))
    codec = EventCodec(registry=SchemaRegistryClient(url), subject="shop.events-value")
    with pytest.raises(SerializationError, match=f"schema id {schema_id} cannot be read as streams.Event"):
        codec.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x02x")


def test_unknown_schema_id_at_the_registry(registry: tuple[FakeRegistry, str]) -> None:
    _, url = registry
    codec = EventCodec(registry=SchemaRegistryClient(url), subject="s-value")
    with pytest.raises(SerializationError, match="schema id 99 not found"):
        codec.decode(b"\x00\x00\x00\x00\x63" + _avro_body(_record()))


def test_lookup_without_auto_register(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    codec = EventCodec(registry=SchemaRegistryClient(url), subject="s-value", auto_register=False)
    with pytest.raises(SerializationError, match="not registered under subject 's-value'"):
        codec.encode_avro(EVENTS[0])
    schema_id = fake.add("s-value", codec.schema_json)
    assert codec.encode_avro(EVENTS[0])[1:5] == schema_id.to_bytes(4, "big")
    assert ("POST", "/subjects/s-value") in fake.requests


def test_registry_client_endpoints(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    client = SchemaRegistryClient(url + "/")
    schema = json.dumps({"type": "string"})
    assert client.lookup("odd/subject name", schema) is None
    schema_id = client.register("odd/subject name", schema)
    assert client.lookup("odd/subject name", schema) == schema_id
    assert client.get_schema(schema_id) == schema
    assert ("POST", "/subjects/odd%2Fsubject%20name/versions") in fake.requests


def test_registry_basic_auth_from_url(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    client = SchemaRegistryClient(url.replace("http://", "http://alice:s%3Acret@"))
    assert "alice" not in client.url and "alice" not in repr(client)
    client.register("s", json.dumps({"type": "string"}))
    assert fake.auth[-1] == "Basic " + base64.b64encode(b"alice:s:cret").decode()


def test_registry_errors_are_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(SerializationError, match=f"schema registry http://127.0.0.1:{port}"):
        client.get_schema(1)
    codec = EventCodec(registry=client, subject="s-value")
    with pytest.raises(SerializationError, match="schema registry"):
        codec.encode_avro(EVENTS[0])


def test_registry_http_error_carries_the_registry_message(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry

    def refuse(method: str, path: str, body: Any) -> tuple[int, Any]:
        return 409, {"error_code": 409, "message": "Schema being registered is incompatible"}

    fake.handle = refuse  # type: ignore[method-assign]
    with pytest.raises(
        SerializationError, match="HTTP 409: error 409: Schema being registered is incompatible"
    ):
        SchemaRegistryClient(url).register("s", json.dumps({"type": "string"}))


def test_registry_needs_a_subject() -> None:
    with pytest.raises(UsageError, match="subject"):
        EventCodec(registry=SchemaRegistryClient("http://127.0.0.1:1"))
