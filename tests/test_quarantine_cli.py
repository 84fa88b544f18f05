"""``taskstream quarantine list`` against the real broker: what was set aside, from
where and why, including records whose quarantine headers are missing."""

from __future__ import annotations

import base64
import json
import time

from click.testing import CliRunner
from confluent_kafka import Producer

from taskstream.cli.main import main
from taskstream.dev.procs import settings_env
from taskstream.schemas.events import Envelope, TaskStarted
from taskstream.schemas.quarantine import quarantine_headers
from taskstream.schemas.serde import encode_event
from taskstream.settings import Settings


def _fill(settings: Settings) -> bytes:
    producer = Producer({"bootstrap.servers": settings.bootstrap})
    topic, events = settings.topic("quarantine"), settings.topic("events")
    started = encode_event(
        Envelope("01ARZ3NDEKTSV4RRFFQ69G5FAV", "7" * 26, 5, "worker:w", 1, TaskStarted("d", "w"))
    )
    records = [
        (b"junk", b"\xc3\x01garbage", quarantine_headers(events, 2, 17, "cannot decode: bad")),
        (b"7" * 26, started, quarantine_headers(events, 4, 3, "fold failed: boom")),
        (b"x", b"no headers at all", None),
    ]
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
        producer.flush(10)
        time.sleep(0.005)  # distinct timestamps: the list is in quarantine-time order
    return started


def test_quarantine_list_shows_origin_reason_and_content(topics: Settings) -> None:
    started = _fill(topics)
    env = settings_env(topics)
    result = CliRunner().invoke(main, ["quarantine", "list", "--json"], env=env)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"] == 3
    junk, event, headless = data["items"]
    assert junk["origin"] == {"topic": topics.topic("events"), "partition": 2, "offset": 17}
    assert junk["reason"] == "cannot decode: bad" and junk["event"] == "(undecodable)"
    assert base64.b64decode(junk["value_base64"]) == b"\xc3\x01garbage"
    assert event["event"] == f"TaskStarted of {'7' * 26}" and event["reason"] == "fold failed: boom"
    assert base64.b64decode(event["value_base64"]) == started
    assert headless["origin"] is None and "missing" in headless["problem"]

    text = CliRunner().invoke(main, ["quarantine", "list", "--limit", "2"], env=env)
    assert text.exit_code == 0, text.output
    assert f"{topics.topic('events')}:4@3" in text.stdout and "fold failed: boom" in text.stdout
    assert "junk" not in text.stdout and "events:2@17" not in text.stdout  # the oldest is left out
    assert "3 record(s) in quarantine; showing the newest 2" in text.stderr


def test_quarantine_list_of_an_empty_quarantine(topics: Settings) -> None:
    result = CliRunner().invoke(main, ["quarantine", "list"], env=settings_env(topics))
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and "0 record(s) in quarantine" in result.stderr


def test_quarantine_list_names_a_missing_topic(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["quarantine", "list"], env=settings_env(settings))
    assert result.exit_code == 1
    assert settings.topic("quarantine") in result.output
