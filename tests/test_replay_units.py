"""Replay's pure parts, without Kafka: partition choice, argument parsing, compare,
the rebuild fold (LRU and skips), history verdicts and the JSON export of bodies."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from taskstream.cli.replay_args import parse_offsets_spec, parse_time
from taskstream.processors.fold.lifecycle import Limits, fold
from taskstream.processors.replay.errors import ReplayError
from taskstream.processors.replay.export import body_to_json, envelope_to_json
from taskstream.processors.replay.folding import (
    FoldStats,
    StateCache,
    StateDB,
    collector_paused,
    decode_usable,
    fold_messages,
    merge_newest,
    open_db,
)
from taskstream.processors.replay.history import (
    ACCEPTED,
    CONFLICT,
    DUPLICATE,
    REJECTED,
    SKIPPED,
    explain,
    format_entry,
)
from taskstream.processors.replay.parallel import split
from taskstream.processors.replay.read import ReadPlan, partition_for, read_batches
from taskstream.processors.replay.verify import compare, side_by_side
from taskstream.schemas.events import (
    CancelRequested,
    Envelope,
    TaskDispatched,
    TaskStarted,
    TaskSucceeded,
)
from taskstream.schemas.serde import encode_event
from taskstream.schemas.state import TaskState, TaskStatus
from tests.lifecycle_support import T0, submitted, unpositioned

# -- partition choice ---------------------------------------------------------------

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
@pytest.mark.parametrize("partitions", [1, 3, 12, 64])
def test_partition_choice_matches_the_java_client(key: bytes, expected: int,
                                                  partitions: int) -> None:
    assert partition_for(key, partitions) == (expected & 0x7FFFFFFF) % partitions


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=512))
def test_partition_choice_matches_aiokafka(key: bytes, partitions: int) -> None:
    everyone = list(range(partitions))
    assert partition_for(key, partitions) == DefaultPartitioner()(key, everyone, everyone)


# -- arguments ------------------------------------------------------------------------


def test_offsets_spec_parses_pairs() -> None:
    assert parse_offsets_spec("0:1200,1:900") == {0: 1200, 1: 900}
    assert parse_offsets_spec(" 3 : 7 , ") == {3: 7}


@pytest.mark.parametrize("bad", ["", ",", "0", "0:", ":5", "a:1", "0:-1", "0:1,0:2", "0:1;1:2"])
def test_offsets_spec_rejects_nonsense(bad: str) -> None:
    with pytest.raises(ReplayError, match="spec"):
        parse_offsets_spec(bad)


def test_time_accepts_millis_and_iso() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # no zone = UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000_000
    with pytest.raises(ReplayError, match="ISO 8601"):
        parse_time("yesterday")


# -- compare ------------------------------------------------------------------------------


def _states() -> dict[str, TaskState]:
    events = []
    for n, task_id in enumerate(("A", "B", "C")):
        events.append(Envelope(f"E{n}", task_id, T0 + n, "test", 0, submitted()))
    return fold(events)


def test_compare_identical_is_empty() -> None:
    states = _states()
    assert compare(states, dict(states)) == []


def test_compare_names_exactly_the_corrupted_task_and_fields() -> None:
    expected = _states()
    live = dict(expected)
    live["B"] = dataclasses.replace(live["B"], status=TaskStatus.SUCCEEDED, retries=7)
    [mismatch] = compare(expected, live)
    assert mismatch.task_id == "B" and mismatch.kind == "differs"
    assert [d.name for d in mismatch.diffs] == ["status", "retries"]
    assert mismatch.diffs[0].expected is TaskStatus.READY
    assert mismatch.diffs[0].live is TaskStatus.SUCCEEDED
    assert "retries: replay=0 live=7" in mismatch.describe()


def test_compare_reports_tasks_missing_on_either_side() -> None:
    expected = _states()
    live = dict(expected)
    del live["A"]
    live["Z"] = dataclasses.replace(expected["C"], task_id="Z")
    assert [(m.task_id, m.kind) for m in compare(expected, live)] == [
        ("A", "missing-live"), ("Z", "missing-replay")]


def test_a_mismatch_shows_both_states_side_by_side() -> None:
    expected = _states()
    live = dict(expected)
    live["B"] = dataclasses.replace(live["B"], status=TaskStatus.SUCCEEDED, retries=7)
    del live["C"]
    differs, missing = compare(expected, live)
    rows = {line[2:].split()[0]: line for line in side_by_side(differs.expected, differs.live)[1:]}
    assert rows["status"].startswith("*") and "READY" in rows["status"]
    assert "SUCCEEDED" in rows["status"].split("READY", 1)[1]  # replay left, live right
    assert rows["retries"].startswith("*") and rows["task_id"].startswith(" ")
    assert {line[0] for line in side_by_side(missing.expected, missing.live)[1:]} == {"*"}
    assert all("(absent)" in line for line in side_by_side(missing.expected, None)[1:])


# -- the rebuild fold -------------------------------------------------------------------------


@dataclasses.dataclass
class Msg:
    """The three accessors of a confluent-kafka Message the fold uses."""

    _value: bytes | None
    _partition: int
    _offset: int

    def value(self) -> bytes | None:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def _workload(tasks: int) -> list[Envelope]:
    events: list[Envelope] = []
    states: dict[str, TaskState] = {}
    for n in range(tasks):
        events.append(Envelope(f"S{n}", f"T{n:04d}", T0 + n, "test", 0, submitted()))
    states = fold(events)
    for n in range(tasks):
        state = states[f"T{n:04d}"]
        assert state.dispatch_id is not None
        events.append(Envelope(f"R{n}", state.task_id, T0 + 1000 + n, "w", 1,
                               TaskStarted(state.dispatch_id, "w")))
        if n % 2:
            events.append(Envelope(f"D{n}", state.task_id, T0 + 2000 + n, "w", 1,
                                   TaskSucceeded(state.dispatch_id, "w", b"1")))
    return events


def _fold_into_db(path: Path, batches: list[list[Msg]],
                  **cache_args: int) -> tuple[FoldStats, dict[str, Any]]:
    """Fold message batches into a fresh DB at ``path``: the stats and the states kept."""
    db = open_db(path, create=True)
    try:
        cache = StateCache(db, **cache_args)
        stats = FoldStats()
        fold_messages(batches, cache, Limits(), stats)
        cache.flush()
        return stats, dict(StateDB(db))
    finally:
        db.close()


def test_fold_with_a_tiny_cache_equals_the_lifecycle_fold(tmp_path: Path) -> None:
    events = _workload(40)
    messages = [Msg(encode_event(e), 0, i) for i, e in enumerate(events)]
    stats, states = _fold_into_db(tmp_path / "db", [messages[:50], messages[50:]],
                                  capacity=3)
    assert stats.events == len(events) and stats.skipped == 0
    assert unpositioned(states) == fold(events)


def test_fold_skips_bad_records_with_their_position(tmp_path: Path) -> None:
    events = _workload(2)
    state = fold(events[:1])["T0000"]
    derived = Envelope("X", "T0000", T0, "processor", 1, TaskDispatched(
        "d", "n", "default", 0, b"", "application/json", None, 1, 1, T0))
    messages = [Msg(encode_event(events[0]), 2, 10), Msg(b"garbage", 2, 11), Msg(None, 2, 12),
                Msg(encode_event(derived), 2, 13)]
    stats, states = _fold_into_db(tmp_path / "db", [messages])
    assert stats.events == 1 and stats.skipped == 3
    assert [(s.partition, s.offset) for s in stats.skipped_details] == [(2, 11), (2, 12),
                                                                         (2, 13)]
    assert "not an events-topic record" in stats.skipped_details[2].reason
    assert unpositioned(states) == {"T0000": state}


@given(st.dictionaries(st.binary(max_size=3), st.binary(max_size=3)),
       st.dictionaries(st.binary(max_size=3), st.binary(max_size=3)))
def test_merge_newest_is_a_sorted_dict_update(older: dict[bytes, bytes],
                                              newer: dict[bytes, bytes]) -> None:
    merged = list(merge_newest(iter(sorted(older.items())), iter(sorted(newer.items()))))
    assert merged == sorted({**older, **newer}.items())


@pytest.mark.parametrize("db_empty", [False, True])
@pytest.mark.parametrize("capacity", [3, 1_000])
def test_fold_to_an_sst_with_evictions_equals_the_lifecycle_fold(
    tmp_path: Path, capacity: int, db_empty: bool
) -> None:
    """Evicted states (spilled to the scratch DB) and hot ones meet in one SST; a cache
    told its DB starts empty asks it again once it has written (capacity 3)."""
    events = _workload(40)
    # a late event for the first task: its state was evicted and must be read back
    first = fold(events)["T0000"]
    events.append(Envelope("C0", "T0000", T0 + 9_000, "api", 0, CancelRequested("late")))
    # later events for finished tasks: kept encoded (or spilled), decoded back
    events.append(Envelope("S1again", "T0001", T0 + 9_001, "test", 0, submitted()))
    events.append(Envelope("C3", "T0003", T0 + 9_002, "api", 0, CancelRequested("too late")))
    events.append(Envelope("S1again2", "T0001", T0 + 9_003, "test", 0, submitted()))
    messages = [Msg(encode_event(e), 0, i) for i, e in enumerate(events)]
    spill = open_db(tmp_path / "spill", create=True)
    try:
        cache = StateCache(spill, capacity=capacity, db_empty=db_empty)
        stats = FoldStats()
        with collector_paused():
            fold_messages([messages[:50], messages[50:]], cache, Limits(), stats)
            written = cache.flush_to_sst(tmp_path / "states.sst")
    finally:
        spill.close()
    out = open_db(tmp_path / "out", create=True)
    try:
        out.ingest_external_file([str(tmp_path / "states.sst")])
        expected = fold(events)
        assert written == len(expected) == 40
        assert unpositioned(dict(StateDB(out))) == expected
        assert expected["T0000"].status is not first.status  # the late events did count
        assert expected["T0001"].duplicates == 2 and expected["T0003"].rejected == 1
    finally:
        out.close()


def test_collector_paused_restores_the_collector() -> None:
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()


# -- history verdicts ---------------------------------------------------------------------------


def test_history_shows_duplicates_and_rejected_stale_completions() -> None:
    sub = Envelope("E1", "T", T0, "client", 0, submitted())
    state = fold([sub])["T"]
    assert state.dispatch_id is not None
    items: list[Envelope | str] = [
        sub,
        Envelope("E2", "T", T0 + 1, "client", 0, submitted()),
        Envelope("E3", "T", T0 + 2, "client", 0, submitted(payload=b'{"n": 2}')),
        Envelope("E4", "T", T0 + 3, "w", 1, TaskStarted(state.dispatch_id, "w")),
        Envelope("E5", "T", T0 + 4, "w", 1, TaskSucceeded(state.dispatch_id, "w", b"1")),
        Envelope("E6", "T", T0 + 5, "w", 1, TaskSucceeded(state.dispatch_id, "w2", b"2")),
        "cannot decode event: garbage",
    ]
    entries = explain([(0, n, T0 + n, item) for n, item in enumerate(items)], Limits())
    assert [e.outcome for e in entries] == [ACCEPTED, DUPLICATE, CONFLICT, ACCEPTED, ACCEPTED,
                                            REJECTED, SKIPPED]
    assert (entries[0].status_before, entries[0].status_after) == (None, "READY")
    assert entries[0].decisions[0].startswith("dispatched attempt 1")
    assert (entries[4].status_before, entries[4].status_after) == ("RUNNING", "SUCCEEDED")
    assert entries[5].reason and entries[5].status_after == "SUCCEEDED"
    assert "REJECTED" in format_entry(entries[5])
    as_json = entries[5].to_json()
    assert as_json["outcome"] == REJECTED and as_json["type"] == "TaskSucceeded"
    json.dumps(as_json)


# -- export bodies ------------------------------------------------------------------------------


def test_json_payloads_are_inlined_and_other_bytes_base64() -> None:
    body = body_to_json(submitted(payload=b'{"n": 1}'))
    assert body["payload"] == {"n": 1}
    binary = dataclasses.replace(submitted(), payload=b"\xff\x00", content_type="app/octet")
    assert body_to_json(binary)["payload_base64"] == base64.b64encode(b"\xff\x00").decode()
    succeeded = body_to_json(TaskSucceeded("d", "w", b"not json", "application/json"))
    assert succeeded["result_base64"] == base64.b64encode(b"not json").decode()
    env = Envelope("E", "T", T0, "client", 0, submitted())
    line: dict[str, Any] = json.loads(envelope_to_json(env, 1, 2, 3))
    assert (line["partition"], line["offset"], line["type"]) == (1, 2, "TaskSubmitted")
    assert line["body"]["backoff"]["initial_ms"] == 1_000


def test_split_balances_partitions_by_records() -> None:
    read = ReadPlan("t", {0: 0, 1: 0, 2: 10, 3: 0}, {0: 100, 1: 60, 2: 50, 3: 30})
    groups = split(read, 2)
    assert sorted(p for g in groups for p in g) == [0, 1, 2, 3]
    sizes = sorted(sum(read.ends[p] - read.starts[p] for p in g) for g in groups)
    assert sizes == [100, 130]
    assert split(ReadPlan("t", {0: 0}, {0: 5}), 2) == [[0]]


def test_fold_reads_what_decode_event_reads_and_skips_what_it_refuses(tmp_path: Path) -> None:
    """The fold's direct compiled reads: a clean record folds as decode_event gives it;
    one with bytes after the body, cut short, or under another header is skipped
    with decode_event's own reason."""
    events = _workload(1)
    good = encode_event(events[0])
    bad = [good + b"\x00", good[:-3], b"\xc3\x01" + bytes(8) + good[10:]]
    messages = [Msg(value, 0, offset) for offset, value in enumerate([*bad, good])]
    stats, states = _fold_into_db(tmp_path / "db", [messages])
    assert stats.events == 1 and stats.skipped == 3
    assert [s.reason for s in stats.skipped_details] == [decode_usable(v) for v in bad]
    assert unpositioned(states) == fold(events[:1])


@dataclasses.dataclass
class ReadMsg(Msg):
    def error(self) -> None:
        return None


class QueueConsumer:
    """A consumer whose ``consume`` returns what it holds, at most the number asked."""

    def __init__(self, held: list[ReadMsg]) -> None:
        self.held = held
        self.asked: list[int] = []

    def assign(self, partitions: object) -> None:
        pass

    def unassign(self) -> None:
        pass

    def pause(self, partitions: object) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[ReadMsg]:
        self.asked.append(num_messages)
        taken, self.held = self.held[:num_messages], self.held[num_messages:]
        return taken


def test_read_asks_for_no_more_than_the_records_still_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last batch is asked for exactly (consume would otherwise wait its timeout)."""
    monkeypatch.setattr("taskstream.processors.replay.read.BATCH", 4)
    held = [ReadMsg(b"", p, o) for o in range(5) for p in (0, 1)]  # 10 records, 2 partitions
    consumer = QueueConsumer(held)
    read = ReadPlan("t", {0: 0, 1: 0}, {0: 5, 1: 5})
    batches = list(read_batches(consumer, read, 1.0))  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [4, 4, 2]
    assert consumer.asked == [4, 4, 2]
