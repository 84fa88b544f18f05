"""Fault points (taskstream/faults.py) without a broker: the spec, the hits, each action."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from taskstream.errors import ConfigError, KafkaUnavailableError
from taskstream.faults import ENV, POINTS, fire, parse


def test_spec_arms_points_with_their_hits() -> None:
    faults = parse("fold.after_state_write=kill@3; commit.before=raise:KafkaUnavailableError@2+;"
                   "queue.create_topics=sleep:0.5@1-2")
    assert [(f.action, f.first, f.last) for f in faults.values()] == [
        ("kill", 3, 3), ("raise:KafkaUnavailableError", 2, None), ("sleep:0.5", 1, 2)]
    assert parse("  ") == {}


@pytest.mark.parametrize("hits,fired", [("", [1]), ("@3", [3]), ("@2+", [2, 3, 4, 5]),
                                        ("@2-3", [2, 3])])
def test_a_fault_fires_on_its_hits_only(hits: str, fired: list[int]) -> None:
    fault = parse(f"commit.before=kill{hits}")["commit.before"]
    assert [hit for hit in (fault.due() for _ in range(5)) if hit is not None] == fired


@pytest.mark.parametrize("spec", [
    "fold.after_stat_write=kill",  # a typo would never fire
    "commit.before",
    "commit.before=explode",
    "commit.before=sleep:soon",
    "commit.before=raise:",
    "commit.before=kill@0",
    "commit.before=kill@3-2",
    "commit.before=kill@x",
])
def test_a_bad_spec_is_refused_naming_it(spec: str) -> None:
    with pytest.raises(ConfigError, match=ENV):
        parse(spec)


def test_raise_builds_the_named_error(capfd: pytest.CaptureFixture[str]) -> None:
    fault = parse("commit.before=raise:KafkaUnavailableError")["commit.before"]
    with pytest.raises(KafkaUnavailableError, match=r"commit\.before \(hit 1\)"):
        fire(fault, 1)
    other = parse("commit.before=raise:builtins:TimeoutError")["commit.before"]
    with pytest.raises(TimeoutError):
        fire(other, 2)
    assert "taskstream fault: commit.before hit 2: raise:builtins:TimeoutError" in (
        capfd.readouterr().err)


def test_kill_kills_the_process_that_reaches_the_point() -> None:
    point = next(iter(POINTS))
    code = ("from taskstream.faults import fault_point\n"
            f"fault_point({point!r}); print('first hit passed', flush=True)\n"
            f"fault_point({point!r}); print('not reached', flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, ENV: f"{point}=kill@2"}, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout == "first hit passed\n"
    assert f"taskstream fault: {point} hit 2: kill" in proc.stderr


def test_a_bad_environment_stops_the_process_at_start() -> None:
    proc = subprocess.run([sys.executable, "-c", "import taskstream.faults"],
                          capture_output=True, text=True,
                          env={**os.environ, ENV: "nowhere=kill"}, timeout=60)
    assert proc.returncode != 0 and "does not arm a known fault point" in proc.stderr
