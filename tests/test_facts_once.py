"""Each fact of the platform is written once (issue 13): these tests read the source.

They parse every module of the package (the root folders mapped to ``taskstream.*``)
and look for a second copy of a fact that has one home: the terminal states
(``schemas/state.py``), the producers' durability keys (``taskstream/kafka_config.py``),
topic and group names (``taskstream/topics.py``), the HTTP API client
(``producer/api_client.py``), murmur2 (aiokafka's) and the Avro double packing
(``schemas/codec/prims.py``). Each test also checks that it finds the one home, so a
detector that stopped seeing anything would fail instead of passing quietly.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TERMINAL_NAMES = {"SUCCEEDED", "DEAD", "CANCELLED"}
DURABLE_KEYS = {"acks", "enable.idempotence", "partitioner"}


@cache
def modules() -> dict[str, ast.Module]:
    """Every source module of the package, by its path relative to the repository."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found: dict[str, ast.Module] = {}
    for folder in set(config["package-dir"].values()):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            found[rel] = ast.parse(path.read_text(), rel)
    return found


def nodes() -> Iterator[tuple[str, ast.AST]]:
    for rel, tree in modules().items():
        for node in ast.walk(tree):
            yield rel, node


def _name_of(node: ast.AST) -> str | None:
    """``"DEAD"`` for the string "DEAD" and for ``TaskStatus.DEAD`` / ``S.DEAD``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def where(found: list[tuple[str, int]]) -> list[str]:
    return sorted({rel for rel, _ in found})


def test_the_scan_sees_the_whole_package() -> None:
    seen = set(modules())
    for expected in ("schemas/state.py", "taskstream/kafka_config.py", "taskstream/topics.py",
                     "api/service.py", "processors/fold/lifecycle.py", "workers/emitter.py"):
        assert expected in seen


def test_terminal_states_are_listed_once() -> None:
    found = []
    for rel, node in nodes():
        if isinstance(node, ast.Set | ast.Tuple | ast.List):
            names = {_name_of(e) for e in node.elts}
            if names >= TERMINAL_NAMES:
                found.append((rel, node.lineno))
    assert where(found) == ["schemas/state.py"], found


def test_producer_durability_keys_are_set_once() -> None:
    found = []
    for rel, node in nodes():
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if keys & DURABLE_KEYS:
                found.append((rel, node.lineno))
        elif isinstance(node, ast.Constant) and node.value == "murmur2_random":
            found.append((rel, node.lineno))
    assert where(found) == ["taskstream/kafka_config.py"], found


def _builds_a_name(node: ast.AST) -> bool:
    """``f"{settings.topic_prefix}..."``, ``settings.topic(...)``, ``"...-changelog"``."""
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return (isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Attribute)
                and first.value.attr == "topic_prefix")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = node.func.value
        named = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", "")
        return node.func.attr == "topic" and named.endswith("settings")
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        node.value.endswith("-changelog") or node.value.startswith("taskstream-replay"))


def test_topic_and_group_names_are_derived_once() -> None:
    found = [(rel, getattr(node, "lineno", 0)) for rel, node in nodes() if _builds_a_name(node)]
    homes = {"taskstream/topics.py", "taskstream/settings.py"}  # settings.topic() adds the prefix
    assert set(where(found)) <= homes and "taskstream/topics.py" in where(found), found


def test_one_http_client_of_the_api() -> None:
    found = []
    for rel, node in nodes():
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "httpx"
                and node.func.attr in {"Client", "AsyncClient", "request", "get", "post"}):
            found.append((rel, node.lineno))
    # dev/procs.py only probes a child's /readyz while starting it
    assert where(found) == ["producer/api_client.py", "taskstream/dev/procs.py"], found


@pytest.mark.parametrize("constant", [0x5BD1E995, 0x9747B28C])
def test_murmur2_is_aiokafkas(constant: int) -> None:
    found = [(rel, node.lineno) for rel, node in nodes()
             if isinstance(node, ast.Constant) and node.value == constant]
    defined = [(rel, node.lineno) for rel, node in nodes()
               if isinstance(node, ast.FunctionDef) and "murmur" in node.name]
    assert not found and not defined


def test_avro_double_packing_is_the_codecs() -> None:
    found = [(rel, node.lineno) for rel, node in nodes()
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "Struct" and node.args
             and isinstance(node.args[0], ast.Constant) and node.args[0].value == "<d"]
    assert where(found) == ["schemas/codec/prims.py"], found
