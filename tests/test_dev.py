"""``taskstream dev`` end to end in a subprocess against the session's broker.

Given a running broker (TASKSTREAM_BOOTSTRAP or the conftest one), when
``taskstream dev --tasks 20`` runs, then it prints a summary where every task
finished (one poison task dead, retries counted), and no process it started is
left behind; Ctrl-C in the middle stops everything too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _env(bootstrap: str, prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    env.update(TASKSTREAM_BOOTSTRAP=bootstrap, TASKSTREAM_TOPIC_PREFIX=prefix,
               PYTHONUNBUFFERED="1")
    return env


def _processes_with(prefix: str) -> list[int]:
    """PIDs whose environment carries our unique topic prefix (our children)."""
    needle = f"TASKSTREAM_TOPIC_PREFIX={prefix}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _interrupt_as_in_a_terminal() -> None:
    """SIGINT at its default in the child, as a shell leaves it for a foreground
    command. A test run started as a background job (`make test &`, or under nohup)
    inherits SIGINT ignored, and Python keeps an inherited ignore: `dev` would never see
    the test's Ctrl-C and run its whole demo (a clean-clone CI run started that way
    failed so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _dev(bootstrap: str, workdir: Path, prefix: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskstream", "dev", "--workdir", str(workdir), *args],
        cwd=ROOT, env=_env(bootstrap, prefix), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, preexec_fn=_interrupt_as_in_a_terminal)


def _wait_gone(prefix: str, timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _processes_with(prefix)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_dev_runs_the_demo_and_leaves_nothing_behind(kafka_bootstrap: str,
                                                     tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    proc = _dev(kafka_bootstrap, tmp_path / "ts", prefix, "--tasks", "20", "--timeout", "120")
    try:
        out, _ = proc.communicate(timeout=170)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "Summary: 20/20 tasks finished" in out, out
    assert re.search(r"dead letters\s+1\b", out), out
    assert re.search(r"submit->start\s+p50 [\d,]+ ms, p99 [\d,]+ ms", out), out
    summary = json.loads((tmp_path / "ts" / "dev-summary.json").read_text())
    assert summary["finished"] == 20 and summary["dead_letters"] == 1
    assert summary["states"] == {"SUCCEEDED": 19, "DEAD": 1}
    assert summary["retries"] >= 2 * 2 + 2  # two flaky tasks x 2, poison x 2
    assert summary["urls"]["API"].startswith("http://127.0.0.1:")
    assert summary["urls"]["dashboard"] == summary["urls"]["API"] + "/ui"
    assert f"dashboard         {summary['urls']['dashboard']}" in out, out
    stopped = [int(p) for p in re.findall(r"\(PID (\d+)\) stopped", out)]
    assert len(stopped) == 2, out  # the worker and the processor
    assert _wait_gone(prefix) == []
    assert not (tmp_path / "ts" / "dev.json").exists()


def test_ctrl_c_stops_everything_it_started(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    # a demo that outlasts the interrupt by far
    proc = _dev(kafka_bootstrap, tmp_path / "ts", prefix, "--tasks", "5000", "--timeout", "300")
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Submitted") or time.monotonic() > deadline:
                break
        assert any(line.startswith("Submitted") for line in lines), "".join(lines)
        assert _processes_with(prefix), "the processor and worker should be running"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "Interrupted" in out
    assert _wait_gone(prefix) == [], out
