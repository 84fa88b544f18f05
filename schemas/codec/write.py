"""Compile an Avro schema into straight-line Python that writes dataclasses as bytes.

:func:`writer_source` gives the source of ``write(value) -> bytes`` (the header
bytes first, then the Avro body) for a top-level record, and the constants it
uses. Each field becomes one or two ``bytes`` locals, joined once at the end;
maps are written with sorted keys, as :mod:`taskstream.schemas.convert` does.

The compiled writer only takes the values it is sure of (a union branch is
chosen by exact type, bytes must be ``bytes``); for anything else it raises
(:class:`~taskstream.schemas.codec.prims.Unsupported`, TypeError,
AttributeError, ...) and the codec hands the value to fastavro, which writes it
or raises EncodeError exactly as before.
"""

from __future__ import annotations

from typing import Any

from taskstream.schemas.codec.prims import (
    NULL,
    SECOND,
    SMALL_LEN,
    SMALL_LONG,
    TRUE,
    LongMemo,
    Unsupported,
    pack_double,
    write_long,
)
from taskstream.schemas.codec.read import (
    Bindings,
    CodeGen,
    CompileError,
    Node,
    check_binding,
    resolve,
    union_shape,
)

_EXACT = {"int": "int", "long": "int", "string": "str", "bytes": "bytes", "boolean": "bool"}
_EXACT["double"] = "float"


class _Gen(CodeGen):
    def parts(self, node: Node, x: str, ind: str, where: str) -> tuple[list[str], list[str]]:
        """(lines, locals): the lines leave the encoding of local ``x`` in the listed locals."""
        if isinstance(node, list):
            return self._union(node, x, ind, where)
        if isinstance(node, str):
            return self._primitive(node, x, ind, where)
        kind = node["type"]
        if kind == "record":
            return self._record(node, x, ind)
        p = self.tmp("p")
        if kind == "enum":
            codes = {s: write_long(i) for i, s in enumerate(node["symbols"])}
            return [f"{ind}{p} = {self.const(codes, 'ENUM')}[{x}]"], [p]
        exact = "dict" if kind == "map" else "list"
        helper = self._block_function(node)
        return [
            f"{ind}if type({x}) is not {exact}:",
            f"{ind}    raise Unsupported({where!r})",
            f"{ind}{p} = {helper}({x}) if {x} else NULL",
        ], [p]

    def _primitive(self, node: str, x: str, ind: str, where: str) -> tuple[list[str], list[str]]:
        p = self.tmp("p")
        if node == "null":
            return [], []
        if node in ("int", "long"):
            return [
                f"{ind}if -64 <= {x} < 64:",
                f"{ind}    {p} = SMALL[{x} + 64]",
                f"{ind}elif {x}.__class__ is int:",  # exactly int: see LongMemo
                f"{ind}    {p} = BIG[{x}]",
                f"{ind}else:",
                f"{ind}    {p} = write_long({x})",
            ], [p]
        if node == "boolean":
            return [f"{ind}{p} = TRUE if {x} else NULL"], [p]
        if node == "double":
            return [f"{ind}{p} = pack_double({x})"], [p]
        if node == "string":
            s = self.tmp("s")
            return [
                f"{ind}{s} = {x}.encode()",
                f"{ind}n = len({s})",
                f"{ind}{p} = SMALL_LEN[n] if n < 64 else write_long(n)",
            ], [p, s]
        return [
            f"{ind}if type({x}) is not bytes:",
            f"{ind}    raise Unsupported({where!r})",
            f"{ind}n = len({x})",
            f"{ind}{p} = SMALL_LEN[n] if n < 64 else write_long(n)",
        ], [p, x]

    def _record(self, node: Node, x: str, ind: str) -> tuple[list[str], list[str]]:
        cls = self.bindings.records.get(node["name"])
        if cls is None:
            raise CompileError(f"no class is bound to Avro record {node['name']}")
        check_binding(cls, node)
        lines: list[str] = []
        out: list[str] = []
        for name, ftype in node["fields"]:
            y = self.tmp("f")
            lines.append(f"{ind}{y} = {x}.{name}")
            more, exprs = self.parts(ftype, y, ind, name)
            lines += more
            out += exprs
        return lines, out

    def _union(self, node: list[Node], x: str, ind: str, where: str) -> tuple[list[str], list[str]]:
        if union_shape(node) == "records":
            p = self.tmp("p")
            table = self.tmp("WRITERS")
            entries = []
            for index, branch in enumerate(node):
                cls = self.const(self.bindings.records.get(branch["name"]), "CLS")
                entries.append(f"{cls}: {self.record_function(branch, write_long(index))}")
            self.tables.append(f"{table} = {{{', '.join(entries)}}}")
            return [f"{ind}{p} = {table}[type({x})]({x})"], [p]
        (other,) = (b for b in node if b != "null")
        branch_lines, exprs = self.parts(other, x, ind + "    ", where)
        width = 1 + len(exprs)
        us = [self.tmp("u") for _ in range(width)]
        null_index, other_index = write_long(node.index("null")), write_long(node.index(other))
        empty = ", ".join(["b''"] * (width - 1))
        lines = [f"{ind}if {x} is None:"]
        lines.append(f"{ind}    {', '.join(us)} = {self.const(null_index, 'TAG')}, {empty}")
        lines.append(f"{ind}elif type({x}) is {self._exact(other)}:")
        lines += branch_lines
        lines.append(
            f"{ind}    {', '.join(us)} = {self.const(other_index, 'TAG')}, {', '.join(exprs)}"
        )
        lines += [f"{ind}else:", f"{ind}    raise Unsupported({where!r})"]
        return lines, us

    def _exact(self, node: Node) -> str:
        if isinstance(node, str):
            return _EXACT[node]
        if node["type"] == "record":
            return self.const(self.bindings.records.get(node["name"]), "CLS")
        if node["type"] == "enum":
            return self.const(self.bindings.enums.get(node["name"]), "CLS")
        return "dict" if node["type"] == "map" else "list"

    def _block_function(self, node: Node) -> str:
        name = self.tmp("w_block")
        is_map = node["type"] == "map"
        item = node["values" if is_map else "items"]
        lines = [
            f"def {name}(x):",
            "    n = len(x)",
            "    out = [SMALL[n + 64] if n < 64 else write_long(n)]",
        ]
        if is_map:
            key_lines, key_exprs = self._primitive("string", "k", "        ", "map key")
            lines += ["    for k in sorted(x):", "        v = x[k]", *key_lines]
        else:
            key_exprs = []
            lines.append("    for v in x:")
        item_lines, exprs = self.parts(item, "v", "        ", "map value" if is_map else "item")
        lines += item_lines
        lines += [f"        out += ({', '.join([*key_exprs, *exprs])},)"]
        lines += ["    out.append(NULL)", '    return b"".join(out)']
        self.functions.append("\n".join(lines))
        return name

    def record_function(self, node: Node, prefix: bytes) -> str:
        """The name of a generated ``w_<Name>(value) -> bytes`` that starts with ``prefix``."""
        name = f"w_{node['name'].rsplit('.', 1)[-1]}_{prefix.hex()}"
        if name not in self.done:
            self.done.add(name)
            lines, exprs = self._record(node, "o", "    ")
            start = self.const(prefix, "PREFIX")
            joined = ", ".join([start, *exprs])
            self.functions.append(
                "\n".join([f"def {name}(o):", *lines, f'    return b"".join(({joined},))'])
            )
        return name


def writer_source(
    schema: Node, bindings: Bindings, header: bytes
) -> tuple[str, str, dict[str, Any]]:
    """(source, name of the entry function, namespace to exec it in) for a top-level record."""
    root = resolve(schema)
    if not isinstance(root, dict) or root["type"] != "record":
        raise CompileError("the top-level schema must be a record")
    gen = _Gen(bindings)
    entry = gen.record_function(root, header)
    namespace: dict[str, Any] = {
        "SMALL": SMALL_LONG,
        "SMALL_LEN": SMALL_LEN,
        "NULL": NULL,
        "SECOND": SECOND,
        "TRUE": TRUE,
        "Unsupported": Unsupported,
        "pack_double": pack_double,
        "write_long": write_long,
        "BIG": LongMemo(),
        **gen.consts,
    }
    return "\n\n".join([*gen.functions, *gen.tables]) + "\n", entry, namespace
