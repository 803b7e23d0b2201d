"""The event envelope: what users send, what triggers runs and what resolves waits.

The JSON form is Inngest's: ``{"name", "data", "id", "ts", "v"?, "user"?}``. An event is validated once,
when it is built (by the constructor or :meth:`Event.from_dict`), so every later stage can trust it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ulid import ULID

from streams.errors import EventValidationError

#: Inclusive lower and exclusive upper bound of ``Event.ts``: 1980-01-01 and 2100-01-01 UTC, in ms.
MIN_TS_MS = 315_532_800_000
MAX_TS_MS = 4_102_444_800_000
#: Longest ``name``, ``id`` and ``v``, in characters.
MAX_NAME_CHARS = 256
MAX_ID_CHARS = 256
MAX_VERSION_CHARS = 256
#: Deepest nesting of lists and objects inside ``data`` and ``user``.
MAX_JSON_DEPTH = 64


def new_event_id() -> str:
    """Returns a fresh event id: a ULID string (26 characters, sortable by creation time)."""
    return str(ULID())


def now_ms() -> int:
    """Returns the wall-clock time in milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """An event: a name, a JSON object of data, an id and a timestamp.

    ``data`` and ``user`` are kept as given, not copied (events are built on the hot path): treat them as
    read-only once the event exists. Equality compares every field; the hash uses ``name``, ``id`` and
    ``ts`` only, so events can be set members even though their data are dicts.

    Attributes:
        name: What happened, e.g. ``"cart/product.added"``; 1 to 256 printable characters.
        data: The payload, a JSON object (``str`` keys; values ``str``, ``int``, finite ``float``, ``bool``,
            ``None``, ``list`` or ``dict``).
        id: Unique id; it dedupes run creation (the same id never starts a function twice within 24 h).
            Defaults to a new ULID.
        ts: When it happened, in milliseconds since the Unix epoch (UTC), from 1980 to 2100.
            Defaults to now.
        v: Optional version of the event's schema, e.g. ``"2024-01-01.1"``.
        user: Optional JSON object about the user who caused the event (Inngest's ``user`` field).

    Raises:
        EventValidationError: A field breaks these rules; ``.field`` names it.
    """

    name: str
    data: Mapping[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_event_id)
    ts: int = field(default_factory=now_ms)
    v: str | None = None
    user: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        name = self.name
        if type(name) is not str and not isinstance(name, str):
            raise EventValidationError("name", f"expected a string, got {_type_name(name)}")
        if not name or len(name) > MAX_NAME_CHARS:
            raise EventValidationError("name", f"must be 1 to {MAX_NAME_CHARS} characters, got {len(name)}")
        if not name.isprintable() or name.isspace():
            raise EventValidationError(
                "name", f"{name!r} must be printable text (no control characters, not blank)"
            )
        data = self.data
        if type(data) is not dict:
            if not isinstance(data, Mapping):
                raise EventValidationError("data", f"expected a JSON object (dict), got {_type_name(data)}")
            data = dict(data)
            object.__setattr__(self, "data", data)
        _check_json_object("data", data)
        event_id = self.id
        if not isinstance(event_id, str):
            raise EventValidationError("id", f"expected a string, got {_type_name(event_id)}")
        if not event_id or len(event_id) > MAX_ID_CHARS:
            raise EventValidationError("id", f"must be 1 to {MAX_ID_CHARS} characters, got {len(event_id)}")
        _check_ts(self.ts)
        version = self.v
        if version is not None and (not isinstance(version, str) or len(version) > MAX_VERSION_CHARS):
            raise EventValidationError(
                "v",
                f"expected a string of at most {MAX_VERSION_CHARS} characters or None, got {version!r:.80}",
            )
        user = self.user
        if user is not None:
            if type(user) is not dict:
                if not isinstance(user, Mapping):
                    raise EventValidationError(
                        "user", f"expected a JSON object or None, got {_type_name(user)}"
                    )
                user = dict(user)
                object.__setattr__(self, "user", user)
            _check_json_object("user", user)

    def __hash__(self) -> int:
        return hash((self.name, self.id, self.ts))

    def to_dict(self) -> dict[str, Any]:
        """Returns the Inngest-compatible JSON object of this event.

        ``v`` and ``user`` appear only when set. ``data`` and ``user`` are the event's own objects, not
        copies.
        """
        out: dict[str, Any] = {"name": self.name, "data": self.data, "id": self.id, "ts": self.ts}
        if self.v is not None:
            out["v"] = self.v
        if self.user is not None:
            out["user"] = self.user
        return out

    @classmethod
    def from_dict(
        cls, obj: Mapping[str, Any], *, default_id: str | None = None, default_ts: int | None = None
    ) -> Event:
        """Builds an event from its JSON object (Inngest's format).

        Lenient where Inngest is: a missing or null ``data`` is ``{}``; a missing, null or empty ``id``
        gets ``default_id``; a missing, null or ``0`` ``ts`` gets ``default_ts``; an integral float ``ts``
        is accepted. Unknown top-level keys are ignored. Known keys are type-checked.

        Args:
            obj: The decoded JSON object.
            default_id: Id of an event without one; ``None`` draws a new ULID. Pass something derived from
                where the record was read (topic, partition, offset) to decode deterministically.
            default_ts: ``ts`` of an event without one; ``None`` means now.

        Returns:
            The validated event.

        Raises:
            EventValidationError: ``obj`` is not an object or a field is wrong; ``.field`` names it.
        """
        if not isinstance(obj, Mapping):
            raise EventValidationError("<record>", f"expected a JSON object, got {_type_name(obj)}")
        if "name" not in obj or obj["name"] is None:
            raise EventValidationError("name", "is required")
        data = obj.get("data")
        event_id = obj.get("id")
        if event_id is None or event_id == "":
            event_id = new_event_id() if default_id is None else default_id
        ts = obj.get("ts")
        if ts is None or (ts == 0 and type(ts) is int):
            ts = now_ms() if default_ts is None else default_ts
        elif type(ts) is float and ts.is_integer():
            ts = int(ts)
        return cls(
            name=obj["name"],
            data={} if data is None else data,
            id=event_id,
            ts=ts,
            v=obj.get("v"),
            user=obj.get("user"),
        )


def _check_ts(ts: Any) -> None:
    if type(ts) is not int and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise EventValidationError("ts", f"expected integer ms since epoch, got {_type_name(ts)}")
    if MIN_TS_MS <= ts < MAX_TS_MS:
        return
    hint = ""
    if MIN_TS_MS // 1000 <= ts < MAX_TS_MS // 1000:
        hint = "; it looks like seconds, multiply by 1000"
    elif MIN_TS_MS * 1000 <= ts < MAX_TS_MS * 1000:
        hint = "; it looks like microseconds, divide by 1000"
    raise EventValidationError(
        "ts", f"{ts} ms is outside 1980-01-01..2100-01-01 UTC ({MIN_TS_MS}..{MAX_TS_MS - 1}){hint}"
    )


class _BadJsonError(Exception):
    """Internal: carries the reason and, filled in while unwinding, the path to the bad value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


def _check_json_object(field_name: str, obj: Mapping[str, Any]) -> None:
    try:
        _check_dict(obj, 1)
    except _BadJsonError as exc:
        where = field_name + "".join(reversed(exc.path))
        raise EventValidationError(field_name, f"at {where}: {exc.reason}") from None
    except RecursionError:
        raise EventValidationError(field_name, "is nested too deeply") from None


def _check_dict(obj: Mapping[Any, Any], depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _BadJsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    for key, value in obj.items():
        if type(key) is not str and not isinstance(key, str):
            raise _BadJsonError(
                f"object key {key!r} is not a string ({_type_name(key)}); JSON keys must be strings"
            )
        try:
            _check_value(value, depth)
        except _BadJsonError as exc:
            exc.path.append("." + key if key.isidentifier() else f"[{key!r}]")
            raise


def _check_value(value: Any, depth: int) -> None:
    kind = type(value)
    if kind is str:
        _check_str(value)
    elif kind is int or kind is bool or value is None:
        return
    elif kind is float:
        if not math.isfinite(value):
            raise _BadJsonError(f"{value} is not allowed: JSON numbers must be finite")
    elif kind is dict:
        _check_dict(value, depth + 1)
    elif kind is list:
        if depth + 1 > MAX_JSON_DEPTH:
            raise _BadJsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        for index, item in enumerate(value):
            try:
                _check_value(item, depth + 1)
            except _BadJsonError as exc:
                exc.path.append(f"[{index}]")
                raise
    # Subclasses (str/int enums, ...) serialise as their base type.
    elif isinstance(value, str):
        _check_str(value)
    elif isinstance(value, int):
        return
    elif isinstance(value, float):
        _check_value(float(value), depth)
    elif isinstance(value, dict):
        _check_dict(value, depth + 1)
    elif isinstance(value, list):
        _check_value(list(value), depth)
    elif isinstance(value, tuple):
        raise _BadJsonError("tuple is not a JSON value; use a list")
    else:
        raise _BadJsonError(
            f"{_type_name(value)} is not a JSON value (use str, int, float, bool, None, list or dict)"
        )


def _check_str(value: str) -> None:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _BadJsonError("string holds a lone surrogate and cannot be encoded as UTF-8") from None


_JSON_TYPE_NAMES = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
}


def _type_name(value: Any) -> str:
    """Names a value's type in JSON terms (``string``, ``integer``, ...), else by its Python class."""
    return _JSON_TYPE_NAMES.get(type(value)) or type(value).__name__
