r"""Match keys and the Java-compatible partitioner.

A correlated event travels to the ``waits`` topic under a *match key* that names what it correlates on::

    match key = event name ∥ 0x00 ∥ field path ∥ 0x00 ∥ canonical JSON of the value
    name key  = event name ∥ 0x00                      (per-name routing, no field)

The key is unambiguous: canonical JSON is never empty and never holds a raw ``0x00`` (JSON escapes control
characters) and a field path may not hold one either, so reading from the right always splits a key back
into its parts, whatever the event name holds. Canonical JSON sorts object keys and writes integral floats
as integers (``1.0`` → ``1``), so two values have the same key exactly when CEL's ``==`` calls them equal
(CEL compares ``1 == 1.0`` as true, ``1 == "1"`` and ``true == 1`` as false). Strings holding ``"`` or
``\`` are escaped by the JSON encoder and give distinct, stable keys.

Partitions are chosen exactly as the Java client's default partitioner does for a non-null key
(``Utils.toPositive(Utils.murmur2(key)) % numPartitions``); librdkafka's ``partitioner=murmur2_random`` is
the same function, so a record produced by any client lands where :func:`partition_for` says.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias

from streams._json import canonical_json
from streams.errors import UsageError

__all__ = [
    "MISSING",
    "SEPARATOR",
    "Missing",
    "correlation_key",
    "extract",
    "match_key",
    "murmur2",
    "name_key",
    "parse_path",
    "partition_for",
]

#: Separates the parts of a key.
SEPARATOR: Final = b"\x00"


class Missing(enum.Enum):
    """Type of :data:`MISSING`: a field that is absent (as opposed to present and ``null``)."""

    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


#: Returned by :func:`extract` when the event has no value at the path.
MISSING: Final = Missing.MISSING

#: What :func:`extract` returns: a JSON value or :data:`MISSING`.
Extracted: TypeAlias = Any | Literal[Missing.MISSING]

#: Top-level names that are CEL variables, not event fields: a path starting with one is a mistake.
_VARIABLE_NAMES = frozenset({"async", "event"})


@lru_cache(maxsize=4096)
def parse_path(path: str) -> tuple[str, ...]:
    """Splits and checks a dotted field path such as ``"data.cart_id"``.

    Paths are relative to the event object (``{"name", "data", "id", "ts", "v", "user"}``), so
    ``"data.cart_id"`` reads ``event["data"]["cart_id"]``. Each segment is an object key; lists are not
    indexed.

    Args:
        path: The dotted path.

    Returns:
        The segments.

    Raises:
        UsageError: The path is empty, has an empty segment or a NUL character, or starts with ``async.``
            or ``event.`` (a match path names a field of the event, e.g. ``"data.cart_id"``).
    """
    if not isinstance(path, str) or not path:
        raise UsageError(f"a match path must be a non-empty string such as 'data.cart_id', got {path!r}")
    if "\x00" in path:
        raise UsageError(f"match path {path!r} must not contain a NUL character")
    segments = tuple(path.split("."))
    if any(not segment for segment in segments):
        raise UsageError(f"match path {path!r} has an empty segment; write it like 'data.cart_id'")
    if segments[0] in _VARIABLE_NAMES and len(segments) > 1:
        suggestion = ".".join(segments[1:])
        raise UsageError(
            f"match path {path!r} names a field of the event, without the {segments[0]!r} prefix: "
            f"write {suggestion!r}"
        )
    return segments


def extract(obj: Mapping[str, Any], path: str | Sequence[str]) -> Extracted:
    """Reads the value at a dotted path of an event object.

    Args:
        obj: The event as a dict (``Event.to_dict()``) or any nested mapping.
        path: A dotted path (``"data.cart_id"``) or its segments.

    Returns:
        The value, which may be ``None`` (a JSON ``null``), or :data:`MISSING` when a segment is absent
        or a step of the path is not an object. An event missing the field has no key for that path and
        is not routed under it.
    """
    segments = parse_path(path) if isinstance(path, str) else path
    current: Any = obj
    for segment in segments:
        if not isinstance(current, Mapping):
            return MISSING
        try:
            current = current[segment]
        except KeyError:
            return MISSING
    return current


def match_key(event_name: str, path: str, value: Any) -> bytes:
    """Returns the match key of a value at a path of an event name.

    Args:
        event_name: The event name, e.g. ``"cart/purchased"``.
        path: The dotted field path, e.g. ``"data.cart_id"``.
        value: The JSON value at that path (not :data:`MISSING`).

    Returns:
        ``event name ∥ 0x00 ∥ path ∥ 0x00 ∥ canonical JSON of value``, UTF-8 encoded.

    Raises:
        UsageError: The path is malformed (see :func:`parse_path`).
        ValueError: ``value`` is :data:`MISSING`: an absent field has no key.
        SerializationError: The value is not JSON (e.g. ``NaN``).
    """
    if value is MISSING:
        raise ValueError(f"no match key for {event_name!r} at {path!r}: the field is missing")
    parse_path(path)
    return b"".join(
        (
            event_name.encode(),
            SEPARATOR,
            path.encode(),
            SEPARATOR,
            canonical_json(value).encode(),
        )
    )


def name_key(event_name: str) -> bytes:
    """Returns the key of an event routed by name only (for waits that cannot be keyed by a field).

    It ends with the separator and nothing after it, so it never equals a :func:`match_key` (canonical JSON
    is never empty).

    Args:
        event_name: The event name.

    Returns:
        ``event name ∥ 0x00``, UTF-8 encoded.
    """
    return event_name.encode() + SEPARATOR


def correlation_key(event_name: str, path: str | None) -> bytes:
    """Returns the key of a ``correlations`` record: ``event name ∥ 0x00 ∥ path`` (path empty for None).

    Args:
        event_name: The event name.
        path: The routed path, or ``None`` for per-name routing.

    Returns:
        The record key, UTF-8 encoded.
    """
    return event_name.encode() + SEPARATOR + (b"" if path is None else path.encode())


_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995
_MASK32: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Computes Kafka's murmur2 hash, bit for bit as ``org.apache.kafka.common.utils.Utils.murmur2``.

    Args:
        data: The key bytes.

    Returns:
        The hash as a signed 32-bit integer, as Java returns it.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    remainder = length & 3
    if remainder:
        # Java's switch falls through: 3 → 2 → 1, then one multiplication.
        if remainder == 3:
            h ^= data[tail + 2] << 16
        if remainder >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def partition_for(key: bytes, num_partitions: int) -> int:
    """Returns the partition the Java default partitioner (and librdkafka ``murmur2_random``) picks.

    Args:
        key: The record key (not empty-vs-null sensitive: an empty key is hashed like any other).
        num_partitions: The topic's partition count.

    Returns:
        ``toPositive(murmur2(key)) % num_partitions``.

    Raises:
        ValueError: ``num_partitions`` is less than 1.
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
