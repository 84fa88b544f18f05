"""The released Avro schemas: loading, fingerprints and the compatibility rule.

Layout: ``schemas/avro/v<N>/<namespace>.<Name>.avsc``, one named type per file
(the convention of :func:`fastavro.schema.load_schema`), every released version
kept forever. Names never carry the version: the namespace is ``io.taskstream``
in every version, because Avro schema resolution (and a schema registry's
compatibility check) matches records by name.

Two top-level schemas per version: ``io.taskstream.Envelope`` (every event, on
every topic) and ``io.taskstream.TaskState`` (the processor's task table); from
v2 on also the state records of the other entity kinds (``GroupState``,
``ScheduleState``: :data:`ENTITY_STATES`), stored in the same table under their
own keys and told apart by their fingerprints (D19). Each
is *expanded*: every named type it references is inlined where it is first
used, which gives the self-contained JSON that fastavro parses, that a schema
registry stores and whose Parsing Canonical Form is fingerprinted (CRC-64-AVRO,
the Rabin fingerprint of the Avro spec, as used by single-object encoding).

The newest version is the one this build writes and reads into; every older
version stays readable, because a reader finds the writer's schema by its
fingerprint and resolves it against the newest. :func:`check_full_compatible`
is the rule a new version must pass against the previous one (tests run it on
every consecutive pair), except where :data:`BACKWARD_ONLY` says why a version
only adds what old readers cannot know (new event bodies):
:func:`check_version_compatible` applies the rule that holds.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from taskstream.schemas.errors import IncompatibleSchemaError, SchemaLoadError

NAMESPACE = "io.taskstream"
ENVELOPE = f"{NAMESPACE}.Envelope"
TASK_STATE = f"{NAMESPACE}.TaskState"
TOP_LEVEL = (ENVELOPE, TASK_STATE)
#: the state records of the other entity kinds (D19), from the version that added them
GROUP_STATE = f"{NAMESPACE}.GroupState"
SCHEDULE_STATE = f"{NAMESPACE}.ScheduleState"
ENTITY_STATES = (GROUP_STATE, SCHEDULE_STATE)
AVRO_DIR = Path(__file__).resolve().parent / "avro"

_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})

JsonSchema = Any  # an Avro schema as parsed JSON: str, list or dict


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One top-level schema of one released version."""

    version: int
    name: str  # full name, e.g. io.taskstream.Envelope
    schema: JsonSchema  # expanded JSON, with docs and defaults (what a registry stores)
    parsed: Any  # fastavro's parsed form, parsed once and reused for every record
    canonical: str  # Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of ``canonical``, 8 bytes little-endian

    @property
    def json(self) -> str:
        return json.dumps(self.schema, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every released version of both top-level schemas, oldest first."""

    versions: tuple[int, ...]
    envelopes: tuple[SchemaVersion, ...]
    states: tuple[SchemaVersion, ...]
    #: every version of the other kinds' state records (ENTITY_STATES), oldest first
    entities: tuple[SchemaVersion, ...] = ()

    @property
    def envelope(self) -> SchemaVersion:
        """The schema this build writes events with."""
        return self.envelopes[-1]

    @property
    def state(self) -> SchemaVersion:
        """The schema this build writes task states with."""
        return self.states[-1]

    def by_fingerprint(self) -> dict[bytes, SchemaVersion]:
        return {s.fingerprint: s for s in (*self.envelopes, *self.states, *self.entities)}

    def entity_versions(self, name: str) -> tuple[SchemaVersion, ...]:
        """Every version of one kind's state record (``name``: a full Avro name)."""
        return tuple(v for v in self.entities if v.name == name)


def load_named_types(directory: Path) -> dict[str, JsonSchema]:
    """Read every ``.avsc`` of one version directory: full name -> JSON."""
    types: dict[str, JsonSchema] = {}
    for path in sorted(directory.glob("*.avsc")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaLoadError(f"cannot read Avro schema {path}: {exc}") from exc
        full = f"{schema.get('namespace', NAMESPACE)}.{schema['name']}"
        if path.name != f"{full}.avsc":
            raise SchemaLoadError(f"{path} defines {full}; name the file {full}.avsc")
        types[full] = schema
    return types


def expand(name: str, types: Mapping[str, JsonSchema]) -> JsonSchema:
    """The schema ``name`` with every referenced named type inlined at first use."""
    defined: set[str] = set()

    def walk(node: JsonSchema, namespace: str) -> JsonSchema:
        if isinstance(node, str):
            if node in _PRIMITIVES:
                return node
            full = node if "." in node else f"{namespace}.{node}"
            if full in defined:
                return full
            if full not in types:
                raise SchemaLoadError(f"Avro type {full} is referenced but no {full}.avsc exists")
            return walk(copy.deepcopy(types[full]), namespace)
        if isinstance(node, list):
            return [walk(branch, namespace) for branch in node]
        kind = node["type"]
        if kind in ("record", "enum", "fixed"):
            namespace = node.get("namespace", namespace)
            defined.add(f"{namespace}.{node['name']}")
            if kind == "record":
                for field in node["fields"]:
                    field["type"] = walk(field["type"], namespace)
            return node
        if kind == "array":
            node["items"] = walk(node["items"], namespace)
        elif kind == "map":
            node["values"] = walk(node["values"], namespace)
        return node

    return walk(name, NAMESPACE)


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint of the Avro specification (CRC-64-AVRO)."""
    return int.from_bytes(bytes.fromhex(fingerprint(data.decode("utf-8"), "CRC-64-AVRO")), "little")


def build_version(version: int, name: str, types: Mapping[str, JsonSchema]) -> SchemaVersion:
    schema = expand(name, types)
    canonical = to_parsing_canonical_form(schema)
    parsed = parse_schema(copy.deepcopy(schema))
    fp = crc64_avro(canonical.encode("utf-8")).to_bytes(8, "little")
    return SchemaVersion(version, name, schema, parsed, canonical, fp)


def version_dirs(root: Path = AVRO_DIR) -> list[tuple[int, Path]]:
    found = []
    for child in root.iterdir():
        match = _VERSION_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def load_catalog(root: Path = AVRO_DIR) -> Catalog:
    """Load every version under ``root`` (``v1``, ``v2``, ...), oldest first."""
    dirs = version_dirs(root)
    if not dirs:
        raise SchemaLoadError(f"no Avro schema versions (v1, v2, ...) under {root}")
    envelopes: list[SchemaVersion] = []
    states: list[SchemaVersion] = []
    entities: list[SchemaVersion] = []
    for number, directory in dirs:
        types = load_named_types(directory)
        envelopes.append(build_version(number, ENVELOPE, types))
        states.append(build_version(number, TASK_STATE, types))
        entities.extend(build_version(number, name, types)
                        for name in ENTITY_STATES if name in types)
    return Catalog(tuple(n for n, _ in dirs), tuple(envelopes), tuple(states), tuple(entities))


@functools.cache
def catalog() -> Catalog:
    """The catalog shipped with this package, loaded once per process."""
    return load_catalog()


# --- compatibility ------------------------------------------------------------


def sample_records(schema: JsonSchema) -> list[Any]:
    """Records that together use every union branch and enum symbol of ``schema``.

    Record ``(i, j)`` takes branch ``i mod n`` of every n-branch union that is not
    inside another union, and branch (or symbol) ``j mod n`` of everything nested
    inside one, and symbol ``i mod n`` of an enum outside any union. Running both
    indices over the widest choice covers every combination of an outer branch
    (for example a body type of the envelope) with each inner choice (its
    nullable fields, its enum symbols). Named union branches are written in
    fastavro's tuple notation so the branch is explicit.
    """
    named: dict[str, JsonSchema] = {}
    width = max(_widths(schema, named, NAMESPACE), default=1)
    named.clear()
    return [
        _sample(schema, (i, j), 0, named, NAMESPACE) for i in range(width) for j in range(width)
    ]


def _widths(node: JsonSchema, named: dict[str, JsonSchema], ns: str) -> Iterator[int]:
    if isinstance(node, list):
        yield len(node)
        for branch in node:
            yield from _widths(branch, named, ns)
    elif isinstance(node, dict):
        kind = node["type"]
        if kind in ("record", "enum", "fixed"):
            ns = node.get("namespace", ns)
            named[f"{ns}.{node['name']}"] = node
        if kind == "enum":
            yield len(node["symbols"])
        elif kind == "record":
            for field in node["fields"]:
                yield from _widths(field["type"], named, ns)
        elif kind in ("array", "map"):
            yield from _widths(node["items" if kind == "array" else "values"], named, ns)
        else:
            yield from _widths(kind, named, ns)


_PRIMITIVE_SAMPLES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 1_700_000_000_000,
    "float": 1.5,
    "double": 2.5,
    "bytes": b"\x00\xffpayload",
    "string": "text",
}


def _sample(
    node: JsonSchema, index: tuple[int, int], depth: int, named: dict[str, JsonSchema], ns: str
) -> Any:
    i = index[min(depth, len(index) - 1)]
    if isinstance(node, str):
        if node in _PRIMITIVE_SAMPLES:
            return _PRIMITIVE_SAMPLES[node]
        return _sample(named[node if "." in node else f"{ns}.{node}"], index, depth, named, ns)
    if isinstance(node, list):
        branch = node[i % len(node)]
        value = _sample(branch, index, depth + 1, named, ns)
        full = _named_full(branch, ns)
        return (full, value) if full is not None and isinstance(value, dict) else value
    kind = node["type"]
    if kind in ("record", "enum", "fixed"):
        ns = node.get("namespace", ns)
        named[f"{ns}.{node['name']}"] = node
    if kind == "record":
        return {f["name"]: _sample(f["type"], index, depth, named, ns) for f in node["fields"]}
    if kind == "enum":
        return node["symbols"][i % len(node["symbols"])]
    if kind == "fixed":
        return b"\x01" * node["size"]
    if kind == "array":
        return [_sample(node["items"], index, depth, named, ns)]
    if kind == "map":
        return {"k": _sample(node["values"], index, depth, named, ns)}
    return _sample(kind, index, depth, named, ns)


def _named_full(node: JsonSchema, ns: str) -> str | None:
    if isinstance(node, dict) and node.get("type") == "record":
        return f"{node.get('namespace', ns)}.{node['name']}"
    if isinstance(node, str) and node not in _PRIMITIVES:
        return node if "." in node else f"{ns}.{node}"
    return None


def check_readable(writer: JsonSchema, reader: JsonSchema,
                   records: list[Any] | None = None) -> None:
    """Write ``records`` (default: samples of ``writer``) with ``writer`` and read them
    with ``reader``."""
    parsed_writer = parse_schema(copy.deepcopy(writer))
    parsed_reader = parse_schema(copy.deepcopy(reader))
    for record in sample_records(writer) if records is None else records:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed_writer, record)
        buffer.seek(0)
        try:
            fastavro.schemaless_reader(buffer, parsed_writer, parsed_reader)
        except Exception as exc:  # fastavro raises several types; all mean "cannot resolve"
            raise IncompatibleSchemaError(
                f"data written with {writer.get('name', writer)!s} cannot be read with the "
                f"other version: {type(exc).__name__}: {exc}"
            ) from exc


def check_full_compatible(old: JsonSchema, new: JsonSchema) -> None:
    """FULL compatibility: old data reads with the new schema and new data with the old.

    In practice: add or remove fields only when they have defaults, never
    change a field's type except by Avro promotion both ways cannot give (so
    don't), never remove an enum symbol or union branch, and never add one
    unless every reader already knows it (an old reader meeting a new branch
    fails). Raises :class:`IncompatibleSchemaError` naming the direction.
    """
    try:
        check_readable(old, new)
    except IncompatibleSchemaError as exc:
        raise IncompatibleSchemaError(f"backward: new schema cannot read old data; {exc}") from exc
    try:
        check_readable(new, old)
    except IncompatibleSchemaError as exc:
        raise IncompatibleSchemaError(f"forward: old schema cannot read new data; {exc}") from exc


#: (version, top-level name) -> why that version is only BACKWARD compatible with the one
#: before (every other pair must be FULL compatible)
BACKWARD_ONLY: Mapping[tuple[int, str], str] = {
    (2, ENVELOPE): (
        "v2 adds event bodies (DependencyRegistered, ParentUpdate, GroupCreated, ScheduleSet, "
        "ScheduleCommand) and timer kinds (DEPENDENCY_CHECK, SCHEDULE_DUE) for issue 15 "
        "(D19): a v1 reader cannot read an event that uses one. Events shaped like v1's "
        "still read with v1 (checked), but a v1 reader does not know v2's fingerprint "
        "anyway: upgrade every processor and worker before any producer writes v2"),
}


def check_version_compatible(old: SchemaVersion, new: SchemaVersion) -> str:
    """The rule between consecutive versions of one top-level schema: FULL, unless
    :data:`BACKWARD_ONLY` says why not; then new reads old, and old reads the records of
    new that only use what old has. Returns the rule checked ("FULL" or "BACKWARD")."""
    if (new.version, new.name) not in BACKWARD_ONLY:
        check_full_compatible(old.schema, new.schema)
        return "FULL"
    try:
        check_readable(old.schema, new.schema)
    except IncompatibleSchemaError as exc:
        raise IncompatibleSchemaError(f"backward: new schema cannot read old data; {exc}") from exc
    try:
        check_readable(new.schema, old.schema, sample_records(old.schema))
    except IncompatibleSchemaError as exc:
        raise IncompatibleSchemaError(
            f"forward: the old schema cannot read v{old.version}-shaped data written with "
            f"v{new.version}; {exc}") from exc
    return "BACKWARD"
