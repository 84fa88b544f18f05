"""Structured logs, worker presence records and doctor's judgements, without a broker."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from taskstream.admin import topic_specs
from taskstream.cli.doctor import (
    FAIL,
    OK,
    WARN,
    TopicFacts,
    judge_brokers,
    judge_processors,
    judge_topic,
    judge_workers,
)
from taskstream.schemas.ids import new_task_id
from taskstream.settings import Settings
from taskstream.telemetry.context import task_trace_hex
from taskstream.telemetry.logs import (
    JsonFormatter,
    TaskContextFilter,
    TaskLogContext,
    TextFormatter,
    task_context,
)
from taskstream.topics import ReadyTopic, parse_ready_topic
from taskstream.workers.context import TaskContext
from taskstream.workers.pools import run_in_thread
from taskstream.workers.presence import WorkerRecord
from taskstream.workers.roster import Roster, live_by_queue

# -- logs -------------------------------------------------------------------------------


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(TaskContextFilter())
    logger = logging.getLogger(f"test.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_json_line_has_the_task_fields() -> None:
    logger, stream = capture(JsonFormatter())
    task_id = new_task_id()
    logger.info("not about a task")
    with task_context(TaskLogContext(task_id, 2, "images", "demo.resize")):
        logger.warning("retrying %s", "soon", extra={"took_ms": 12})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    plain, about, failed = lines(stream)
    for line in (plain, about, failed):
        assert {"ts", "level", "logger", "message", "task_id", "attempt", "queue",
                "trace_id"} <= set(line)
    assert plain["task_id"] is None and plain["trace_id"] is None
    assert about == {**about, "level": "warning", "message": "retrying soon", "task_id": task_id,
                     "attempt": 2, "queue": "images", "trace_id": task_trace_hex(task_id),
                     "took_ms": 12, "task_name": "demo.resize"}
    assert "ValueError: boom" in str(failed["exc"])


def test_a_handler_logger_carries_its_task_in_any_thread() -> None:
    logger, stream = capture(JsonFormatter())
    ctx = TaskContext(task_id="T1", attempt=3, name="demo.add", queue="q")
    ctx.logger.logger = logger  # the task's logger, writing to the captured handler
    ctx.logger.info("from the handler")
    logger.info("plain logger, no task context")
    first, second = lines(stream)
    assert (first["task_id"], first["attempt"], first["queue"]) == ("T1", 3, "q")
    assert second["task_id"] is None

    async def in_thread() -> None:
        with task_context(TaskLogContext("T2", 1, "q2")):
            await run_in_thread(lambda: logger.info("inside a thread handler"), (), "t")

    asyncio.run(in_thread())
    assert lines(stream)[2]["task_id"] == "T2"  # the thread ran in a copy of the context


def test_text_lines_name_the_task() -> None:
    logger, stream = capture(TextFormatter())
    with task_context(TaskLogContext("T9", 1, "q")):
        logger.info("event=task.started")
    assert stream.getvalue().rstrip().endswith("task_id=T9 attempt=1 queue=q")


# -- presence ------------------------------------------------------------------------------


def record(**kw: object) -> WorkerRecord:
    base: dict[str, object] = dict(worker_id="w1", host="h", pid=1, queues=["a"], concurrency=4,
                                   started_at_ms=0, heartbeat_at_ms=10_000,
                                   heartbeat_interval_ms=1_000)
    return WorkerRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_worker_records_round_trip_and_tell_lost_from_live() -> None:
    r = record(tags=["gpu"], in_flight=2)
    assert WorkerRecord.decode(r.encode()) == r
    assert r.status(12_000) == "running"
    assert r.status(13_001) == "lost"  # 3 intervals without a heartbeat
    assert record(state="stopping").status(13_001) == "lost"
    assert record(state="stopped").status(99_999) == "stopped"
    view = r.view(11_500)
    assert view["status"] == "running" and view["heartbeat_age_s"] == 1.5
    newer = json.loads(r.encode()) | {"added_later": 1}
    assert WorkerRecord.decode(json.dumps(newer).encode()) == r  # unknown fields: ignored
    for bad in (b"nope", b"[]", b'{"worker_id": "x"}', record(state="weird").encode()):
        with pytest.raises(ValueError):
            WorkerRecord.decode(bad)


def test_the_roster_keeps_the_last_record_and_forgets_tombstones() -> None:
    roster = Roster()
    roster.apply(b"w1", record(in_flight=1).encode())
    roster.apply(b"w1", record(in_flight=3).encode())
    roster.apply(b"w2", record(worker_id="w2", queues=["a", "b"]).encode())
    roster.apply(b"w3", b"garbage")
    roster.apply(b"w4", record(worker_id="w4", state="stopped").encode())
    assert [r.in_flight for r in roster.records() if r.worker_id == "w1"] == [3]
    assert live_by_queue(roster.records(), 10_500) == {"a": 2, "b": 1}
    assert [v["worker_id"] for v in roster.views(10_500)] == ["w1", "w2"]
    assert len(roster.views(10_500, include_stopped=True)) == 3
    roster.apply(b"w2", None)
    assert [r.worker_id for r in roster.records()] == ["w1", "w4"]
    assert live_by_queue(roster.records(), 99_000) == {}  # all lost by then


def test_ready_topic_names_parse_back() -> None:
    settings = Settings(topic_prefix="x.")
    assert parse_ready_topic(settings, "x.ready.images.p2") == ReadyTopic("images", (), 2)
    for name in ("x.events", "y.ready.a.p1", "x.ready.a.px", "x.ready..p1"):
        assert parse_ready_topic(settings, name) is None


# -- doctor's judgements ------------------------------------------------------------------


def test_topics_are_judged_against_the_plan() -> None:
    settings = Settings(topic_prefix="x.", replication=3)
    spec = next(s for s in topic_specs(settings) if s.name == "x.events")
    good = TopicFacts(spec.partitions, 3, dict(spec.config))
    assert judge_topic(settings, spec, good) == []
    assert [f.level for f in judge_topic(settings, spec, None)] == [FAIL]
    fewer = judge_topic(settings, spec, TopicFacts(spec.partitions - 1, 1,
                                                   {**spec.config, "cleanup.policy": "compact",
                                                    "retention.ms": "5"}))
    assert [f.level for f in fewer] == [FAIL, WARN, FAIL, WARN]
    assert "--add-config cleanup.policy=delete" in fewer[2].fix
    assert judge_brokers(settings, 1).level == FAIL and judge_brokers(settings, 3).level == OK


def test_processors_must_cover_every_partition() -> None:
    settings = Settings(partitions=4)
    def health(active: list[int], ready: bool = True) -> dict[str, object]:
        return {"ready": ready, "reason": "restoring", "partitions": {"active": active}}

    whole = judge_processors(settings, {"a": health([0, 1]), "b": health([2, 3])}, "a")
    assert [f.level for f in whole] == [OK]
    holes = judge_processors(settings, {"a": health([0, 1], ready=False), "b": None}, "a")
    assert [f.level for f in holes] == [WARN, WARN, FAIL]
    assert "[2, 3]" in holes[-1].message
    assert judge_processors(settings, {"a": None}, "http://a")[0].level == FAIL


def test_every_configured_queue_needs_a_running_worker() -> None:
    live, lost = record(queues=["a"]), record(worker_id="w2", queues=["b"], heartbeat_at_ms=0)
    findings = judge_workers([live, lost], ["a", "b"], ["c"], 10_500)
    levels = {(f.level, f.message.split(":")[0]) for f in findings}
    assert (OK, "queue a") in levels and (FAIL, "queue b has no running worker") in levels
    assert (WARN, "queue c has no running worker") in levels
    assert any(f.level == WARN and "w2" in f.message and "lost" in f.message for f in findings)
