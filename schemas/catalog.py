"""The released Avro schemas: loading, fingerprints and the compatibility rule.

Layout: ``schemas/avro/v<N>/<namespace>.<Name>.avsc``, one named type per file
(the convention of :func:`fastavro.schema.load_schema`), every released version
kept forever. Names never carry the version: the namespace is ``io.taskstream``
in every version, because Avro schema resolution (and a schema registry's
compatibility check) matches records by name.

Two top-level schemas per version: ``io.taskstream.Envelope`` (every event, on
every topic) and ``io.taskstream.TaskState`` (the processor's task table); from v2
on, the states of the other entity kinds stored in the same table under their own
keys and told apart by their fingerprints (:data:`ENTITY_STATES`: groups and
schedules, D37; rate-limit buckets and concurrency keys, D32). Each
is *expanded*: every named type it references is inlined where it is first
used, which gives the self-contained JSON that fastavro parses, that a schema
registry stores and whose Parsing Canonical Form is fingerprinted (CRC-64-AVRO,
the Rabin fingerprint of the Avro spec, as used by single-object encoding).

The newest version is the one this build writes and reads into; every older
version stays readable, because a reader finds the writer's schema by its
fingerprint and resolves it against the newest. :func:`check_evolution` is the
rule a new version must pass against the previous one (tests run it on every
consecutive pair): FULL compatibility (:func:`check_full_compatible`) for
everything but new union branches and enum symbols, which may only be appended
(v2 appends the event bodies of dependencies, groups and schedules (D37), of
flow control (D32, D33) and ``PurgeRequested`` (D35), ``TaskStatus.EXPIRED`` and six
``TimerKind`` symbols, the last ``RETENTION_DUE``).
New data that uses none of them is readable by the old version; data that does
needs the new one (docs/schemas.md: upgrade readers first).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from taskstream.schemas.errors import IncompatibleSchemaError, SchemaLoadError

NAMESPACE = "io.taskstream"
ENVELOPE = f"{NAMESPACE}.Envelope"
TASK_STATE = f"{NAMESPACE}.TaskState"
TOP_LEVEL = (ENVELOPE, TASK_STATE)
#: the state records of the other entity kinds (each from the version that added it)
ENTITY_STATES = (f"{NAMESPACE}.GroupState", f"{NAMESPACE}.ScheduleState",
                 f"{NAMESPACE}.LimitState", f"{NAMESPACE}.ConcurrencyState")
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
    #: full name -> its versions, oldest first (only the versions that define it)
    entities: Mapping[str, tuple[SchemaVersion, ...]] = dataclasses.field(
        default_factory=lambda: MappingProxyType({}))

    @property
    def envelope(self) -> SchemaVersion:
        """The schema this build writes events with."""
        return self.envelopes[-1]

    @property
    def state(self) -> SchemaVersion:
        """The schema this build writes task states with."""
        return self.states[-1]

    def by_fingerprint(self) -> dict[bytes, SchemaVersion]:
        entities = [s for versions in self.entities.values() for s in versions]
        return {s.fingerprint: s for s in (*self.envelopes, *self.states, *entities)}

    def entity_versions(self, name: str) -> tuple[SchemaVersion, ...]:
        """Every version of one kind's state record (``name``: a full Avro name)."""
        return self.entities.get(name, ())


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
    envelopes, states = [], []
    entities: dict[str, list[SchemaVersion]] = {}
    for number, directory in dirs:
        types = load_named_types(directory)
        envelopes.append(build_version(number, ENVELOPE, types))
        states.append(build_version(number, TASK_STATE, types))
        for name in ENTITY_STATES:
            if name in types:
                entities.setdefault(name, []).append(build_version(number, name, types))
    return Catalog(tuple(n for n, _ in dirs), tuple(envelopes), tuple(states),
                   MappingProxyType({k: tuple(v) for k, v in entities.items()}))


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
        "(D37), flow control's (D32, D33) and PurgeRequested, RETENTION_DUE (D35): a v1 "
        "reader cannot read an event that uses one. Events shaped like v1's "
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
def check_evolution(old: JsonSchema, new: JsonSchema) -> None:
    """The rule between consecutive versions: FULL compatibility, except that union
    branches and enum symbols may be appended.

    * backward: every old record reads with the new schema;
    * appended only: each union and enum keeps the old members first, in their order
      (a branch index or symbol of old data means the same in new data);
    * forward, for what old readers know: records shaped like old data (the new fields
      take their defaults) written with the new schema read with the old one.

    Data that uses an appended branch or symbol needs a reader of the new version.
    Raises :class:`IncompatibleSchemaError` naming the rule broken.
    """
    try:
        check_readable(old, new)
    except IncompatibleSchemaError as exc:
        raise IncompatibleSchemaError(f"backward: new schema cannot read old data; {exc}") from exc
    _check_appended_only(_choices(old), _choices(new))
    parsed_new = parse_schema(copy.deepcopy(new))
    parsed_old = parse_schema(copy.deepcopy(old))
    for record in sample_records(old):
        buffer = io.BytesIO()
        try:
            fastavro.schemaless_writer(buffer, parsed_new, record)
            buffer.seek(0)
            fastavro.schemaless_reader(buffer, parsed_new, parsed_old)
        except Exception as exc:  # fastavro raises several types; all mean "cannot resolve"
            raise IncompatibleSchemaError(
                f"forward: old schema cannot read new data shaped like old data: "
                f"{type(exc).__name__}: {exc}") from exc


def _choices(schema: JsonSchema) -> dict[str, list[str]]:
    """Every union (by its path of field names) and enum (by name) -> its members."""
    found: dict[str, list[str]] = {}

    def walk(node: JsonSchema, path: str, ns: str) -> None:
        if isinstance(node, list):
            found[f"union {path}"] = [_member(b, ns) for b in node]
            for branch in node:
                walk(branch, f"{path}|{_member(branch, ns)}", ns)
        elif isinstance(node, dict):
            kind = node["type"]
            ns = node.get("namespace", ns)
            if kind == "enum":
                found[f"enum {ns}.{node['name']}"] = list(node["symbols"])
            elif kind == "record":
                for field in node["fields"]:
                    walk(field["type"], f"{path}.{field['name']}", ns)
            elif kind in ("array", "map"):
                walk(node["items" if kind == "array" else "values"], f"{path}[]", ns)

    walk(schema, "", NAMESPACE)
    return found


def _member(node: JsonSchema, ns: str) -> str:
    if isinstance(node, dict):
        if "name" in node:
            return f"{node.get('namespace', ns)}.{node['name']}"
        return json.dumps(node, sort_keys=True)
    return str(node)


def _check_appended_only(old: dict[str, list[str]], new: dict[str, list[str]]) -> None:
    for where, members in old.items():
        now = new.get(where)
        if now is not None and now[: len(members)] != members:
            raise IncompatibleSchemaError(
                f"appended only: {where} was {members}, is {now}; keep the old members "
                "first and in order, and add new ones at the end")
