"""The .avsc files: fingerprints, loading, FULL compatibility between versions, and
agreement with the dataclasses of schemas/events.py and schemas/state.py."""

from __future__ import annotations

import dataclasses
import enum
import io
import itertools
import json
import shutil
import sys
import types
import typing
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import load_schema, to_parsing_canonical_form

from taskstream.schemas import events, flowstate, state
from taskstream.schemas.catalog import (
    AVRO_DIR,
    ENTITY_STATES,
    ENVELOPE,
    NAMESPACE,
    TASK_STATE,
    Catalog,
    catalog,
    check_evolution,
    check_full_compatible,
    crc64_avro,
    load_catalog,
)
from taskstream.schemas.errors import DecodeError, IncompatibleSchemaError, SchemaLoadError
from taskstream.schemas.serde import AvroCodec

# --- CRC-64-AVRO, from the Avro specification, as an independent oracle --------

EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


def rabin(data: bytes) -> int:
    table, fp = _table(), EMPTY
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_crc64_avro_matches_the_spec_algorithm_and_a_known_vector() -> None:
    assert crc64_avro(b'"null"') == rabin(b'"null"') == 0x63DD24E7CC258F8A
    for schema in catalog().envelopes + catalog().states:
        assert schema.fingerprint == rabin(schema.canonical.encode()).to_bytes(8, "little")


def test_envelope_and_state_fingerprints_differ() -> None:
    assert catalog().envelope.fingerprint != catalog().state.fingerprint


def test_our_expansion_equals_fastavro_load_schema() -> None:
    for number in catalog().versions:
        directory = AVRO_DIR / f"v{number}"
        for name in (ENVELOPE, TASK_STATE):
            loaded = load_schema(str(directory / f"{name}.avsc"))
            version = next(
                s
                for s in catalog().envelopes + catalog().states
                if s.version == number and s.name == name
            )
            assert to_parsing_canonical_form(loaded) == version.canonical


def test_file_names_follow_the_full_name_convention(tmp_path: Path) -> None:
    (tmp_path / "v1").mkdir()
    shutil.copytree(AVRO_DIR / "v1", tmp_path / "v1", dirs_exist_ok=True)
    (tmp_path / "v1" / f"{ENVELOPE}.avsc").rename(tmp_path / "v1" / "Envelope.avsc")
    with pytest.raises(SchemaLoadError, match="name the file"):
        load_catalog(tmp_path)


def test_a_missing_referenced_type_is_reported(tmp_path: Path) -> None:
    shutil.copytree(AVRO_DIR / "v1", tmp_path / "v1")
    (tmp_path / "v1" / f"{NAMESPACE}.Backoff.avsc").unlink()
    with pytest.raises(SchemaLoadError, match="Backoff is referenced"):
        load_catalog(tmp_path)


# --- FULL compatibility between consecutive versions ------------------------------


def assert_consecutive_full_compatible(schemas: Catalog) -> int:
    """Check every consecutive pair; return how many pairs were checked."""
    pairs = 0
    for kind in (schemas.envelopes, schemas.states):
        for old, new in itertools.pairwise(kind):
            check_full_compatible(old.schema, new.schema)
            pairs += 1
    return pairs


def test_released_versions_follow_the_evolution_rule() -> None:
    """FULL compatible but for appended union branches and enum symbols (v2: issues 15, 16
    and 22)."""
    schemas = catalog()
    assert schemas.versions[0] == 1
    assert schemas.versions == tuple(range(1, len(schemas.versions) + 1)), "no gaps"
    pairs = 0
    for kind in (schemas.envelopes, schemas.states, *schemas.entities.values()):
        for old, new in itertools.pairwise(kind):
            check_evolution(old.schema, new.schema)
            pairs += 1
    assert pairs >= 2 * (len(schemas.versions) - 1)


def _with_v2(tmp_path: Path, edit: typing.Callable[[dict[str, Any]], None], file: str) -> Path:
    """tmp_path/v1 = the real v1; tmp_path/v2 = v1 with ``edit`` applied to ``file``."""
    shutil.copytree(AVRO_DIR / "v1", tmp_path / "v1")
    shutil.copytree(AVRO_DIR / "v1", tmp_path / "v2")
    path = tmp_path / "v2" / f"{NAMESPACE}.{file}.avsc"
    schema = json.loads(path.read_text())
    edit(schema)
    path.write_text(json.dumps(schema))
    return tmp_path


def _add_optional(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "note", "type": ["null", "string"], "default": None})


def _drop_field(name: str) -> typing.Callable[[dict[str, Any]], None]:
    def edit(schema: dict[str, Any]) -> None:
        schema["fields"] = [f for f in schema["fields"] if f["name"] != name]

    return edit


def _retype(name: str, avro_type: Any) -> typing.Callable[[dict[str, Any]], None]:
    def edit(schema: dict[str, Any]) -> None:
        for field in schema["fields"]:
            if field["name"] == name:
                field["type"] = avro_type

    return edit


def _add_required(schema: dict[str, Any]) -> None:
    schema["fields"].append({"name": "region", "type": "string"})


@pytest.mark.parametrize("file", ["TaskSubmitted", "TaskCancelled", "TaskState", "Backoff"])
def test_synthetic_v2_with_an_optional_field_passes(tmp_path: Path, file: str) -> None:
    schemas = load_catalog(_with_v2(tmp_path, _add_optional, file))
    assert schemas.versions == (1, 2)
    assert assert_consecutive_full_compatible(schemas) == 2


@pytest.mark.parametrize(
    ("file", "edit", "direction"),
    [
        ("TaskSubmitted", _drop_field("name"), "forward"),  # removed field without default
        ("TaskFailed", _drop_field("error_type"), "forward"),
        ("TaskState", _drop_field("payload_digest"), "forward"),
        ("TimerFired", _add_required, "backward"),  # added field without default
        ("TaskSubmitted", _retype("eta_ms", ["null", "int"]), "backward"),  # inner union branch
        ("TaskState", _retype("priority", "string"), "backward"),
    ],
)
def test_synthetic_v2_with_an_incompatible_change_is_caught(
    tmp_path: Path, file: str, edit: typing.Callable[[dict[str, Any]], None], direction: str
) -> None:
    schemas = load_catalog(_with_v2(tmp_path, edit, file))
    with pytest.raises(IncompatibleSchemaError, match=direction):
        assert_consecutive_full_compatible(schemas)


def test_a_removed_enum_symbol_is_caught(tmp_path: Path) -> None:
    def drop_symbol(schema: dict[str, Any]) -> None:
        schema["symbols"] = schema["symbols"][:-1]

    schemas = load_catalog(_with_v2(tmp_path, drop_symbol, "TimerKind"))
    with pytest.raises(IncompatibleSchemaError, match="backward"):
        assert_consecutive_full_compatible(schemas)


def test_v2_is_not_full_compatible_because_it_appends_branches_and_symbols() -> None:
    """What the evolution rule allows and FULL compatibility does not: old readers cannot
    read the new bodies and symbols (docs/schemas.md: upgrade readers first)."""
    schemas = catalog()
    with pytest.raises(IncompatibleSchemaError, match="forward"):
        check_full_compatible(schemas.envelopes[0].schema, schemas.envelopes[1].schema)
    check_full_compatible(schemas.envelopes[0].schema, schemas.envelopes[0].schema)


def test_entity_states_are_top_level_schemas_of_v2() -> None:
    schemas = catalog()
    assert set(schemas.entities) == set(ENTITY_STATES)
    fingerprints = schemas.by_fingerprint()
    for versions in schemas.entities.values():
        assert versions[0].version == 2
        assert fingerprints[versions[-1].fingerprint] is versions[-1]


def _reorder_union(schema: dict[str, Any]) -> None:
    for field in schema["fields"]:
        if field["name"] == "body":
            branches = field["type"]
            branches[0], branches[1] = branches[1], branches[0]


def _append_branch(schema: dict[str, Any]) -> None:
    for field in schema["fields"]:
        if field["name"] == "body":
            field["type"].append(f"{NAMESPACE}.Backoff")


def _append_symbol(schema: dict[str, Any]) -> None:
    schema["symbols"].append("SOMETHING_NEW")


@pytest.mark.parametrize(("file", "edit"), [("Envelope", _append_branch),
                                            ("TimerKind", _append_symbol),
                                            ("TaskSubmitted", _add_optional)])
def test_evolution_allows_appended_members_and_optional_fields(
    tmp_path: Path, file: str, edit: typing.Callable[[dict[str, Any]], None]
) -> None:
    schemas = load_catalog(_with_v2(tmp_path, edit, file))
    check_evolution(schemas.envelopes[0].schema, schemas.envelopes[1].schema)
    check_evolution(schemas.states[0].schema, schemas.states[1].schema)


@pytest.mark.parametrize(
    ("file", "edit", "rule"),
    [
        ("Envelope", _reorder_union, "appended only"),
        ("TaskSubmitted", _drop_field("name"), "forward"),
        ("TimerFired", _add_required, "backward"),
    ],
)
def test_evolution_catches_reordering_and_incompatible_fields(
    tmp_path: Path, file: str, edit: typing.Callable[[dict[str, Any]], None], rule: str
) -> None:
    schemas = load_catalog(_with_v2(tmp_path, edit, file))
    with pytest.raises(IncompatibleSchemaError, match=rule):
        check_evolution(schemas.envelopes[0].schema, schemas.envelopes[1].schema)


def test_codec_reads_data_of_an_older_version(tmp_path: Path) -> None:
    """v1 (synthetic) lacks TaskSubmitted.depends_on; v2 is today's schema. The codec
    finds v1 by fingerprint and resolves it: the missing fields take their defaults."""
    shutil.copytree(AVRO_DIR / f"v{catalog().versions[-1]}", tmp_path / "v2")
    shutil.copytree(AVRO_DIR / "v1", tmp_path / "v1")
    path = tmp_path / "v1" / f"{NAMESPACE}.TaskSubmitted.avsc"
    old = json.loads(path.read_text())
    _drop_field("depends_on")(old)
    path.write_text(json.dumps(old))
    schemas = load_catalog(tmp_path)
    check_evolution(schemas.envelopes[0].schema, schemas.envelopes[1].schema)
    codec = AvroCodec(schemas)

    body = events.TaskSubmitted("n", "q", 1, b"p", "c", None, 3, events.Backoff(), None, 10)
    env = events.Envelope("e", "t", 5, "s", 0, body)
    record = {
        "event_id": "e", "task_id": "t", "occurred_at_ms": 5, "source": "s", "attempt": 0,
        "body": (f"{NAMESPACE}.TaskSubmitted", {
            "name": "n", "queue": "q", "priority": 1, "payload": b"p", "content_type": "c",
            "eta_ms": None, "max_attempts": 3,
            "backoff": dataclasses.asdict(events.Backoff()),
            "timeout_ms": None, "lease_ms": 10, "idempotency_key": None, "headers": {},
            "tags": [],
        }),
    }  # fmt: skip
    buffer = io.BytesIO()
    buffer.write(b"\xc3\x01" + schemas.envelopes[0].fingerprint)
    fastavro.schemaless_writer(buffer, schemas.envelopes[0].parsed, record)
    assert codec.decode_event(buffer.getvalue()) == env
    assert codec.decode_event(codec.encode_event(env)) == env
    assert codec.encode_event(env)[2:10] == schemas.envelopes[1].fingerprint
    with pytest.raises(DecodeError, match=r"v1=.*v2="):
        codec.decode_event(b"\xc3\x01" + b"\x11" * 8 + b"\x00")


# --- the dataclasses and the .avsc files stay in step -------------------------------


def _expected_avro(name: str, tp: Any) -> set[str]:
    """Avro types that may carry a Python field of type ``tp``."""
    origin = typing.get_origin(tp)
    if origin is types.UnionType:
        (inner,) = (a for a in typing.get_args(tp) if a is not type(None))
        return {json.dumps(["null", json.loads(t)]) for t in _expected_avro(name, inner)}
    if origin is dict:
        return {json.dumps({"type": "map", "values": "string"})}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {json.dumps({"type": "array", "items": json.loads(t)})
                for t in _expected_avro(name, item)}
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or issubclass(tp, enum.Enum)):
        return {json.dumps(f"{NAMESPACE}.{tp.__name__}")}
    simple = {str: {"string"}, bytes: {"bytes"}, bool: {"boolean"}, float: {"double"}}
    if tp is int:
        return {'"long"'} if name.endswith("_ms") else {'"int"', '"long"'}
    return {json.dumps(t) for t in simple[tp]}


def _avro_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        value = field.default
        return value.decode("latin-1") if isinstance(value, bytes) else value
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


RECORDS = [*events.BODY_TYPES, events.Backoff, events.FlowControl, events.Envelope,
           state.ErrorInfo, state.TaskState, events.Dependent, events.ScheduleSpec,
           state.GroupState, state.ScheduleState, state.Firing,
           flowstate.LimitWaiter, flowstate.GateOut,
           flowstate.LimitState, flowstate.SlotHolder, flowstate.SlotWaiter,
           flowstate.ConcurrencyState]


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_every_dataclass_field_is_in_the_avsc_and_vice_versa(cls: Any) -> None:
    newest = AVRO_DIR / f"v{catalog().versions[-1]}"
    avsc = json.loads((newest / f"{NAMESPACE}.{cls.__name__}.avsc").read_text())
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]) | vars(events))
    fields = dataclasses.fields(cls)
    assert [f["name"] for f in avsc["fields"]] == [f.name for f in fields], "same names, same order"
    for field, avro in zip(fields, avsc["fields"], strict=True):
        if cls is events.Envelope and field.name == "body":
            assert avro["type"] == [f"{NAMESPACE}.{c.__name__}" for c in events.BODY_TYPES]
            continue
        assert json.dumps(avro["type"]) in _expected_avro(field.name, hints[field.name]), field.name
        assert avro.get("default", dataclasses.MISSING) == _avro_default(field), field.name


ENUMS = [events.TimerKind, state.TaskStatus, events.ParentFailurePolicy, events.ParentOutcome,
         events.MisfirePolicy, events.ScheduleOp, state.GroupStatus, state.ScheduleStatus]


@pytest.mark.parametrize("cls", ENUMS, ids=lambda c: c.__name__)
def test_enums_match(cls: Any) -> None:
    for number in catalog().versions:
        path = AVRO_DIR / f"v{number}" / f"{NAMESPACE}.{cls.__name__}.avsc"
        if not path.exists():
            continue  # added in a later version
        avsc = json.loads(path.read_text())
        symbols = avsc["symbols"]
        assert set(symbols) <= {m.value for m in cls}, "an old symbol left the Python enum"
    assert symbols == [m.value for m in cls]
