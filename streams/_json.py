"""JSON helpers shared by events, match keys and the codecs.

Two encodings:

- :func:`compact_json` — sorted keys, no spaces, UTF-8 text (``ensure_ascii=False``), no ``NaN`` or
  ``Infinity``. Values round-trip exactly (``1.0`` stays a float). Used for stored JSON payloads such as
  the ``data`` field of the Avro event record.
- :func:`canonical_json` — :func:`compact_json` plus number normalisation: a float with an integral value
  is written as an integer (``1.0`` → ``1``, ``-0.0`` → ``0``), as JSON itself does not tell ``1`` from
  ``1.0``. Equal JSON values give equal text, which is what a match key needs; quotes, backslashes and
  control characters are escaped by the JSON encoder, so no value can collide with another.
"""

from __future__ import annotations

import json
import math
from typing import Any

from streams.errors import SerializationError

_compact = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"), check_circular=True
).encode


def compact_json(value: Any) -> str:
    """Encodes a JSON value as compact text with sorted keys.

    Args:
        value: A JSON value: ``str``, ``int``, finite ``float``, ``bool``, ``None``, ``list``, or ``dict``
            with ``str`` keys.

    Returns:
        The JSON text.

    Raises:
        SerializationError: The value holds ``NaN``/``Infinity`` or something JSON cannot represent.
    """
    try:
        return _compact(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"value is not JSON-serializable: {exc}") from None


def canonical_json(value: Any) -> str:
    r"""Encodes a JSON value canonically: equal JSON values give equal text.

    Keys are sorted, there are no spaces, non-ASCII characters are kept as UTF-8 text, and integral floats
    are written as integers. ``"`` and ``\`` inside strings are escaped as JSON requires.

    Args:
        value: A JSON value (see :func:`compact_json`).

    Returns:
        The canonical JSON text.

    Raises:
        SerializationError: The value holds ``NaN``/``Infinity`` or something JSON cannot represent.
    """
    # Fast path for the usual match values: no normalisation needed.
    if isinstance(value, str) or value is None or isinstance(value, int):
        return _compact(value)
    return compact_json(_normalize_numbers(value))


def _normalize_numbers(value: Any) -> Any:
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        return value  # NaN/Infinity are rejected by the encoder.
    if isinstance(value, dict):
        return {key: _normalize_numbers(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize_numbers(item) for item in value]
    return value
