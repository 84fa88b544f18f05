"""Record keys of the entities that are not tasks (ENTITIES.md; docs/decisions.md, D37, D32).

A task's key is its 26-character ID (Crockford base32: digits and capitals). Every
other entity's key is ``<kind>:<id>`` with a lowercase kind name, so it can never
equal a task ID, and it sorts after every task ID in a partition's RocksDB
(lowercase letters sort above digits and capitals): a scan of task states stops at
the first key >= ``b"a"``.

* ``limit:<name>``: a rate limit's definition, and the bucket of requests without a key;
* ``limit:<name>:<key>``: the bucket of one key of that limit. Limit names never hold
  a ``:``, so the first ``:`` after the name splits name from key;
* ``ckey:<key>``: a concurrency key;
* ``schedule:<id>``: a schedule;
* ``group:<id>``: a group of tasks that counts its members (a fan-in's parent).

The producer, the API and the fold all build keys here, so a key has one spelling.
"""

from __future__ import annotations

import re

LIMIT_PREFIX = "limit:"
CKEY_PREFIX = "ckey:"
SCHEDULE_PREFIX = "schedule:"
GROUP_PREFIX = "group:"
#: every non-task key sorts at or after this one (lowercase kind names)
FIRST_ENTITY_KEY = b"a"
#: a limit's name: what ``taskstream limits set NAME`` and ``rate_limit=`` take
LIMIT_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LIMIT_NAME = re.compile(LIMIT_NAME_PATTERN)
#: the longest rate key or concurrency key (printable text, any characters)
MAX_KEY_LENGTH = 200


def schedule_key(schedule_id: str) -> str:
    """The record key of a schedule entity."""
    return f"{SCHEDULE_PREFIX}{schedule_id}"


def group_key(group_id: str) -> str:
    """The record key of a group entity."""
    return f"{GROUP_PREFIX}{group_id}"


def limit_key(name: str, key: str | None = None) -> str:
    """The entity key of limit ``name``'s definition (``key`` None) or of one key's bucket."""
    return f"{LIMIT_PREFIX}{name}" if key is None else f"{LIMIT_PREFIX}{name}:{key}"


def ckey_key(key: str) -> str:
    """The entity key of concurrency key ``key``."""
    return f"{CKEY_PREFIX}{key}"


def parse_limit_key(entity_key: str) -> tuple[str, str | None]:
    """(name, bucket key or None) of a ``limit:`` entity key; ValueError otherwise."""
    if not entity_key.startswith(LIMIT_PREFIX):
        raise ValueError(f"{entity_key!r} is not a limit key (limit:<name>[:<key>])")
    name, sep, key = entity_key[len(LIMIT_PREFIX):].partition(":")
    return name, (key if sep else None)


def parse_ckey_key(entity_key: str) -> str:
    """The concurrency key of a ``ckey:`` entity key; ValueError otherwise."""
    if not entity_key.startswith(CKEY_PREFIX):
        raise ValueError(f"{entity_key!r} is not a concurrency key (ckey:<key>)")
    return entity_key[len(CKEY_PREFIX):]
