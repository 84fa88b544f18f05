"""Folding records of the events topic into RocksDB: what a rebuild does in each process.

The fold is the processor's, step for step (``processors/live/app.py``): decode the
envelope, skip what the processor quarantines (undecodable records, derived
bodies and records :func:`~taskstream.processors.fold.validate.check_record`
refuses: hostile or unsigned ones, D26, D28), ``apply`` with the same
:class:`Limits`, store the new state under the
envelope's task ID when ``apply`` returns one. The result maps task ID ->
``encode_state`` bytes, exactly what the processor's task table holds.
:mod:`taskstream.processors.replay.rebuild` runs it in one process or several
(:mod:`~taskstream.processors.replay.parallel`).

Speed: messages come in batches of 10 000, hot states live in an in-memory LRU
(events of one task arrive close together), and states leave it through RocksDB
WriteBatches, so a task with three events is encoded and written once.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import Any

from rocksdict import (
    Options,
    Rdict,
    SstFileWriter,
    WriteBatch,
    WriteOptions,
)

from taskstream.processors.fold.clock import clamp
from taskstream.processors.fold.kinds import apply_any, status_of
from taskstream.processors.fold.lifecycle import Limits, apply
from taskstream.processors.fold.position import mark_in_place, position_of
from taskstream.processors.fold.validate import Checks, check_record
from taskstream.processors.replay.read import (
    Advances,
    ReadPlan,
    SkippedRecord,
    read_batches,
)
from taskstream.schemas.codec.compiled import event_reader
from taskstream.schemas.errors import DecodeError
from taskstream.schemas.events import Envelope, TaskCancelled, TaskDeadLettered, TaskDispatched
from taskstream.schemas.serde import decode_entity, decode_event, default_codec
from taskstream.schemas.state import TERMINAL, EntityState
from taskstream.security.signing import RecordHeaders
from taskstream.settings import Settings

#: bodies the processor refuses on the events topic (they are its own outputs)
DERIVED = (TaskDispatched, TaskDeadLettered, TaskCancelled)
_DERIVED = frozenset(DERIVED)
#: skipped records kept with their details; beyond this only counted
MAX_SKIPPED_DETAILS = 1_000


def limits_of(settings: Settings) -> Limits:
    """The limits the processor folds with (processors/live/app.py): replay must use the same."""
    return Limits.from_settings(settings)


def checks_of(settings: Settings) -> Checks:
    """The record checks the processor folds with: replay must use the same (keyring too)."""
    return Checks.from_settings(settings)


def decode_usable(value: Any, key: bytes | None = None,
                  headers: RecordHeaders | None = None,
                  checks: Checks | None = None) -> Envelope | str:
    """The envelope the processor would fold, or why it would quarantine the record
    (with ``checks``: also the record checks, which need its key and headers)."""
    data = value if isinstance(value, bytes) else b""
    try:
        envelope = decode_event(data)
    except DecodeError as exc:
        return str(exc)
    if isinstance(envelope.body, DERIVED):
        return f"{envelope.type_name} is not an events-topic record"
    if checks is not None:
        problem = check_record(checks, key, data, headers, envelope)
        if problem is not None:
            return problem
    return envelope


@dataclass
class FoldStats:
    events: int = 0
    skipped: int = 0
    skipped_details: list[SkippedRecord] = field(default_factory=list)

    def skip(self, record: SkippedRecord) -> None:
        self.skipped += 1
        if len(self.skipped_details) < MAX_SKIPPED_DETAILS:
            self.skipped_details.append(record)


def open_db(path: Path, create: bool) -> Rdict:
    """The rebuild's RocksDB (raw mode). ``create=True`` opens a fresh output: its
    writes skip the write-ahead log, because a rebuild that dies half-way leaves a
    directory to delete and rebuild anyway (docs/replay.md)."""
    options = Options(raw_mode=True)
    options.create_if_missing(create)
    options.increase_parallelism(2)
    db = Rdict(str(path), options)
    if create:
        write = WriteOptions()
        write.disable_wal = True  # type: ignore[method-assign,assignment]  # a property
        db.set_write_options(write)
    return db


def write_sst(path: Path, items: Iterable[tuple[bytes, bytes]]) -> int:
    """Write ``items`` (keys strictly ascending) into a new SST file; how many.

    No file is left when there is nothing to write (RocksDB cannot ingest an empty one).
    """
    writer = SstFileWriter(options=Options(raw_mode=True))
    writer.open(str(path))
    count = 0
    for key, value in items:
        writer[key] = value
        count += 1
    if count:
        writer.finish()
    else:
        path.unlink(missing_ok=True)
    return count


class StateCache:
    """The fold's working set over a RocksDB: live states as objects, finished ones
    as bytes.

    ``hot`` holds states as objects in first-insertion order, evicted oldest first
    (an eighth of the capacity at a time) when it outgrows ``capacity``: events of
    one task arrive close together, so a state evicted too early is only read back
    from the DB (correct either way). A state that reaches a terminal status
    (SUCCEEDED, DEAD, CANCELLED) is encoded at once, while it is still in the CPU's
    caches, and kept as bytes in ``finished`` (up to ``4 * capacity`` of them, a few
    hundred bytes each, then written to the DB): most tasks end there, and a
    later event for one of them (a duplicate, a late completion) just decodes it
    back. :func:`fold_messages` reads and writes ``hot``, ``dirty`` and ``finished``
    inline (the per-event cost of method calls is measurable at this rate).

    Everything that leaves for the DB goes through WriteBatches with sorted keys
    (RocksDB's memtable takes sorted keys faster). At the end, :meth:`flush` writes
    what is left the same way, or :meth:`flush_to_sst` writes everything (DB,
    finished, hot) into one sorted SST file for the caller to ingest (much cheaper
    than WriteBatches for a fresh output).
    """

    def __init__(
        self, db: Rdict, capacity: int = 200_000, *, db_empty: bool = False
    ) -> None:
        self.db = db
        #: the DB holds nothing yet (a fresh scratch DB until the first write): a state
        #: in neither ``hot`` nor ``finished`` is then unknown without asking RocksDB
        self.db_empty = db_empty
        self.capacity = max(1, capacity)
        self.finished_capacity = 4 * self.capacity
        self.hot: dict[str, EntityState] = {}
        self.dirty: set[str] = set()  # hot states the DB does not have
        self.finished: dict[str, bytes] = {}  # encoded states the DB does not have
        #: writes for the DB, in order; a None value deletes the key (a removed task, D35)
        self._pending: list[tuple[bytes, bytes | None]] = []
        # every kind's state (D37); a task's still takes the compiled codec first
        self.encode = default_codec().encode_entity

    def get(self, task_id: str) -> EntityState | None:
        state = self.hot.get(task_id)
        return state if state is not None else self.load(task_id)

    def load(self, task_id: str) -> EntityState | None:
        """A state not in ``hot``: from ``finished`` or the DB (and then hot), or None."""
        raw = self.finished.pop(task_id, None)
        if raw is not None:
            self.dirty.add(task_id)  # the DB does not have it
        elif self.db_empty:
            return None
        else:
            raw = self.db.get(task_id.encode())
            if raw is None:
                return None
        state = decode_entity(raw)
        self.hot[task_id] = state
        self.trim()
        return state

    def put(self, task_id: str, state: EntityState) -> None:
        if status_of(state) in TERMINAL:
            self.finished[task_id] = self.encode(state)
            if self.hot.pop(task_id, None) is not None:
                self.dirty.discard(task_id)
            if len(self.finished) > self.finished_capacity:
                self.spill_finished()
            return
        self.hot[task_id] = state
        self.dirty.add(task_id)
        if len(self.hot) > self.capacity:
            self.trim()

    def remove(self, task_id: str) -> None:
        """A task the fold removed (retention or purge, D35) leaves the cache and the DB."""
        self.hot.pop(task_id, None)
        self.dirty.discard(task_id)
        self.finished.pop(task_id, None)
        if not self.db_empty or self._pending:
            # deleted now: a later submission of the same ID (it is free again) must not
            # find the old state in the DB while the delete waits for a commit
            self._pending.append((task_id.encode(), None))
            self._commit()

    def trim(self) -> None:
        """Evict the oldest states (an eighth of the capacity) once over capacity."""
        hot, dirty, encode = self.hot, self.dirty, self.encode
        if len(hot) <= self.capacity:
            return
        count = len(hot) - self.capacity + self.capacity // 8
        for task_id in list(islice(hot, count)):
            state = hot.pop(task_id)
            if task_id in dirty:
                dirty.discard(task_id)
                self._pending.append((task_id.encode(), encode(state)))
        # written now, whatever their number: a state evicted to ``_pending`` and read
        # again before a commit would be looked up in the DB, missed, and its next
        # events folded as if it were unknown (found by a fold of a group's members
        # with a tiny cache)
        self._commit()

    def spill_finished(self) -> None:
        """Write every finished state into the DB."""
        self._pending.extend((k.encode(), v) for k, v in self.finished.items())
        self.finished.clear()
        self._commit()

    def _commit(self) -> None:
        if self._pending:
            self._pending.sort(key=itemgetter(0))  # stable: a key's writes keep their order
            batch = WriteBatch(raw_mode=True)
            for key, value in self._pending:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            self.db.write(batch)
            self.db_empty = False
            self._pending = []

    def _drain(self) -> list[tuple[bytes, bytes]]:
        """Every state the DB does not have, encoded, in key order; then there is none."""
        hot, encode = self.hot, self.encode
        items = [(k.encode(), v) for k, v in self.finished.items()]
        items += [(k.encode(), encode(hot[k])) for k in self.dirty]
        items.sort()
        self.finished.clear()
        self.dirty.clear()
        return items

    def flush(self) -> None:
        """Write every state into the DB."""
        self._commit()
        self._pending.extend(self._drain())
        self._commit()

    def flush_to_sst(self, path: Path) -> int:
        """Write every state the cache knows, from its DB, ``finished`` or ``hot``, into
        one SST file at ``path`` in key order (the newer where the DB has an older
        one); how many.

        For a cache over a scratch DB of its own: the file then holds the whole result.
        """
        self._commit()
        it = self.db.iter()
        it.seek_to_first()
        return write_sst(path, merge_newest(_db_items(it), iter(self._drain())))


def _db_items(it: Any) -> Iterator[tuple[bytes, bytes]]:
    while it.valid():
        yield bytes(it.key()), bytes(it.value())
        it.next()


def merge_newest(
    older: Iterator[tuple[bytes, bytes]], newer: Iterator[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes]]:
    """Two key-ordered streams (each key once per stream) as one; ``newer`` wins a tie."""
    old = next(older, None)
    for key, value in newer:
        while old is not None and old[0] < key:
            yield old
            old = next(older, None)
        if old is not None and old[0] == key:
            old = next(older, None)
        yield key, value
    while old is not None:
        yield old
        old = next(older, None)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the fold (restored afterwards).

    The fold allocates millions of small container objects (envelopes, states, lists)
    and keeps up to ``cache_size`` states alive, so the generational collector
    keeps walking a large, growing heap: about a third of the fold's time. The fold
    makes no reference cycles (reference counting frees everything it drops), so
    nothing accumulates while the collector is off; the LRU bounds the memory.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fold_messages(
    messages: Iterable[list[Any]], cache: StateCache, limits: Limits, stats: FoldStats,
    checks: Checks | None = None,
) -> None:
    """The processor's fold over batches of Kafka messages (see module docstring).

    Same steps as :func:`decode_usable` + ``cache.get`` + ``apply`` + ``cache.put``,
    written out inline: this loop runs once per event. Two shortcuts that give the
    same states: the codec's compiled reader is called directly on records with the
    newest envelope header (anything else, or anything it does not read cleanly,
    goes through ``decode_event``, which decodes it or raises the DecodeError), and
    ``apply`` builds no outbound records (``effects=False``).
    """
    codec = default_codec()
    decode = codec.decode_event
    header, read = event_reader(codec.catalog) if codec.compiled else (b"", _no_reader)
    start = len(header)
    hot, dirty, finished, load = cache.hot, cache.dirty, cache.finished, cache.load
    encode, capacity, finished_capacity = cache.encode, cache.capacity, cache.finished_capacity
    appliers: tuple[Callable[..., tuple[Any, Any]], ...] = (apply, apply_any)
    tolerance = limits.clock_tolerance_ms
    events = 0
    for batch in messages:
        for message in batch:
            value = message.value()
            envelope = _read_envelope(message, value, read, header, start, decode)
            if envelope.__class__ is SkippedRecord or envelope.body.__class__ in _DERIVED or (
                    checks is not None and check_record(
                        checks, message.key(), value, message.headers(), envelope) is not None):
                stats.skip(_unusable(message, envelope, checks))
                continue
            envelope = _held(envelope, message, tolerance)  # as the live fold does (D44)
            task_id = envelope.task_id
            before = hot.get(task_id)
            if before is None:
                before = load(task_id)
            offset = message.offset()
            if _folded_already(before, offset):  # as the live fold skips it (D45)
                events += 1
                continue
            # a task ID is 0-9A-Z; other kinds' keys are lowercase (D37)
            after, _effects = appliers[task_id > "Z"](before, envelope, limits, effects=False)
            # the position the live fold gives it (D45; the cache holds the only reference,
            # so no copy): a state the event reached is stored again, its position moved
            mark_in_place(after, offset)
            if after is not None or before is not None:
                if after is None:  # removed: retention or purge (D35)
                    cache.remove(task_id)
                # cache.put, inline (limits and keys have no status: never finished)
                elif getattr(after, "status", None) in TERMINAL:
                    finished[task_id] = encode(after)
                    if hot.pop(task_id, None) is not None:
                        dirty.discard(task_id)
                    if len(finished) > finished_capacity:
                        cache.spill_finished()
                else:
                    hot[task_id] = after
                    dirty.add(task_id)
                    if len(hot) > capacity:
                        cache.trim()
            events += 1
    stats.events += events


def _held(envelope: Envelope, message: Any, tolerance: int | None) -> Envelope:
    """The envelope with its times held to the record's broker timestamp (D44)."""
    if tolerance is None:
        return envelope
    return clamp(envelope, message.timestamp()[1], tolerance)


def _folded_already(state: EntityState | None, offset: int) -> bool:
    """Whether the record at ``offset`` is older than ``state``'s position (D45): only a
    state the fold read back after it went further (never in one pass over a log)."""
    if state is None:
        return False
    position = position_of(state)
    return position is not None and offset < position


def _read_envelope(message: Any, value: Any, read: Callable[..., tuple[Any, int]],
                   header: bytes, start: int, decode: Callable[[bytes], Envelope]) -> Any:
    """The record's envelope by the compiled reader when it is cleanly ours (the newest
    header, every byte read), else as :func:`_decode_slowly` finds it."""
    try:
        envelope, end = read(value, start, len(value))
        if end != len(value) or not value.startswith(header):
            raise ValueError  # not cleanly ours: decode_event decides
    except Exception:
        return _decode_slowly(message, decode)
    return envelope


def _decode_slowly(message: Any, decode: Callable[[bytes], Envelope]) -> Any:
    """The envelope of a record the compiled reader left alone, or the SkippedRecord."""
    value = message.value()
    try:
        return decode(value if value.__class__ is bytes else b"")
    except DecodeError as exc:
        return SkippedRecord(message.partition(), message.offset(), str(exc))


def _unusable(message: Any, found: Any, checks: Checks | None) -> SkippedRecord:
    """Why a record is skipped (the rare path: the check runs again for its reason)."""
    if found.__class__ is SkippedRecord:
        return found
    reason = f"{found.type_name} is not an events-topic record"
    if found.body.__class__ not in _DERIVED and checks is not None:
        reason = check_record(checks, message.key(), message.value(), message.headers(),
                              found) or reason
    return SkippedRecord(message.partition(), message.offset(), reason)


def _no_reader(data: bytes, start: int, end: int) -> tuple[Any, int]:
    raise ValueError("no compiled reader: decode_event decides")


@dataclass(frozen=True, slots=True)
class FoldedPart:
    """What folding some partitions left: the number of states and the SST holding them."""

    tasks: int
    sst: str | None  # None when there is no state
    wall_s: float = 0.0  # the fold's wall time
    cpu_s: float = 0.0  # the fold's CPU time (this process, librdkafka's threads included)


def fold_to_sst(
    consumer: Any, settings: Settings, read: ReadPlan, work: Path, cache_size: int,
    progress: Advances | None,
) -> tuple[FoldStats, FoldedPart]:
    """Fold ``read`` into one SST file under ``work`` (a directory of its own).

    States the LRU evicts go to a scratch RocksDB under ``work`` (WAL off); at the end
    the scratch DB and the hot states are merged into ``work/states.sst``.
    """
    started, cpu = time.perf_counter(), time.process_time()
    work.mkdir(parents=True, exist_ok=True)
    db = open_db(work / "spill", create=True)
    stats = FoldStats()
    try:
        cache = StateCache(db, capacity=cache_size, db_empty=True)  # a fresh scratch DB
        with collector_paused():
            batches = read_batches(consumer, read, settings.kafka_timeout_s, progress)
            fold_messages(batches, cache, limits_of(settings), stats, checks_of(settings))
            sst = work / "states.sst"
            tasks = cache.flush_to_sst(sst)
    finally:
        db.close()
    return stats, FoldedPart(tasks, str(sst) if tasks else None,
                             time.perf_counter() - started, time.process_time() - cpu)


def count_keys(db: Rdict) -> int:
    it = db.iter()
    it.seek_to_first()
    count = 0
    while it.valid():
        count += 1
        it.next()
    return count


def iter_states(db: Rdict) -> Iterator[tuple[str, EntityState]]:
    """Every (entity key, state) of a rebuilt RocksDB, in key order (tasks first)."""
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        yield bytes(it.key()).decode(), decode_entity(bytes(it.value()))
        it.next()


class StateDB(Mapping[str, EntityState]):
    """A rebuilt RocksDB seen as ``entity key -> state`` (decoded on access)."""

    def __init__(self, db: Rdict) -> None:
        self._db = db

    def __getitem__(self, task_id: str) -> EntityState:
        raw = self._db.get(task_id.encode())
        if raw is None:
            raise KeyError(task_id)
        return decode_entity(raw)

    def __iter__(self) -> Iterator[str]:
        it = self._db.iter()
        it.seek_to_first()
        while it.valid():
            yield bytes(it.key()).decode()
            it.next()

    def __len__(self) -> int:
        return count_keys(self._db)
