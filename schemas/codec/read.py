"""Compile an Avro schema into straight-line Python that reads dataclasses from bytes.

:func:`reader_source` turns the expanded JSON of a top-level record into the
source of ``read(data, pos, ln) -> (value, pos)`` plus the constants it uses
(classes, enum members, helpers). The code reads ``data`` (a ``bytes``) at an
integer position: one-byte varints, short strings and empty maps or arrays are
inlined, everything else calls :mod:`taskstream.schemas.codec.prims`.
Records become the bound classes directly (``object.__new__`` plus the slot
setters: a frozen dataclass's ``__init__`` costs three times as much).

Supported: records, enums, arrays, maps, unions of null and one other type,
unions of records, and the primitives except float. Anything else raises
:class:`CompileError` and the codec stays on fastavro.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from taskstream.schemas.codec.prims import (
    ONE_BYTE_LONG,
    SHORT_LEN,
    Corrupt,
    bad_count,
    bad_index,
    memo_long_reader,
    read_bytes,
    read_count,
    read_length,
    read_long,
    read_text,
    unpack_double,
)

Node = Any  # a resolved schema node: a primitive name, a dict or a list (union)
_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "double", "bytes", "string"})
_END = "a string or bytes value runs past the end"


class CompileError(Exception):
    """The schema uses something the compiler does not support (the codec keeps fastavro)."""


@dataclass(frozen=True)
class Bindings:
    """Which Python class stands for each named Avro type (full name -> class)."""

    records: Mapping[str, type]
    enums: Mapping[str, type[enum.Enum]]


def resolve(schema: Node, namespace: str = "") -> Node:
    """The schema with every reference by name replaced by its definition."""
    return _Resolver().walk(schema, namespace, 0)


@dataclass
class _Resolver:
    named: dict[str, Node] = field(default_factory=dict)

    def walk(self, node: Node, ns: str, depth: int) -> Node:
        if depth > 32:
            raise CompileError("schema nests too deep (recursive type?)")
        if isinstance(node, str):
            return self.reference(node, ns)
        if isinstance(node, list):
            return [self.walk(branch, ns, depth + 1) for branch in node]
        if "logicalType" in node:
            raise CompileError(f"logical type {node['logicalType']!r} is not supported")
        kind = node["type"]
        if kind in ("record", "enum"):
            return self.named_type(node, ns, depth)
        if kind in ("array", "map"):
            inner = "items" if kind == "array" else "values"
            return {"type": kind, inner: self.walk(node[inner], ns, depth + 1)}
        return self.reference(kind, ns) if isinstance(kind, str) else self.walk(kind, ns, depth)

    def reference(self, name: str, ns: str) -> Node:
        if name in _PRIMITIVES:
            return name
        full = name if "." in name else f"{ns}.{name}"
        if full not in self.named:
            raise CompileError(f"unsupported or unknown type {name!r}")
        return self.named[full]

    def named_type(self, node: Node, ns: str, depth: int) -> Node:
        ns = node.get("namespace", ns)
        full = f"{ns}.{node['name']}"
        if node["type"] == "enum":
            self.named[full] = {"type": "enum", "name": full, "symbols": list(node["symbols"])}
            return self.named[full]
        out: dict[str, Any] = {"type": "record", "name": full, "fields": []}
        self.named[full] = out
        for f in node["fields"]:
            out["fields"].append((f["name"], self.walk(f["type"], ns, depth + 1)))
        return out


def union_shape(node: list[Node]) -> str:
    """``"optional"`` for [null, T] or [T, null], ``"records"`` for records only.

    Anything else raises CompileError.
    """
    others = [b for b in node if b != "null"]
    if len(node) == 2 and len(others) == 1:
        return "optional"
    if len(others) == len(node) and all(
        isinstance(b, dict) and b["type"] == "record" for b in others
    ):
        return "records"
    raise CompileError(f"unsupported union {node!r}: only [null, T] or unions of records")


def min_size(node: Node) -> int:
    """The fewest bytes one value of ``node`` takes (to bound block counts)."""
    if node == "null":
        return 0
    if isinstance(node, dict) and node["type"] == "record":
        return sum(min_size(t) for _, t in node["fields"])
    return 1


def fast_constructible(cls: type, names: list[str]) -> bool:
    """A slotted dataclass without __post_init__: safe to fill through its slot setters."""
    return (
        is_dataclass(cls)
        and not hasattr(cls, "__post_init__")
        and all(isinstance(cls.__dict__.get(n), types.MemberDescriptorType) for n in names)
    )


def check_binding(cls: type, record: Node) -> list[str]:
    names = [n for n, _ in record["fields"]]
    if not is_dataclass(cls) or [f.name for f in fields(cls)] != names:
        raise CompileError(f"{cls.__name__} does not match Avro {record['name']} field for field")
    return names


@dataclass
class CodeGen:
    """What one compilation collects (the reader's and the writer's): constants bound
    by name, generated functions and tables, the record types done, a counter for
    fresh local names."""

    bindings: Bindings
    consts: dict[str, Any] = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    done: set[str] = field(default_factory=set)
    counter: int = 0

    def const(self, value: Any, hint: str) -> str:
        """The name the generated code uses for ``value`` (one name per object)."""
        for name, existing in self.consts.items():
            if existing is value:
                return name
        name = f"{hint}_{len(self.consts)}"
        self.consts[name] = value
        return name

    def tmp(self, hint: str) -> str:
        self.counter += 1
        return f"{hint}{self.counter}"


class _Gen(CodeGen):
    def value(self, node: Node, t: str, ind: str, where: str) -> list[str]:
        """Lines that read one value of ``node`` at ``pos`` into the local ``t``."""
        if isinstance(node, list):
            return self._union(node, t, ind, where)
        if isinstance(node, str):
            return self._primitive(node, t, ind)
        kind = node["type"]
        if kind == "record":
            return self._record(node, t, ind)
        if kind == "enum":
            return self._enum(node, t, ind, where)
        return self._block(node, t, ind)

    def _primitive(self, node: str, t: str, ind: str) -> list[str]:
        if node == "null":
            return [f"{ind}{t} = None"]
        if node in ("int", "long"):
            return long_lines(t, ind)
        if node == "boolean":
            return [f"{ind}{t} = data[pos] != 0", f"{ind}pos += 1"]
        if node == "double":
            return [f"{ind}{t} = unpack_double(data, pos)[0]", f"{ind}pos += 8"]
        slow, decode = ("read_text", ".decode()") if node == "string" else ("read_bytes", "")
        return [
            f"{ind}e = pos + 1 + SHORT_LEN[data[pos]]",
            f"{ind}if e > ln:",
            f"{ind}    {t}, e = {slow}(data, pos)",
            f"{ind}else:",
            f"{ind}    {t} = data[pos + 1 : e]{decode}",
            f"{ind}pos = e",
        ]

    def _enum(self, node: Node, t: str, ind: str, where: str) -> list[str]:
        cls = self.bindings.enums.get(node["name"])
        if cls is None or [m.value for m in cls] != node["symbols"]:
            raise CompileError(f"no enum class matches Avro {node['name']} symbol for symbol")
        members = self.const(tuple(cls), "ENUM")
        n = len(node["symbols"])
        return [
            *long_lines("i", ind),
            f"{ind}if 0 <= i < {n}:",
            f"{ind}    {t} = {members}[i]",
            f"{ind}else:",
            f"{ind}    raise bad_index('enum', i, {n}, {where!r})",
        ]

    def _record(self, node: Node, t: str, ind: str) -> list[str]:
        cls = self.bindings.records.get(node["name"])
        if cls is None:
            raise CompileError(f"no class is bound to Avro record {node['name']}")
        names = check_binding(cls, node)
        lines: list[str] = []
        locals_ = []
        for name, ftype in node["fields"]:
            local = self.tmp("v")
            locals_.append(local)
            lines += self.value(ftype, local, ind, name)
        c = self.const(cls, "CLS")
        if not fast_constructible(cls, names):
            args = ", ".join(f"{n}={v}" for n, v in zip(names, locals_, strict=True))
            return [*lines, f"{ind}{t} = {c}({args})"]
        lines.append(f"{ind}{t} = new({c})")
        for name, local in zip(names, locals_, strict=True):
            setter = self.const(cls.__dict__[name].__set__, f"SET_{name}")
            lines.append(f"{ind}{setter}({t}, {local})")
        return lines

    def _block(self, node: Node, t: str, ind: str) -> list[str]:
        is_map = node["type"] == "map"
        item = node["values" if is_map else "items"]
        count, v = self.tmp("c"), self.tmp("v")
        size = max(1, min_size(item) + (1 if is_map else 0))
        # a block count below 64 is one even byte: read it inline (read_count otherwise)
        body = [
            f"{ind}{t} = {{}}" if is_map else f"{ind}{t} = []",
            f"{ind}b = data[pos]",
            f"{ind}if b == 0:",
            f"{ind}    pos += 1",
            f"{ind}else:",
            f"{ind}    while True:",
            f"{ind}        if b < 128 and not b & 1:",
            f"{ind}            {count} = b >> 1",
            f"{ind}            pos += 1",
            f"{ind}            if {count} * {size} > ln - pos:",
            f"{ind}                raise bad_count({count}, pos - 1)",
            f"{ind}        else:",
            f"{ind}            {count}, pos = read_count(data, pos, {size})",
            f"{ind}        if not {count}:",
            f"{ind}            break",
            f"{ind}        for _ in range({count}):",
        ]
        deep = ind + " " * 12
        if is_map:
            key = self.tmp("k")
            body += self._primitive("string", key, deep)
            body += self.value(item, v, deep, "map value")
            body.append(f"{deep}{t}[{key}] = {v}")
        else:
            body += self.value(item, v, deep, "array item")
            body.append(f"{deep}{t}.append({v})")
        body.append(f"{ind}        b = data[pos]")
        return body

    def _union(self, node: list[Node], t: str, ind: str, where: str) -> list[str]:
        lines = long_lines("i", ind)
        if union_shape(node) == "records" and len(node) > 2:
            table = self.tmp("BRANCHES")
            names = ", ".join(self.record_function(b) for b in node)
            self.tables.append(f"{table} = ({names},)")
            return [
                *lines,
                f"{ind}if 0 <= i < {len(node)}:",
                f"{ind}    {t}, pos = {table}[i](data, pos, ln)",
                f"{ind}else:",
                f"{ind}    raise bad_index('union', i, {len(node)}, {where!r})",
            ]
        # the index of a branch below 64 is one byte (2 * index): dispatch on it, and
        # decode the varint properly only for anything else
        chain = [f"{ind}b = data[pos]"]
        for index, branch in enumerate(node):
            chain.append(f"{ind}{'if' if index == 0 else 'elif'} b == {2 * index}:")
            chain += [f"{ind}    pos += 1", *self.value(branch, t, ind + "    ", where)]
        chain.append(f"{ind}else:")
        deep = ind + "    "
        lines = [f"{deep}{line[len(ind) :]}" if line.strip() else line for line in lines]
        for index, branch in enumerate(node):
            lines.append(f"{deep}{'if' if index == 0 else 'elif'} i == {index}:")
            lines += self.value(branch, t, deep + "    ", where)
        lines += [f"{deep}else:", f"{deep}    raise bad_index('union', i, {len(node)}, {where!r})"]
        return chain + lines

    def record_function(self, node: Node) -> str:
        """The name of a generated ``r_<Name>(data, pos, ln) -> (value, pos)``."""
        name = "r_" + str(node["name"]).rsplit(".", 1)[-1]
        if name not in self.done:
            self.done.add(name)
            body = self._record(node, "out", "    ")
            self.functions.append(
                "\n".join([f"def {name}(data, pos, ln):", *body, "    return out, pos"])
            )
        return name


def long_lines(t: str, ind: str) -> list[str]:
    return [
        f"{ind}b = data[pos]",
        f"{ind}if b < 128:",
        f"{ind}    {t} = ONE[b]",
        f"{ind}    pos += 1",
        f"{ind}else:",  # a remembered multi-byte varint (read_big's memo), else read_big
        f"{ind}    hit = MEMO.get(data[pos : pos + 6])",
        f"{ind}    if hit is None:",
        f"{ind}        {t}, pos = read_big(data, pos)",
        f"{ind}    else:",
        f"{ind}        {t} = hit[0]",
        f"{ind}        pos += hit[1]",
    ]


def reader_source(schema: Node, bindings: Bindings) -> tuple[str, str, dict[str, Any]]:
    """(source, name of the entry function, namespace to exec it in) for a top-level record."""
    root = resolve(schema)
    if not isinstance(root, dict) or root["type"] != "record":
        raise CompileError("the top-level schema must be a record")
    gen = _Gen(bindings)
    entry = gen.record_function(root)
    memo: dict[bytes, tuple[int, int]] = {}
    namespace: dict[str, Any] = {
        "ONE": ONE_BYTE_LONG,
        "Corrupt": Corrupt,
        "END": _END,
        "bad_index": bad_index,
        "read_count": read_count,
        "read_length": read_length,
        "read_long": read_long,
        "read_bytes": read_bytes,
        "read_text": read_text,
        "SHORT_LEN": SHORT_LEN,
        "read_big": memo_long_reader(memo=memo),
        "MEMO": memo,
        "bad_count": bad_count,
        "unpack_double": unpack_double,
        "new": object.__new__,
        **gen.consts,
    }
    return "\n\n".join([*gen.functions, *gen.tables]) + "\n", entry, namespace
