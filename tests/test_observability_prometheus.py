"""The monitoring files, checked offline: Prometheus' config and rules by promtool (Debian's
``prometheus`` package, which ``make test`` installs), the alert rules by their unit tests,
and the Grafana dashboards' JSON structure (Grafana itself cannot be installed here).

The queries themselves run against a real Prometheus scraping a real platform in
tests/test_observability_platform.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
GRAFANA = ROOT / "deploy" / "grafana"
PANEL_TYPES = {"row", "timeseries", "stat", "table"}


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: `make promtool` installs Debian's prometheus "
                    "package (apt-get install prometheus), which has both prometheus and promtool")
    return path


def promtool(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run([require("promtool"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_scrape_config() -> None:
    assert "SUCCESS" in promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))


def test_promtool_accepts_the_rules() -> None:
    rules = sorted(str(p) for p in (PROMETHEUS / "rules").glob("*.yml"))
    assert rules
    out = promtool("check", "rules", *rules)
    assert "SUCCESS: 7 rules found" in out


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    assert "SUCCESS" in promtool("test", "rules", "taskstream_test.yml",
                                 cwd=ROOT / "tests" / "prometheus")


def test_the_alerts_the_issue_asks_for_exist() -> None:
    rules = yaml.safe_load((PROMETHEUS / "rules" / "taskstream.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"TaskstreamProcessorLagGrowing", "TaskstreamDLQGrowing",
            "TaskstreamPartitionWithoutProcessor", "TaskstreamWorkerHeartbeatMissing"} <= alerts
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- Grafana ------------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text())
            for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def test_the_dashboard_files_are_what_the_generator_writes() -> None:
    done = subprocess.run([sys.executable, "scripts/grafana_dashboards.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_dashboards_have_grafanas_structure() -> None:
    datasource = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    boards = dashboards()
    assert set(boards) == {"taskstream-overview.json", "taskstream-queue.json",
                           "taskstream-workers.json"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        assert {"uid", "title", "schemaVersion", "panels", "templating", "time"} <= set(board)
        variables = {v["name"] for v in board["templating"]["list"]}
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            assert panel["type"] in PANEL_TYPES, panel
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                    for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not area & cells, f"{name}: panel {panel['title']!r} overlaps another"
            cells |= area
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == uid
            targets = panel["targets"]
            assert targets and len({t["refId"] for t in targets}) == len(targets)
            for target in targets:
                assert target["datasource"]["uid"] == uid and target["expr"].strip()
                used = {v for v in ("queue",) if f"${v}" in target["expr"]}
                assert used <= variables, (name, target["expr"])
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == uid


def test_the_provisioning_loads_the_dashboards_folder() -> None:
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "taskstream.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = " ".join(compose["services"]["grafana"]["volumes"])
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
