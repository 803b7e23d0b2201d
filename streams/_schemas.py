"""Finds, loads and parses the Avro schemas of every record the system writes.

The ``.avsc`` files live in the repository's top-level ``schemas/`` folder; a wheel carries them as
``streams/_avsc/``. Each file holds one top-level named type; files refer to each other's types by full
name (``"streams.Event"``), so they are parsed in dependency order with one shared table of named types.

Two forms of each schema are kept:

- the **published** form, exactly as written (logical types, docs); :meth:`SchemaSet.schema_json`
  returns it self-contained (referenced types inlined) for a schema registry or another Avro library;
- the **parsed** form for fastavro, with ``logicalType`` annotations removed. The binary encoding is the
  same, but fastavro then reads ``timestamp-millis`` as plain ``int`` milliseconds instead of building a
  ``datetime`` for every record on the hot path.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from streams.errors import SerializationError

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})


def schemas_dir() -> Path:
    """Returns the folder holding the ``.avsc`` files.

    ``streams/_avsc`` inside an installed wheel, else the repository's ``schemas/`` next to the package
    (editable install or source checkout).

    Raises:
        SerializationError: Neither folder exists (a broken installation).
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "_avsc", package.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise SerializationError(f"Avro schemas not found in {package / '_avsc'} or {package.parent / 'schemas'}")


@dataclass(frozen=True)
class SchemaSet:
    """All schemas of one folder, parsed.

    Attributes:
        directory: Where the files were read from.
        published: Full name of each file's top-level type → its JSON as written.
        parsed: Full name of each file's top-level type → fastavro parsed schema (logical types removed).
        definitions: Full name of every named type (nested ones too) → its JSON definition.
    """

    directory: Path
    published: Mapping[str, Any]
    parsed: Mapping[str, Any]
    definitions: Mapping[str, Any]

    @property
    def names(self) -> list[str]:
        """Full names of the top-level types, sorted."""
        return sorted(self.published)

    def resolve_name(self, name: str) -> str:
        """Returns the full name for ``name`` (``"Event"`` → ``"streams.Event"``).

        Raises:
            SerializationError: No top-level schema has that name.
        """
        full = name if "." in name else f"streams.{name}"
        if full not in self.parsed:
            raise SerializationError(f"unknown schema {name!r}; known: {', '.join(self.names)}")
        return full

    def schema_json(self, name: str) -> str:
        """Returns the published schema of ``name`` as self-contained JSON text.

        Types defined in other files are inlined at their first use, as the Avro specification requires
        for a standalone schema (registries, the reference ``avro`` library).
        """
        full = self.resolve_name(name)
        inlined = _inline(self.published[full], "", set(), self.definitions)
        return json.dumps(inlined, separators=(",", ":"), ensure_ascii=False)


@functools.cache
def load_schemas(directory: Path | None = None) -> SchemaSet:
    """Loads and parses every ``.avsc`` file of ``directory`` (default :func:`schemas_dir`), once.

    Raises:
        SerializationError: A file is not valid JSON or Avro, or refers to an unknown type.
    """
    folder = schemas_dir() if directory is None else directory
    documents: dict[str, Any] = {}
    for path in sorted(folder.glob("*.avsc")):
        try:
            documents[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SerializationError(f"schema file {path}: {exc}") from None

    definitions: dict[str, Any] = {}
    top_level: dict[str, str] = {}  # file -> full name of its top-level type
    requires: dict[str, set[str]] = {}
    for file, doc in documents.items():
        defined = dict(_definitions(doc, ""))
        for full in defined:
            if full in definitions:
                raise SerializationError(f"schema file {file}: type {full!r} is defined twice")
        definitions.update(defined)
        if not isinstance(doc, dict) or doc.get("type") not in _NAMED:
            raise SerializationError(f"schema file {file}: the top level must be a record, enum or fixed")
        top_level[file] = _fullname(doc, "")
        requires[file] = {ref for ref in _references(doc, "") if ref not in defined}
    owner = {full: file for file, doc in documents.items() for full, _ in _definitions(doc, "")}

    named: dict[str, Any] = {}
    parsed: dict[str, Any] = {}
    for file in _dependency_order(requires, owner):
        try:
            parsed[top_level[file]] = fastavro.parse_schema(_strip_logical_types(documents[file]), named)
        except Exception as exc:  # fastavro raises several exception types for a bad schema
            raise SerializationError(f"schema file {file}: {exc}") from None
    published = {top_level[file]: doc for file, doc in documents.items()}
    return SchemaSet(directory=folder, published=published, parsed=parsed, definitions=definitions)


def parse_writer_schema(schema_json: str) -> Any:
    """Parses a self-contained schema (e.g. from a registry) for fastavro, without logical types.

    Raises:
        SerializationError: The text is not a valid Avro schema.
    """
    try:
        return fastavro.parse_schema(_strip_logical_types(json.loads(schema_json)), {})
    except Exception as exc:  # fastavro raises several exception types for a bad schema
        raise SerializationError(f"invalid Avro schema: {exc}") from None


def _fullname(node: Mapping[str, Any], namespace: str) -> str:
    name = str(node["name"])
    if "." in name:
        return name
    space = node.get("namespace", namespace)
    return f"{space}.{name}" if space else name


def _namespace_of(full: str) -> str:
    return full.rpartition(".")[0]


def _definitions(node: Any, namespace: str) -> Iterator[tuple[str, Any]]:
    """Yields (full name, definition with an explicit namespace) for every named type in ``node``."""
    if isinstance(node, list):
        for item in node:
            yield from _definitions(item, namespace)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _NAMED:
            full = _fullname(node, namespace)
            definition = (
                node
                if "." in str(node["name"]) or "namespace" in node
                else {
                    **node,
                    "namespace": namespace,
                }
            )
            yield full, definition
            namespace = _namespace_of(full)
            for fld in node.get("fields", ()):
                yield from _definitions(fld["type"], namespace)
        elif kind == "array":
            yield from _definitions(node["items"], namespace)
        elif kind == "map":
            yield from _definitions(node["values"], namespace)
        else:
            yield from _definitions(kind, namespace)


def _references(node: Any, namespace: str) -> Iterator[str]:
    """Yields the full names of the named types ``node`` refers to by name."""
    if isinstance(node, str):
        if node not in _PRIMITIVES:
            yield node if "." in node or not namespace else f"{namespace}.{node}"
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, namespace)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in _NAMED:
            namespace = _namespace_of(_fullname(node, namespace))
            for fld in node.get("fields", ()):
                yield from _references(fld["type"], namespace)
        elif kind == "array":
            yield from _references(node["items"], namespace)
        elif kind == "map":
            yield from _references(node["values"], namespace)
        else:
            yield from _references(kind, namespace)


def _dependency_order(requires: Mapping[str, set[str]], owner: Mapping[str, str]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(file: str) -> None:
        if state.get(file) == 2:
            return
        if state.get(file) == 1:
            raise SerializationError(f"schema file {file}: circular reference between schema files")
        state[file] = 1
        for ref in sorted(requires[file]):
            if ref not in owner:
                raise SerializationError(f"schema file {file}: unknown type {ref!r}")
            visit(owner[ref])
        state[file] = 2
        order.append(file)

    for file in sorted(requires):
        visit(file)
    return order


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip_logical_types(item) for item in node]
    if isinstance(node, dict):
        return {key: _strip_logical_types(value) for key, value in node.items() if key != "logicalType"}
    return node


def _inline(node: Any, namespace: str, defined: set[str], definitions: Mapping[str, Any]) -> Any:
    """Returns ``node`` with every type it refers to by name defined at its first use."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = node if "." in node or not namespace else f"{namespace}.{node}"
        if full in defined or full not in definitions:
            return node
        return _inline(copy.deepcopy(definitions[full]), namespace, defined, definitions)
    if isinstance(node, list):
        return [_inline(item, namespace, defined, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    out = dict(node)
    if kind in _NAMED:
        full = _fullname(node, namespace)
        defined.add(full)
        inner = _namespace_of(full)
        if "fields" in node:
            out["fields"] = [
                {**fld, "type": _inline(fld["type"], inner, defined, definitions)} for fld in node["fields"]
            ]
    elif kind == "array":
        out["items"] = _inline(node["items"], namespace, defined, definitions)
    elif kind == "map":
        out["values"] = _inline(node["values"], namespace, defined, definitions)
    else:
        out["type"] = _inline(kind, namespace, defined, definitions)
    return out
