"""Read compose files the way Docker Compose does, for what ours use, without an engine.

* :func:`load` reads one file (YAML anchors and ``<<`` merge keys resolved);
* :func:`interpolate` substitutes ``${VAR}``, ``${VAR:?message}``, ``${VAR:-default}``
  and ``$$`` in every string, as Compose does before anything else;
* :func:`merge` lays an override file over a base (the Compose Specification's merge
  rules: mappings merge key by key, ``command``, ``entrypoint`` and ``healthcheck.test``
  are replaced, ``volumes`` merge by mount target, ``ports`` and other lists are
  appended without duplicates, ``environment`` as a mapping);
* :func:`broker_properties` turns an ``apache/kafka`` container's ``KAFKA_*``
  environment into the server.properties its start script writes (the image's
  KafkaDockerWrapper: strip ``KAFKA_``, lower case, ``_`` -> ``.``, ``___`` -> ``-``,
  ``__`` -> ``_``).

What this cannot tell (docs/deploy.md says it): whether a real engine starts the
containers, pulls the images and resolves the service names.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

import yaml

from tests.deploy_support import ROOT

#: environment variables the apache/kafka image keeps out of server.properties
IMAGE_NON_PROPERTIES = frozenset({
    "KAFKA_VERSION", "KAFKA_HEAP_OPT", "KAFKA_LOG4J_OPTS", "KAFKA_OPTS", "KAFKA_JMX_OPTS",
    "KAFKA_JVM_PERFORMANCE_OPTS", "KAFKA_GC_LOG_OPTS", "KAFKA_LOG4J_ROOT_LOGLEVEL",
    "KAFKA_LOG4J_LOGGERS", "KAFKA_TOOLS_LOG4J_LOGLEVEL", "KAFKA_JMX_HOSTNAME"})
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>\w+)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\})")


def load(name: str = "docker-compose.yml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def command(service: Mapping[str, Any], key: str = "command") -> list[str]:
    cmd = service.get(key, [])
    return list(cmd) if isinstance(cmd, list) else shlex.split(cmd)


def env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def script_lines(service: Mapping[str, Any]) -> list[list[str]]:
    """The commands of a service that runs ``sh -euc SCRIPT``: one argv per line."""
    assert command(service, "entrypoint") == ["sh", "-euc"], service.get("entrypoint")
    (script,) = command(service)
    return [shlex.split(line) for line in script.splitlines() if line.strip()]


class MissingVariable(KeyError):
    """A ``${VAR:?message}`` whose variable is not set: Compose refuses the file."""


def interpolate(node: Any, variables: Mapping[str, str]) -> Any:
    """``node`` with every string interpolated from ``variables``."""
    if isinstance(node, dict):
        return {k: interpolate(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, variables) for v in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "$"
        value = variables.get(name, "")
        if match.group("op") == ":?" and not value:
            raise MissingVariable(f"{name}: {match.group('arg')}")
        if match.group("op") == ":-" and not value:
            return match.group("arg")
        return value

    return _VARIABLE.sub(one, node)


def variables_used(node: Any) -> dict[str, str | None]:
    """Every ``${VAR...}`` in ``node``: name -> its operator (``:?``, ``:-`` or None)."""
    found: dict[str, str | None] = {}
    if isinstance(node, dict):
        for value in node.values():
            found.update(variables_used(value))
    elif isinstance(node, list):
        for value in node:
            found.update(variables_used(value))
    elif isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if match.group("name"):
                found[match.group("name")] = match.group("op")
    return found


def _target(volume: str | Mapping[str, Any]) -> str:
    if isinstance(volume, str):
        return volume.split(":")[1]
    return str(volume["target"])


def _merge(base: Any, override: Any, path: tuple[str, ...]) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value, (*path, key)) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if path[-2:] in _REPLACED or path[-1:] in _REPLACED:
            return override
        if path[-1] == "volumes":
            targets = {_target(v): v for v in base}
            targets.update({_target(v): v for v in override})
            return list(targets.values())
        return base + [v for v in override if v not in base]
    return override


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base`` (``docker compose -f base -f override``)."""
    for name, service in override.get("services", {}).items():
        for key in ("environment",):
            assert not isinstance(service.get(key), list), f"{name}: use a mapping for {key}"
    merged: dict[str, Any] = _merge(base, override, ())
    return merged


def broker_properties(environment: Mapping[str, str]) -> dict[str, str]:
    """The server.properties the apache/kafka image writes from these variables."""
    props = {}
    for key, value in environment.items():
        if not key.startswith("KAFKA_") or key in IMAGE_NON_PROPERTIES:
            continue
        name = (key.replace("KAFKA_", "").lower().replace("_", ".")
                .replace("...", "-").replace("..", "_"))
        props[name] = value
    return props


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` -> {NAME: (host, port)} (host ``""`` binds every address)."""
    found = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, int(port))
    return found
