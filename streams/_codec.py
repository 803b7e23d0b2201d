"""Bytes ↔ records: events (JSON or Avro) and the engine's internal Avro records.

Wire formats:

- **Event, JSON**: the Inngest JSON object ``{"name", "data", "id", "ts", "v"?, "user"?}`` as UTF-8.
- **Event, Avro**: the Confluent wire format: byte ``0x00``, the writer schema's id as 4 bytes big-endian,
  then the schemaless Avro body of ``streams.Event`` (``schemas/event.avsc``). With a schema registry the
  id is the one the registry assigned under subject ``<namespace>.events-value``; without one it is
  :data:`BUILTIN_SCHEMA_ID` (``0``), which registries never assign and which means "the built-in
  ``streams.Event`` schema of this package". Records written under any other id are decoded by fetching
  that writer schema from the registry and resolving it against ours (Avro schema resolution).
- **Internal records** (runs, waits, timers, history, correlations, store values): one format byte
  :data:`RECORD_FORMAT_VERSION` (``0x01``) then the schemaless Avro body. The byte lets a later release
  change the encoding while reading the old one, and keeps internal records distinguishable from events.

A decoder never guesses: the first byte of an event decides between Avro (``0x00``) and JSON (``{`` after
optional whitespace); anything else is a :class:`~streams.errors.SerializationError` saying what was
expected.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import fastavro
import fastavro.validation

from streams._config import StreamsConfig
from streams._event import Event
from streams._json import compact_json
from streams._schemas import SchemaSet, load_schemas, parse_writer_schema
from streams.errors import EventValidationError, SerializationError, UsageError

#: First byte of the Confluent wire format.
AVRO_MAGIC = 0
#: Schema id written when no registry is configured: "the built-in streams.Event schema".
BUILTIN_SCHEMA_ID = 0
#: First byte of every internal record.
RECORD_FORMAT_VERSION = 1
#: Full name of the event record schema.
EVENT_SCHEMA = "streams.Event"

_JSON_WHITESPACE = b" \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"
_REGISTRY_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_dumps_event = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


class SchemaRegistryClient:
    """A minimal client of a Confluent-compatible Schema Registry (standard library HTTP only).

    Covers what the codec needs: register or look up a schema under a subject, and fetch a schema by id.
    Schemas by id are immutable in a registry, so they are cached forever; so are registrations.
    Credentials may be given in the URL (``https://user:secret@registry:8081``) and are sent as HTTP
    basic auth.

    Args:
        url: Base URL of the registry.
        timeout: Seconds to wait for each HTTP request.

    Raises:
        SerializationError: (from the methods) the registry cannot be reached or refuses the request; the
            message carries the URL, HTTP status and the registry's error code.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self._headers = {
            "Accept": f"{_REGISTRY_CONTENT_TYPE}, application/json",
            "Content-Type": _REGISTRY_CONTENT_TYPE,
        }
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            secret = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
            netloc = parts.hostname or ""
            if parts.port is not None:
                netloc = f"{netloc}:{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.url = urllib.parse.urlunsplit(parts).rstrip("/")
        self._timeout = timeout
        self._by_id: dict[int, str] = {}
        self._registered: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:
        return f"SchemaRegistryClient({self.url!r})"

    def register(self, subject: str, schema: str) -> int:
        """Registers an Avro schema under ``subject`` (a no-op if it is already there); returns its id."""
        key = (subject, schema)
        if key not in self._registered:
            body = self._request("POST", f"/subjects/{_quote(subject)}/versions", {"schema": schema})
            self._registered[key] = self._schema_id(body)
        return self._registered[key]

    def lookup(self, subject: str, schema: str) -> int | None:
        """Returns the id of ``schema`` under ``subject``, or ``None`` when it is not registered there."""
        key = (subject, schema)
        if key not in self._registered:
            try:
                body = self._request("POST", f"/subjects/{_quote(subject)}", {"schema": schema})
            except _NotFoundError:
                return None
            self._registered[key] = self._schema_id(body)
        return self._registered[key]

    def get_schema(self, schema_id: int) -> str:
        """Returns the schema text registered under ``schema_id``."""
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            body = self._request("GET", f"/schemas/ids/{schema_id}", None)
        except _NotFoundError as exc:
            raise SerializationError(f"schema registry {self.url}: schema id {schema_id} not found") from exc
        schema = body.get("schema") if isinstance(body, dict) else None
        if not isinstance(schema, str):
            raise SerializationError(
                f"schema registry {self.url}: no schema in the answer for id {schema_id}"
            )
        schema_type = body.get("schemaType", "AVRO")
        if schema_type != "AVRO":
            raise SerializationError(f"schema id {schema_id} is a {schema_type} schema, not Avro")
        self._by_id[schema_id] = schema
        return schema

    def _schema_id(self, body: Any) -> int:
        schema_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schema_id, int):
            raise SerializationError(f"schema registry {self.url}: answer has no schema id: {body!r:.200}")
        return schema_id

    def _request(self, method: str, path: str, payload: Mapping[str, Any] | None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = _registry_error(exc.read())
            if exc.code == 404:
                raise _NotFoundError(detail) from None
            raise SerializationError(
                f"schema registry {self.url}: {method} {path}: HTTP {exc.code}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise SerializationError(f"schema registry {self.url}: {method} {path}: {reason}") from None


class _NotFoundError(Exception):
    pass


def _quote(subject: str) -> str:
    return urllib.parse.quote(subject, safe="")


def _registry_error(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return f"error {body['error_code']}: {body['message']}"
    except (ValueError, KeyError, TypeError):
        return raw[:200].decode("utf-8", "replace")


class EventCodec:
    """Encodes events to JSON or Confluent-framed Avro, and decodes either (auto-detected per record).

    Args:
        max_event_bytes: Largest encoded record accepted, both ways.
        registry: Schema registry for Avro ids; ``None`` writes :data:`BUILTIN_SCHEMA_ID` and can read only
            records written with it.
        subject: Registry subject of the event schema (``<namespace>.events-value``); required with
            ``registry``.
        auto_register: Register the event schema on first Avro encode (like Confluent serializers). When
            false the schema must already be registered under ``subject``.
        schemas: The schema set; default the package's own.

    Raises:
        UsageError: ``registry`` is given without ``subject``.
    """

    def __init__(
        self,
        max_event_bytes: int = 512 * 1024,
        *,
        registry: SchemaRegistryClient | None = None,
        subject: str | None = None,
        auto_register: bool = True,
        schemas: SchemaSet | None = None,
    ) -> None:
        if registry is not None and not subject:
            raise UsageError("EventCodec: a schema registry needs the subject of the event schema")
        self.max_event_bytes = max_event_bytes
        self.registry = registry
        self.subject = subject
        self.auto_register = auto_register
        self._schemas = load_schemas() if schemas is None else schemas
        self._schema = self._schemas.parsed[EVENT_SCHEMA]
        self._schema_text = self._schemas.schema_json(EVENT_SCHEMA)
        self._canonical = fastavro.schema.to_parsing_canonical_form(self._schema)
        self._header: bytes | None = None if registry is not None else _wire_header(BUILTIN_SCHEMA_ID)
        self._own_ids = {BUILTIN_SCHEMA_ID}
        # registry schema id -> parsed writer schema (our own parsed schema when the texts are equivalent)
        self._writers: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: StreamsConfig) -> EventCodec:
        """Builds an app's codec: its size limit, and its registry when ``schema_registry_url`` is set."""
        if config.schema_registry_url is None:
            return cls(config.max_event_bytes)
        return cls(
            config.max_event_bytes,
            registry=SchemaRegistryClient(config.schema_registry_url),
            subject=f"{config.topic('events')}-value",
        )

    @property
    def schema_json(self) -> str:
        """The event schema as registered (self-contained JSON)."""
        return self._schema_text

    @property
    def schema_id(self) -> int:
        """The id written into Avro records; registers or looks up the schema on first use.

        Raises:
            SerializationError: The registry fails, or (``auto_register=False``) the schema is missing.
        """
        header = self._header
        if header is None:
            header = self._resolve_header()
        return int.from_bytes(header[1:5], "big")

    def encode_json(self, event: Event) -> bytes:
        """Encodes an event as its Inngest JSON object, UTF-8.

        Raises:
            EventValidationError: The result is larger than ``max_event_bytes`` (field ``<record>``).
            SerializationError: The event's data was changed after creation to something not JSON.
        """
        try:
            raw = _dumps_event(event.to_dict()).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"event {event.id} is not JSON-serializable: {exc}") from None
        self._raise_if_oversize(len(raw), "encoded")
        return raw

    def encode_avro(self, event: Event) -> bytes:
        """Encodes an event as Avro in the Confluent wire format.

        Raises:
            EventValidationError: The result is larger than ``max_event_bytes`` (field ``<record>``).
            SerializationError: The registry fails, or the data is no longer JSON-serializable.
        """
        header = self._header
        if header is None:
            header = self._resolve_header()
        user = event.user
        record = {
            "id": event.id,
            "name": event.name,
            "data": compact_json(event.data),
            "ts": event.ts,
            "v": event.v,
            "user": None if user is None else compact_json(user),
        }
        out = io.BytesIO()
        out.write(header)
        fastavro.schemaless_writer(out, self._schema, record)
        raw = out.getvalue()
        self._raise_if_oversize(len(raw), "encoded")
        return raw

    def decode(self, raw: bytes, *, default_id: str | None = None, default_ts: int | None = None) -> Event:
        """Decodes one record, JSON or Avro, detected from its first byte.

        Args:
            raw: The record value.
            default_id: Id for a JSON event without one (e.g. derived from topic, partition and offset,
                so decoding the same record twice gives the same id). ``None`` draws a new ULID.
            default_ts: ``ts`` for a JSON event without one (e.g. the record's timestamp). ``None`` is now.

        Returns:
            The validated event.

        Raises:
            EventValidationError: The record is larger than ``max_event_bytes`` (field ``<record>``).
            SerializationError: The record is neither format, is malformed, or holds an invalid event;
                ``.field`` names the event field when one is at fault.
        """
        if not raw:
            raise SerializationError(
                "empty record: expected a JSON event object or Avro in the Confluent wire format"
            )
        self._raise_if_oversize(len(raw), "record is")
        first = raw[0]
        if first == AVRO_MAGIC:
            return self._decode_avro(raw)
        if first != 0x7B:  # "{"
            start = raw[3:] if raw.startswith(_UTF8_BOM) else raw
            start = start.lstrip(_JSON_WHITESPACE)
            if not start.startswith(b"{"):
                raise SerializationError(
                    f"record starts with byte 0x{first:02x} ({bytes(raw[:16])!r}): expected a JSON object "
                    "('{') or Avro in the Confluent wire format (magic byte 0x00)"
                )
        try:
            obj = json.loads(raw, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise SerializationError(
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        except UnicodeDecodeError:
            raise SerializationError("invalid JSON: not UTF-8 text") from None
        except RecursionError:
            raise SerializationError("invalid JSON: nested too deeply") from None
        except ValueError as exc:
            raise SerializationError(f"invalid JSON: {exc}") from None
        return _event_from_dict(obj, default_id, default_ts)

    def _decode_avro(self, raw: bytes) -> Event:
        if len(raw) < 5:
            raise SerializationError(f"truncated Avro record: {len(raw)} bytes, the wire header alone is 5")
        schema_id = int.from_bytes(raw[1:5], "big")
        writer = self._schema if schema_id in self._own_ids else self._writer(schema_id)
        body = io.BytesIO(raw)
        body.seek(5)
        try:
            if writer is self._schema:
                record = fastavro.schemaless_reader(body, writer, None)
            else:
                record = fastavro.schemaless_reader(body, writer, self._schema)
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
            raise SerializationError(
                f"invalid Avro event (schema id {schema_id}): {type(exc).__name__}: {exc}"
            ) from None
        if body.tell() != len(raw):
            raise SerializationError(
                f"invalid Avro event (schema id {schema_id}): {len(raw) - body.tell()} bytes after the record"
            )
        if not isinstance(record, dict):
            raise SerializationError(f"invalid Avro event (schema id {schema_id}): not a record")
        user = record["user"]
        try:
            return Event(
                name=record["name"],
                data=_loads_object(record["data"], "data"),
                id=record["id"],
                ts=record["ts"],
                v=record["v"],
                user=None if user is None else _loads_object(user, "user"),
            )
        except EventValidationError as exc:
            raise _as_serialization_error(exc) from None

    def _writer(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        if self.registry is None:
            raise SerializationError(
                f"Avro event written with schema id {schema_id} but no schema registry is configured "
                f"(schema_registry_url); only id {BUILTIN_SCHEMA_ID}, the built-in schema, is readable"
            )
        text = self.registry.get_schema(schema_id)
        parsed = parse_writer_schema(_renamed_to_event(text))
        if fastavro.schema.to_parsing_canonical_form(parsed) == self._canonical:
            parsed = self._schema
        else:
            _raise_if_incompatible(parsed, self._schema, schema_id)
        with self._lock:
            self._writers[schema_id] = parsed
        return parsed

    def _resolve_header(self) -> bytes:
        with self._lock:
            if self._header is None:
                assert self.registry is not None and self.subject is not None
                if self.auto_register:
                    schema_id = self.registry.register(self.subject, self._schema_text)
                else:
                    found = self.registry.lookup(self.subject, self._schema_text)
                    if found is None:
                        raise SerializationError(
                            f"the streams.Event schema is not registered under subject {self.subject!r} "
                            f"at {self.registry.url} and auto_register is off"
                        )
                    schema_id = found
                self._own_ids.add(schema_id)
                self._header = _wire_header(schema_id)
            return self._header

    def _raise_if_oversize(self, size: int, what: str) -> None:
        if size > self.max_event_bytes:
            raise EventValidationError(
                "<record>", f"{what} {size} bytes, more than max_event_bytes={self.max_event_bytes}"
            )


def _wire_header(schema_id: int) -> bytes:
    return bytes((AVRO_MAGIC,)) + schema_id.to_bytes(4, "big")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def _loads_object(text: str, field: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise SerializationError(f"not valid JSON text: {exc}", field=field) from None
    except RecursionError:
        raise SerializationError("JSON nested too deeply", field=field) from None
    if not isinstance(value, dict):
        raise SerializationError(f"expected JSON object text, got {type(value).__name__}", field=field)
    return value


def _event_from_dict(obj: Any, default_id: str | None, default_ts: int | None) -> Event:
    try:
        return Event.from_dict(obj, default_id=default_id, default_ts=default_ts)
    except EventValidationError as exc:
        raise _as_serialization_error(exc) from None


def _as_serialization_error(exc: EventValidationError) -> SerializationError:
    prefix = f"event field {exc.field!r}: "
    text = str(exc)
    return SerializationError(text[len(prefix) :] if text.startswith(prefix) else text, field=exc.field)


def _renamed_to_event(schema_text: str) -> str:
    """Renames a writer's top-level record to ``streams.Event`` so resolution matches it by name."""
    try:
        schema = json.loads(schema_text)
    except ValueError as exc:
        raise SerializationError(f"registry schema is not JSON: {exc}") from None
    if isinstance(schema, dict) and schema.get("type") == "record":
        schema = {**schema, "name": "Event", "namespace": "streams"}
    return json.dumps(schema)


def _raise_if_incompatible(writer: Any, reader: Any, schema_id: int) -> None:
    """Fails at first sight of a writer schema that cannot resolve to ours, not at the first record."""
    writer_fields = {f["name"] for f in writer.get("fields", ())} if isinstance(writer, dict) else set()
    missing = [f["name"] for f in reader["fields"] if f["name"] not in writer_fields and "default" not in f]
    if missing:
        raise SerializationError(
            f"Avro writer schema id {schema_id} cannot be read as streams.Event: "
            f"it lacks field(s) {', '.join(missing)} which have no default"
        )


class RecordCodec:
    """Encodes and decodes the engine's internal records with their Avro schemas.

    Values are dicts shaped like the schema. A union of several record types takes and gives a tuple
    ``("streams.StartRun", {...})``; a union of ``null`` and one record takes and gives the dict or
    ``None``. Keys the schema does not have are ignored when encoding.

    Args:
        schemas: The schema set; default the package's own.
    """

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        self._schemas = load_schemas() if schemas is None else schemas
        self._parsed: dict[str, Any] = {}
        for full, parsed in self._schemas.parsed.items():
            if parsed.get("type") == "record":
                self._parsed[full] = parsed
                self._parsed[full.rpartition(".")[2]] = parsed

    @property
    def names(self) -> list[str]:
        """Full names of the record schemas this codec encodes, sorted."""
        return sorted(name for name in self._parsed if "." in name)

    def _schema(self, schema_name: str) -> Any:
        parsed = self._parsed.get(schema_name)
        if parsed is None:
            raise SerializationError(f"unknown record schema {schema_name!r}; known: {', '.join(self.names)}")
        return parsed

    def encode(self, schema_name: str, value: Mapping[str, Any]) -> bytes:
        """Encodes ``value`` as a record of ``schema_name`` (``"streams.RunCommand"`` or ``"RunCommand"``).

        Raises:
            SerializationError: Unknown schema, or ``value`` does not fit it (the message names the field).
        """
        schema = self._schema(schema_name)
        out = io.BytesIO()
        out.write(b"\x01")
        try:
            fastavro.schemaless_writer(out, schema, value)
        except Exception as exc:  # fastavro raises TypeError, ValueError, KeyError, ... for a bad value
            raise SerializationError(f"cannot encode {schema_name}: {_explain(value, schema, exc)}") from None
        return out.getvalue()

    def decode(self, schema_name: str, raw: bytes) -> dict[str, Any]:
        """Decodes a record of ``schema_name`` written by :meth:`encode`.

        Raises:
            SerializationError: Unknown schema or format byte, or bytes that are not such a record.
        """
        schema = self._schema(schema_name)
        if not raw or raw[0] != RECORD_FORMAT_VERSION:
            got = f"0x{raw[0]:02x}" if raw else "an empty record"
            raise SerializationError(
                f"cannot decode {schema_name}: expected format byte 0x{RECORD_FORMAT_VERSION:02x}, got {got} "
                "(written by a newer release, or not an internal record)"
            )
        body = io.BytesIO(raw)
        body.seek(1)
        try:
            value = fastavro.schemaless_reader(
                body, schema, None, return_record_name=True, return_record_name_override=True
            )
        except Exception as exc:  # fastavro raises EOFError, ValueError, IndexError, ... on bad bytes
            raise SerializationError(f"cannot decode {schema_name}: {type(exc).__name__}: {exc}") from None
        if body.tell() != len(raw):
            raise SerializationError(
                f"cannot decode {schema_name}: {len(raw) - body.tell()} bytes after the record"
            )
        assert isinstance(value, dict)  # only record schemas are registered
        return value


def _explain(value: Any, schema: Any, exc: Exception) -> str:
    """Prefers the validator's message, which names the path to the bad field, to the writer's."""
    try:
        fastavro.validation.validate(value, schema, raise_errors=True)
    except fastavro.validation.ValidationError as invalid:
        return "; ".join(str(error) for error in invalid.errors)
    except Exception as other:  # the validator itself may choke on very wrong values
        return f"{type(exc).__name__}: {exc} ({type(other).__name__}: {other})"
    return f"{type(exc).__name__}: {exc}"
