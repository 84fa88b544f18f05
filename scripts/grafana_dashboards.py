"""Write taskstream's Grafana dashboards (deploy/grafana/dashboards/*.json) from one description.

    python scripts/grafana_dashboards.py            # rewrite the JSON files
    python scripts/grafana_dashboards.py --check    # exit 1 if a file is not what this writes

The dashboards are data in this file: each panel is a title, a kind, a size and
its PromQL queries; the layout (grid positions, ids, the data source) is computed,
so a panel cannot overlap another or point at a data source that does not exist.
tests/test_observability_dashboards.py checks the files are current, their
structure, and (against a real Prometheus scraping a real run) that every query
runs and names only metrics the components export. docs/observability.md says
what each panel shows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "dashboards"
#: the data source the provisioning file declares (deploy/grafana/provisioning/datasources)
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SCHEMA_VERSION = 39
GRID_WIDTH = 24
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | table
    width: int = 12
    height: int = 8
    unit: str = "short"
    description: str = ""


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[dict[str, Any], ...] = field(default=())


def q(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


def quantiles(metric: str, by: str = "", selector: str = "") -> tuple[Query, ...]:
    """p50, p95 and p99 of a histogram over the rate interval."""
    group = f"le{', ' + by if by else ''}"
    suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        q(f"histogram_quantile({p}, sum by ({group}) "
          f"(rate({metric}_bucket{selector}[{RATE}])))", f"p{int(p * 100)}{suffix}")
        for p in (0.5, 0.95, 0.99))


QUEUE_VARIABLE = {
    "name": "queue", "label": "queue", "type": "query", "datasource": DATASOURCE,
    "query": {"query": "label_values(taskstream_dispatched_total, queue)",
              "refId": "queue"},
    "definition": "label_values(taskstream_dispatched_total, queue)",
    "refresh": 2, "sort": 1, "multi": False, "includeAll": False,
}

OVERVIEW = Dashboard(
    "taskstream-overview", "taskstream / overview",
    "Throughput, latency, queues, failures and the processors' health of the whole platform.",
    (
        Row("Throughput", (
            Panel("Tasks dispatched and finished per second", (
                q(f"sum(rate(taskstream_dispatched_total[{RATE}]))", "dispatched"),
                q(f"sum(rate(taskstream_worker_tasks_succeeded_total[{RATE}]))", "succeeded"),
                q(f"sum(rate(taskstream_worker_tasks_failed_total[{RATE}]))", "failed attempts"),
            ), unit="ops"),
            Panel("Events folded per second, by type", (
                q(f"sum by (type) (rate(taskstream_events_applied_total[{RATE}]))", "{{type}}"),
            ), unit="ops"),
        )),
        Row("Latency", (
            Panel("Queue wait (dispatch to start)",
                  quantiles("taskstream_worker_queue_wait_seconds"), width=8, unit="s"),
            Panel("Handler run time", quantiles("taskstream_worker_run_seconds"), width=8,
                  unit="s"),
            Panel("Dispatch latency (triggering event to dispatch)",
                  quantiles("taskstream_dispatch_latency_seconds"), width=8, unit="s"),
        )),
        Row("Queues", (
            Panel("Queue depth by priority (dispatched, not yet taken by a worker)", (
                q("max by (queue, priority) (taskstream_queue_depth)", "{{queue}} p{{priority}}"),
            )),
            Panel("Tasks by state", (
                q("sum by (state) (taskstream_tasks)", "{{state}}"),
            )),
        )),
        Row("Failures", (
            Panel("Retries scheduled per second", (
                q(f"sum by (queue) (rate(taskstream_retries_total[{RATE}]))", "{{queue}}"),
            ), width=8, unit="ops"),
            Panel("Dead letters (DLQ) in the last hour, and DEAD tasks", (
                q("sum by (queue) (increase(taskstream_dead_letters_total[1h]))",
                  "dead letters 1h {{queue}}"),
                q('sum(taskstream_tasks{state="DEAD"})', "DEAD now"),
            ), width=8),
            Panel("Rejected (fenced, stale) and duplicate events per second", (
                q(f"sum by (type) (rate(taskstream_events_rejected_total[{RATE}]))",
                  "rejected {{type}}"),
                q(f"sum(rate(taskstream_duplicate_submissions_total[{RATE}]))", "duplicates"),
                q(f"sum(rate(taskstream_quarantined_total[{RATE}]))", "quarantined"),
            ), width=8, unit="ops"),
        )),
        Row("Processors", (
            Panel("Processor lag by events partition (records not yet folded)", (
                q("max by (partition) (taskstream_processor_lag_records)", "p{{partition}}"),
            ), width=8),
            Panel("Partition ownership: active partitions per replica, unowned partitions", (
                q('sum by (instance) (taskstream_processor_partitions{role="active"})',
                  "{{instance}}"),
                q("sum(1 - max by (partition) (taskstream_processor_partition_active))",
                  "unowned"),
            ), width=8),
            Panel("Failovers: partitions taken over, replicas ready", (
                q(f"sum by (instance) (increase(taskstream_processor_partitions_gained_total"
                  f"[{RATE}]))", "gained {{instance}}"),
                q("sum(taskstream_processor_ready)", "ready replicas"),
            ), width=8),
        )),
    ),
)

QUEUE = Dashboard(
    "taskstream-queue", "taskstream / queue",
    "One queue: what waits, how long, how it ends, and who works on it.",
    (
        Row("$queue", (
            Panel("Dispatched, succeeded and retried per second", (
                q(f'sum(rate(taskstream_dispatched_total{{queue="$queue"}}[{RATE}]))',
                  "dispatched"),
                q(f'sum(rate(taskstream_retries_total{{queue="$queue"}}[{RATE}]))', "retries"),
                q(f'sum(rate(taskstream_worker_skipped_total{{queue="$queue"}}[{RATE}]))',
                  "skipped (cancelled)"),
            ), unit="ops"),
            Panel("Depth by priority", (
                q('max by (priority) (taskstream_queue_depth{queue="$queue"})', "p{{priority}}"),
            )),
            Panel("Tasks by state", (
                q('sum by (state) (taskstream_tasks{queue="$queue"})', "{{state}}"),
            )),
            Panel("Queue wait (dispatch to start)",
                  quantiles("taskstream_worker_queue_wait_seconds",
                            selector='{queue="$queue"}'), unit="s"),
            Panel("Dead letters in the last hour", (
                q('sum(increase(taskstream_dead_letters_total{queue="$queue"}[1h]))', "dlq"),
            ), kind="stat", width=8, height=5),
            Panel("Workers on this queue by status", (
                q('max by (status) (taskstream_workers{queue="$queue"})', "{{status}}"),
            ), kind="stat", width=8, height=5),
            Panel("Processing rate (succeeded per second)", (
                q(f"sum(rate(taskstream_worker_tasks_succeeded_total[{RATE}]) * on (instance) "
                  "group_left () max by (instance) "
                  '(taskstream_worker_info{queues=~".*$queue.*"}))', "succeeded"),
            ), kind="stat", width=8, height=5, unit="ops"),
        )),
    ),
    variables=(QUEUE_VARIABLE,),
)

WORKERS = Dashboard(
    "taskstream-workers", "taskstream / workers",
    "Live workers (the workers topic) and what each worker process reports about itself.",
    (
        Row("Presence (from the workers topic)", (
            Panel("Workers by queue and status", (
                q("max by (queue, status) (taskstream_workers)", "{{queue}} {{status}}"),
            )),
            Panel("Lost workers (missed 3 heartbeats)", (
                q("max by (worker_id, host) (taskstream_worker_lost) == 1",
                  "{{worker_id}} on {{host}}"),
            ), kind="table"),
            Panel("Heartbeat age per worker", (
                q("max by (worker_id) (taskstream_worker_heartbeat_age_seconds)",
                  "{{worker_id}}"),
            ), unit="s"),
        )),
        Row("Per worker (scraped from each worker)", (
            Panel("In flight / concurrency", (
                q("taskstream_worker_in_flight * on (instance) group_left (worker_id) "
                  "taskstream_worker_info", "{{worker_id}} in flight"),
                q("taskstream_worker_concurrency * on (instance) group_left (worker_id) "
                  "taskstream_worker_info", "{{worker_id}} slots"),
            )),
            Panel("Attempts finished per second, per worker", (
                q(f"sum by (worker_id) (rate(taskstream_worker_tasks_succeeded_total[{RATE}]) "
                  "* on (instance) group_left (worker_id) taskstream_worker_info)",
                  "{{worker_id}} succeeded"),
                q(f"sum by (worker_id) (rate(taskstream_worker_tasks_failed_total[{RATE}]) "
                  "* on (instance) group_left (worker_id) taskstream_worker_info)",
                  "{{worker_id}} failed"),
            ), unit="ops"),
            Panel("Handler run time by task", quantiles("taskstream_worker_run_seconds",
                                                        by="task"), unit="s"),
            Panel("Failures by error type per second", (
                q(f"sum by (error_type) (rate(taskstream_worker_tasks_failed_total[{RATE}]))",
                  "{{error_type}}"),
            ), unit="ops"),
            Panel("Trouble: abandoned threads, undelivered events, own heartbeat age", (
                q(f"sum by (instance) (increase(taskstream_worker_abandoned_threads_total"
                  f"[{RATE}]))", "abandoned {{instance}}"),
                q(f"sum by (type) (increase(taskstream_worker_delivery_errors_total[{RATE}]))",
                  "undelivered {{type}}"),
                q("time() - taskstream_worker_last_heartbeat_timestamp_seconds",
                  "heartbeat age {{instance}}"),
            ), width=24),
        )),
    ),
)

DASHBOARDS = (OVERVIEW, QUEUE, WORKERS)


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": panel_id, "type": panel.kind, "title": panel.title,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "datasource": DATASOURCE,
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": query.expr,
                     "legendFormat": query.legend, "range": panel.kind != "table",
                     "instant": panel.kind == "table"}
                    for i, query in enumerate(panel.queries)],
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }
    if panel.description:
        body["description"] = panel.description
    return body


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of one dashboard (rows laid out left to right, top down)."""
    panels: list[dict[str, Any]] = []
    y = 0
    panel_id = 1
    for row in dashboard.rows:
        panels.append({"id": panel_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": GRID_WIDTH, "h": 1}, "panels": []})
        panel_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel(panel, panel_id, x, y))
            panel_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description,
        "tags": ["taskstream"], "editable": False, "schemaVersion": SCHEMA_VERSION,
        "version": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "timezone": "utc", "graphTooltip": 1, "panels": panels,
        "templating": {"list": [dict(v) for v in dashboard.variables]},
        "annotations": {"list": []}, "links": [],
    }


def files() -> dict[Path, str]:
    return {OUT / f"{d.uid}.json": json.dumps(render(d), indent=2) + "\n" for d in DASHBOARDS}


def main(argv: list[str]) -> int:
    stale = [path for path, text in files().items()
             if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path.relative_to(ROOT)} is not current: run "
                  "python scripts/grafana_dashboards.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files().items():
        path.write_text(text)
    print(f"wrote {len(files())} dashboards to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
