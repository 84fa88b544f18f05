"""The bench harness plumbing: a tiny e2e section runs and writes valid results.

Timings are never asserted: only that the harness ran the platform, read the
task states back and wrote JSON, markdown and a plot.
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


def test_e2e_section_writes_results(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKSTREAM_")}
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "e2e", "--out", str(out),
         "--bootstrap", kafka_bootstrap, "--concurrency", "16"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    e2e = results["e2e"]
    assert "error" not in e2e, e2e
    assert e2e["max"]["done"] == e2e["max"]["tasks"] > 0
    assert e2e["max"]["tasks_per_s"] > 0
    assert [row["fraction_of_max"] for row in e2e["profile"]] == [0.25, 0.5, 0.9]
    assert all(row["submit_to_start_ms"]["n"] == row["done"] for row in e2e["profile"])
    assert results["meta"]["quick"] is True
    assert "## End to end, side by side" in (out / "results.md").read_text()
    assert (out / "latency_vs_load.png").read_bytes()[:4] == b"\x89PNG"
