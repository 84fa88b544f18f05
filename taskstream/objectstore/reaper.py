"""The reaper: delete the objects no task needs any more (D35).

Mark and sweep, so that nothing depends on a removal effect having been seen:
the bucket is listed by task prefix (``tasks/<task_id>/``, keys.py) and each
task is looked up in the live state (through the API). :func:`doomed` decides,
pure:

* objects younger than the grace period are kept: a payload is stored before
  its ``TaskSubmitted`` is folded, a result before its ``TaskSucceeded``;
* a task the state does not know (removed by retention or purge, or never
  submitted because its producer failed after the upload): all its objects go;
* a finished task: the objects it does not reference go (results of duplicate
  or failed runs, payloads of a conflicting resubmission);
* a task still in flight: nothing goes (a run may be storing its result).

A lookup that fails (the API down, a rebalance) keeps the task's objects;
the next run decides again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from taskstream.objectstore.keys import PREFIX, task_of
from taskstream.objectstore.store import ObjectStore, StoredObject


@dataclass(frozen=True, slots=True)
class TaskRefs:
    """What the state says about one task: finished or not, and the keys it references."""

    finished: bool
    keys: frozenset[str] = frozenset()


class LookupFailed(Exception):
    """The state could not be asked about a task right now (its objects are kept)."""


Lookup = Callable[[str], TaskRefs | None]  # None: the state has no such task


def doomed(objects: Sequence[StoredObject], task: TaskRefs | None, now_ms: int,
           grace_ms: int) -> list[StoredObject]:
    """Which of one task's objects to delete (see the module docstring)."""
    old = [o for o in objects if now_ms - o.last_modified_ms >= grace_ms]
    if task is None:
        return old
    if not task.finished:
        return []
    return [o for o in old if o.key not in task.keys]


@dataclass
class ReapReport:
    tasks: int = 0
    objects: int = 0
    deleted: int = 0
    freed_bytes: int = 0
    kept_unknown: int = 0  # tasks whose lookup failed
    deleted_keys: list[str] = field(default_factory=list)


def by_task(objects: Iterable[StoredObject]) -> Iterator[tuple[str, list[StoredObject]]]:
    """Objects grouped by task ID (a listing is in key order, so a task's are together);
    keys that are not ours are skipped."""
    ours = ((task_of(o.key), o) for o in objects)
    for task_id, group in groupby((pair for pair in ours if pair[0] is not None),
                                  key=lambda pair: pair[0]):
        assert task_id is not None
        yield task_id, [o for _, o in group]


def reap(store: ObjectStore, lookup: Lookup, now_ms: int, grace_ms: int, *,
         dry_run: bool = False) -> ReapReport:
    """One sweep over the bucket; with ``dry_run`` nothing is deleted (the report says
    what would be)."""
    report = ReapReport()
    for task_id, objects in by_task(store.list(PREFIX)):
        report.tasks += 1
        report.objects += len(objects)
        try:
            task = lookup(task_id)
        except LookupFailed:
            report.kept_unknown += 1
            continue
        gone = doomed(objects, task, now_ms, grace_ms)
        if not gone:
            continue
        if not dry_run:
            store.delete(o.key for o in gone)
        report.deleted += len(gone)
        report.freed_bytes += sum(o.size for o in gone)
        report.deleted_keys.extend(o.key for o in gone)
    return report
