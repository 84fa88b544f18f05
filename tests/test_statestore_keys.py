"""Key layouts and range scans of the state store, on a real RocksDB (no Kafka)."""

from __future__ import annotations

import heapq
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from taskstream.schemas.events import TimerKind
from taskstream.schemas.ids import new_task_id
from taskstream.statestore import keys
from taskstream.statestore.tables import TaskTables


def raw_db(path: Path) -> Rdict:
    return Rdict(str(path), Options(raw_mode=True))


@given(st.integers(0, 2**48), st.integers(0, 2**48))
def test_due_keys_sort_by_time(a: int, b: int) -> None:
    assert (keys.due_key(a, "X") < keys.due_key(b, "X")) == (a < b) or a == b


def test_due_entry_round_trip() -> None:
    key = keys.due_key(1234, "T1")
    entry = keys.parse_due(key, keys.due_value(TimerKind.RETRY_DUE, 3, "d-9"))
    assert entry == keys.DueEntry(1234, "T1", TimerKind.RETRY_DUE, 3, "d-9")
    assert key < keys.due_upper_bound(1234) <= keys.due_key(1235, "")


def test_listing_scans_in_id_order_per_queue_and_across_queues(tmp_path: Path) -> None:
    db = raw_db(tmp_path / "listing")
    ids = {q: sorted(new_task_id() for _ in range(5)) for q in ("alpha", "beta", "b")}
    for queue, task_ids in ids.items():
        for task_id in task_ids:
            db[keys.listing_key(queue, "READY", task_id)] = b"1"
            db[keys.listing_key(queue, "DEAD", task_id + "Z")] = b"0"
    assert list(TaskTables._queues(db)) == ["alpha", "b", "beta"]
    run = list(TaskTables._scan_run(db, keys.listing_prefix("b", "READY"), ""))
    assert run == ids["b"]
    after = list(TaskTables._scan_run(db, keys.listing_prefix("b", "READY"), ids["b"][1]))
    assert after == ids["b"][2:]
    every_queue = list(heapq.merge(*(
        TaskTables._scan_run(db, keys.listing_prefix(q, "READY"), "")
        for q in TaskTables._queues(db))))
    assert every_queue == sorted(t for v in ids.values() for t in v)
    db.close()
