"""The bench harness plumbing: a tiny compare section runs and writes valid results.

Timings are never asserted: only that the harness ran the platform, read the
task states and the CPU of its processes back, ran ``replay verify`` and wrote
JSON, markdown and a plot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_compare_section_writes_results(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "compare", "--systems",
         "taskstream", "--runs", "1", "--out", str(out), "--bootstrap", kafka_bootstrap],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    compare = results["compare"]
    assert "error" not in compare, compare
    (run,) = compare["runs"]["taskstream"]
    assert "error" not in run, run
    for burst in run["bursts"]:
        assert burst["done"] == burst["tasks"] > 0 and burst["tasks_per_s"] > 0
        assert {"processor", "worker", "client", "total"} <= set(burst["cpu_us_per_task"])
    assert run["sustainable"]["steps"] and run["paced"]["done"] > 0
    assert run["verify"]["ok"] is True, run["verify"]
    assert results["meta"]["quick"] is True
    text = (out / "results.md").read_text()
    assert "## Side by side" in text and "Reproduce: `python bench/run.py --only compare" in text
    assert (out / "latency_vs_load.png").read_bytes()[:4] == b"\x89PNG"
