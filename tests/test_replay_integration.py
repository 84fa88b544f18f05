"""Replay against the real broker and a real processor.

Given a workload with successes, retries, a dead letter, cancellations, duplicates,
a stale completion and a processor restart, when the log is replayed, then
``verify`` finds the live task table to be exactly the fold of the log; a state
corrupted in the changelog is reported as exactly that task; ``--until`` gives the
earlier state of a task; ``history`` shows the stale completion as rejected; the
Avro export reads back with fastavro holding every event; a record that does not
decode is reported with partition and offset and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from taskstream.cli.main import main
from taskstream.processors.replay.folding import StateDB, iter_states, open_db
from taskstream.processors.replay.history import REJECTED, SKIPPED, task_history
from taskstream.processors.replay.read import partition_for, watermarks
from taskstream.processors.replay.rebuild import rebuild
from taskstream.processors.replay.verify import read_changelog
from taskstream.schemas.events import (
    Backoff,
    CancelRequested,
    Envelope,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskSubmitted,
    TaskSucceeded,
)
from taskstream.schemas.ids import new_event_id, new_task_id
from taskstream.schemas.serde import decode_state, encode_event, encode_state
from taskstream.schemas.state import TaskStatus
from taskstream.settings import Settings
from taskstream.topics import ready_topic
from taskstream.topics import task_changelog_topic as changelog_topic
from tests.harness import EventWriter, ProcessorProcess, StateReader, TopicReader, wait_for

pytestmark = [pytest.mark.kafka]


def submitted(payload: bytes = b'{"n": 1}', *, max_attempts: int = 3, eta_ms: int | None = None,
              lease_ms: int = 30_000) -> TaskSubmitted:
    return TaskSubmitted(
        name="demo.add", queue="default", priority=0, payload=payload,
        content_type="application/json", eta_ms=eta_ms, max_attempts=max_attempts,
        backoff=Backoff(initial_ms=200, multiplier=2.0, max_ms=1_000, jitter=0.0),
        timeout_ms=None, lease_ms=lease_ms,
    )


def cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    from tests.harness import settings_env

    result = CliRunner().invoke(main, ["replay", *args], env=settings_env(settings))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


class Workload:
    """Writes events like clients and workers do, and waits for the processor's dispatches."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer = EventWriter(settings)
        self.ready = TopicReader(settings, ready_topic(settings, "default", 0))
        self._states: StateReader | None = None
        self.dispatches: list[Envelope] = []

    @property
    def states(self) -> StateReader:
        """Made on first use: the changelog exists only once a processor has started."""
        if self._states is None:
            self._states = StateReader(self.settings)
        return self._states

    def close(self) -> None:
        self.ready.close()
        if self._states is not None:
            self._states.reader.close()

    def dispatch_of(self, task_id: str, attempt: int, timeout: float = 30.0) -> TaskDispatched:
        def check() -> Envelope | None:
            self.dispatches.extend(self.ready.envelopes(0.2))
            return next((e for e in self.dispatches
                         if e.task_id == task_id and e.attempt == attempt), None)

        body = wait_for(f"dispatch of {task_id} attempt {attempt}", check, timeout=timeout).body
        assert isinstance(body, TaskDispatched)
        return body

    def run(self, task_id: str, attempt: int, ok: bool = True, **failure: object) -> None:
        dispatch = self.dispatch_of(task_id, attempt)
        self.writer.send(task_id, TaskStarted(dispatch.dispatch_id, "w1"), attempt)
        if ok:
            self.writer.send(task_id, TaskSucceeded(dispatch.dispatch_id, "w1", b"3"), attempt)
        else:
            self.writer.send(task_id, TaskFailed(dispatch.dispatch_id, "w1", "ValueError",
                                                 "boom", **failure),  # type: ignore[arg-type]
                             attempt)

    def wait_status(self, task_id: str, status: TaskStatus) -> None:
        self.states.wait(task_id, lambda s: s.status is status, status.value)


@pytest.fixture
def workload(topics: Settings) -> Iterator[Workload]:
    work = Workload(topics)
    yield work
    work.close()


def test_verify_history_until_and_export_after_a_full_workload(
    workload: Workload, topics: Settings, tmp_path: Path
) -> None:
    w = workload
    ok, retried, dead, waiting, running, dup, stale = (new_task_id() for _ in range(7))
    replica = ProcessorProcess(topics, tmp_path / "replica0").start()
    try:
        # success; the --until cut falls between its start and its success
        w.writer.send(ok, submitted())
        first = w.dispatch_of(ok, 1)
        w.writer.send(ok, TaskStarted(first.dispatch_id, "w1"), 1)
        w.wait_status(ok, TaskStatus.RUNNING)
        time.sleep(0.05)
        cut_ms = int(time.time() * 1000)
        time.sleep(0.05)
        w.writer.send(ok, TaskSucceeded(first.dispatch_id, "w1", b"3"), 1)
        # a retry, then success; a dead letter
        w.writer.send(retried, submitted(max_attempts=3))
        w.run(retried, 1, ok=False)
        w.writer.send(dead, submitted(max_attempts=1))
        w.run(dead, 1, ok=False)
        # duplicates and a conflict
        for payload in (b'{"n": 1}', b'{"n": 1}', b'{"n": 2}'):
            w.writer.send(dup, submitted(payload))
        # restart the processor in the middle of it all
        replica.stop()
        replica = ProcessorProcess(topics, tmp_path / "replica0").start()
        w.run(retried, 2)
        # cancellations: one waiting for its eta, one running
        w.writer.send(waiting, submitted(eta_ms=int(time.time() * 1000) + 600_000))
        w.writer.send(running, submitted())
        started = w.dispatch_of(running, 1)
        w.writer.send(running, TaskStarted(started.dispatch_id, "w1"), 1)
        w.wait_status(running, TaskStatus.RUNNING)
        for task_id in (waiting, running):
            w.writer.send(task_id, CancelRequested("test"))
        # a lease that lapses; the slow worker's late success is fenced
        w.writer.send(stale, submitted(lease_ms=1_000))  # the least lease the fold takes (D28)
        slow = w.dispatch_of(stale, 1)
        w.writer.send(stale, TaskStarted(slow.dispatch_id, "slow"), 1)
        w.run(stale, 2)
        w.wait_status(stale, TaskStatus.SUCCEEDED)
        w.writer.send(stale, TaskSucceeded(slow.dispatch_id, "slow", b"late"), 1)
        w.states.wait(stale, lambda s: s.rejected >= 1, "late success rejected")
        for task_id, status in ((ok, TaskStatus.SUCCEEDED), (retried, TaskStatus.SUCCEEDED),
                                (dead, TaskStatus.DEAD), (waiting, TaskStatus.CANCELLED),
                                (running, TaskStatus.CANCELLED), (dup, TaskStatus.READY)):
            w.wait_status(task_id, status)

        # verify: the live table is exactly the fold of the log
        code, out, err = cli(topics, "verify", "--quiet", "--json", "--wait-timeout", "60")
        report = json.loads(out)
        assert code == 0, (out, err)
        assert report["ok"] and report["mismatches"] == [] and report["tasks"] == 7
    finally:
        replica.stop()

    # history: in order, the stale completion visibly rejected
    entries = task_history(topics, stale)
    assert [e.envelope.type_name for e in entries if e.envelope][:3] == [
        "TaskSubmitted", "TaskStarted", "TimerFired"]
    offsets = [e.offset for e in entries]
    assert offsets == sorted(offsets)
    late = [e for e in entries if e.envelope and e.envelope.source == "test"
            and e.envelope.type_name == "TaskSucceeded" and e.envelope.attempt == 1]
    assert [e.outcome for e in late] == [REJECTED]
    assert entries[-1].status_after == "SUCCEEDED"
    code, out, _ = cli(topics, "history", stale, "--quiet")
    assert code == 0 and "REJECTED" in out
    code, out, _ = cli(topics, "history", dup, "--json", "--quiet")
    assert [json.loads(line)["outcome"] for line in out.splitlines()] == [
        "accepted", "duplicate", "conflict"]

    # --until: the earlier state of a task that later changed
    code, out, err = cli(topics, "rebuild", "--until", str(cut_ms), "--out",
                         str(tmp_path / "until"), "--quiet", "--json")
    assert code == 0, err
    db = open_db(tmp_path / "until", create=False)
    try:
        assert StateDB(db)[ok].status is TaskStatus.RUNNING
        assert retried not in StateDB(db)
    finally:
        db.close()

    # a state corrupted in the changelog is reported as exactly that task
    live, _ = read_changelog(topics)
    bad = dataclasses.replace(live[dead], status=TaskStatus.SUCCEEDED)
    corrupt = Producer({"bootstrap.servers": topics.bootstrap})
    corrupt.produce(changelog_topic(topics), key=dead.encode(), value=encode_state(bad),
                    partition=partition_for(dead.encode(), topics.partitions))
    assert corrupt.flush(10) == 0
    code, out, _ = cli(topics, "verify", "--quiet", "--wait-timeout", "30")
    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("MISMATCH")] == [
        f"MISMATCH {dead}: status: replay=<TaskStatus.DEAD: 'DEAD'> "
        "live=<TaskStatus.SUCCEEDED: 'SUCCEEDED'>"]
    explained = out.split(f"MISMATCH {dead}", 1)[1]  # read without another command:
    assert "TaskSubmitted" in explained and "=> " in explained  # its events, judged
    [status] = [line for line in explained.splitlines() if line.startswith("  * status ")]
    assert status.index("DEAD") < status.index("SUCCEEDED")  # replay left, live right

    # the export holds every event and reads back with fastavro
    code, _, err = cli(topics, "export", "--format", "avro", "--out",
                       str(tmp_path / "events.avro"), "--quiet")
    assert code == 0, err
    with open(tmp_path / "events.avro", "rb") as fo:
        records: list[dict[str, Any]] = list(fastavro.reader(fo))  # type: ignore[arg-type]
    everything = TopicReader(topics, topics.topic("events"))
    logged: list[Envelope] = []
    total = sum(high for _, high in watermarks(
        everything.consumer, topics.topic("events"), range(topics.partitions), 10).values())

    def read_all() -> bool:
        logged.extend(everything.envelopes(0.5))
        return len(logged) >= total

    wait_for(f"all {total} events", read_all)
    assert len(records) == total == len(logged)
    assert {r["event_id"] for r in records} == {e.event_id for e in logged}
    assert {r["body"]["dispatch_id"] for r in records if "dispatch_id" in r["body"]} >= {
        slow.dispatch_id}


def test_undecodable_record_is_reported_and_skipped(
    topics: Settings, tmp_path: Path
) -> None:
    task_id = new_task_id()
    writer = EventWriter(topics)
    writer.send(task_id, submitted())
    raw = Producer({"bootstrap.servers": topics.bootstrap, "partitioner": "murmur2_random"})
    raw.produce(topics.topic("events"), key=task_id.encode(), value=b"\xc3\x01garbage")
    assert raw.flush(10) == 0
    writer.send(task_id, CancelRequested("bye"))
    partition = partition_for(task_id.encode(), topics.partitions)

    result = rebuild(topics, tmp_path / "db")
    assert (result.events, result.skipped, result.tasks) == (2, 1, 1)
    [skipped] = result.skipped_details
    assert (skipped.partition, skipped.offset) == (partition, 1)
    db = open_db(tmp_path / "db", create=False)
    try:
        stored = db.get(task_id.encode())
        assert isinstance(stored, bytes)
        state = decode_state(stored)
        assert state.status is TaskStatus.CANCELLED
    finally:
        db.close()

    code, _, err = cli(topics, "rebuild", "--out", str(tmp_path / "db2"), "--quiet")
    assert code == 0
    assert f"partition {partition} offset 1" in err and "1 record(s) skipped" in err

    entries = task_history(topics, task_id)
    assert [e.outcome for e in entries] == ["accepted", SKIPPED, "accepted"]
    assert entries[1].offset == 1 and "cannot decode" in entries[1].reason

    code, _, err = cli(topics, "export", "--format", "jsonl", "--out",
                       str(tmp_path / "events.jsonl"), "--quiet")
    assert code == 0 and f"partition {partition} offset 1" in err
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["TaskSubmitted", "CancelRequested"]
    assert lines[0]["body"]["payload"] == {"n": 1}

    # --until-offsets: only the submission
    until = rebuild(topics, tmp_path / "db3", until_offsets={partition: 1})
    assert (until.events, until.skipped) == (1, 0)


def test_parallel_rebuild_equals_the_single_process_one(topics: Settings, tmp_path: Path) -> None:
    writer = EventWriter(topics)
    writer.producer.produce(topics.topic("events"), key=b"x", value=b"not avro")
    now = int(time.time() * 1000)  # event times this century: the record check refuses others
    for _ in range(40):
        task_id = new_task_id()
        writer.producer.produce(topics.topic("events"), key=task_id.encode(),
                                value=encode_event(Envelope(new_event_id(), task_id, now, "test",
                                                            0, submitted())))
        writer.producer.produce(topics.topic("events"), key=task_id.encode(),
                                value=encode_event(Envelope(new_event_id(), task_id, now + 1,
                                                            "test", 0, CancelRequested("x"))))
    assert writer.producer.flush(10) == 0
    single = rebuild(topics, tmp_path / "one", workers=1)
    double = rebuild(topics, tmp_path / "two", workers=2)
    assert (single.events, single.skipped, single.tasks) == (80, 1, 40)
    assert (double.events, double.skipped, double.tasks) == (80, 1, 40)
    states = []
    for out in (single.out, double.out):
        db = open_db(out, create=False)
        try:
            states.append(dict(iter_states(db)))
        finally:
            db.close()
    assert states[0] == states[1]
    assert {s.status for s in states[0].values()} == {TaskStatus.CANCELLED}
