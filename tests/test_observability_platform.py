"""Observability against a running platform: one processor, two workers and the CLI as real
processes on the real broker, tracing to an OTLP receiver, logging JSON lines.

Given the platform and a workload (a traced task, a task that fails once, a poison task,
a submit_many), then:

* each task's spans, joined from the exporter output of the producer (CLI), processor and
  worker processes, make one trace with the task ID as trace id, each span under its cause;
* every log line is JSON, and a handler's lines carry task_id, attempt, queue and trace_id;
* ``GET /workers`` and ``taskstream workers`` list the workers; a killed one shows as lost,
  in the API, in the metrics and in ``taskstream doctor``;
* ``/readyz``, ``/healthz?verbose`` and ``taskstream doctor`` say the platform is whole;
* every metric the dashboards and alert rules name is exported (scraped here), and a real
  Prometheus scraping the platform answers every dashboard query and evaluates the rules.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from taskstream.admin import ensure_topics
from taskstream.dev.procs import free_port, settings_env
from taskstream.settings import Settings, load_settings
from taskstream.telemetry.context import (
    TraceContext,
    dispatch_context,
    submit_context,
    task_trace_hex,
    task_trace_id,
)
from tests.harness import ProcessorProcess, wait_for
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
METRIC = re.compile(r"\btaskstream_[A-Za-z0-9_:]+")
HEARTBEAT_S = 0.5
#: the traceparent of an HTTP caller's own trace (a POST /tasks links it)
FOREIGN = TraceContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7)


@dataclass
class Platform:
    settings: Settings
    env: dict[str, str]
    receiver: OtlpReceiver
    processor: ProcessorProcess
    workers: dict[str, subprocess.Popen[bytes]]
    worker_logs: dict[str, Path]
    metrics_ports: dict[str, int]
    tasks: dict[str, str]
    many: list[str]
    tmp: Path

    @property
    def api(self) -> str:
        return self.processor.url

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "taskstream", *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def scrape(self) -> dict[str, str]:
        pages = {"processor": httpx.get(f"{self.api}/metrics", timeout=10).text}
        for name, port in self.metrics_ports.items():
            if self.workers[name].poll() is None:
                pages[name] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        return pages


def start_worker(settings: Settings, env: dict[str, str], log: Path, queues: str,
                 port: int) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "taskstream", "worker", "-A", "tests.observe_tasks",
             "--queues", queues, "--concurrency", "8", "--metrics-port", str(port),
             "--grace", "5"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=out)


@pytest.fixture(scope="module")
def platform(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("observe")
    settings = load_settings(bootstrap=kafka_bootstrap, topic_prefix=f"o{uuid.uuid4().hex[:8]}.",
                             data_dir=tmp / "data", partitions=4, queues=["default", "other"],
                             kafka_home=load_settings().kafka_home)
    ensure_topics(settings)
    with OtlpReceiver() as receiver:
        env = settings_env(settings) | {
            "TASKSTREAM_OTLP_ENDPOINT": receiver.endpoint, "TASKSTREAM_LOG_FORMAT": "json",
            "TASKSTREAM_WORKER_HEARTBEAT_S": str(HEARTBEAT_S), "OTEL_BSP_SCHEDULE_DELAY": "200",
            "PYTHONPATH": str(ROOT)}
        processor = ProcessorProcess(settings, tmp / "replica0", env=env).start()
        env["TASKSTREAM_API_URL"] = processor.url
        ports = {"main": free_port(), "other": free_port()}
        logs = {name: tmp / f"worker-{name}.log" for name in ports}
        workers = {"main": start_worker(settings, env, logs["main"], "default", ports["main"]),
                   "other": start_worker(settings, env, logs["other"], "other", ports["other"])}
        p = Platform(settings, env, receiver, processor, workers, logs, ports, {}, [], tmp)
        try:
            for log in logs.values():
                wait_for(f"a worker to start (log {log})",
                         lambda log=log: "event=worker.started" in log.read_text(errors="replace"),
                         timeout=60)
            submits = {"traced": ["observe.traced", "--payload", '{"n": 1}'],
                       "flaky": ["observe.flaky"],
                       "poison": ["observe.poison", "--max-attempts", "3"]}
            for key, args in submits.items():
                p.tasks[key] = p.cli("submit", *args).stdout.strip()
            p.many = p.cli("submit", "observe.noop", "--count", "3").stdout.split()
            posted = httpx.post(f"{p.api}/tasks", json={"name": "observe.traced"}, timeout=30,
                                headers={"traceparent": FOREIGN.traceparent()})
            assert posted.status_code == 202, posted.text
            p.tasks["api"] = posted.json()["task_id"]
            for task_id in [*p.tasks.values(), *p.many]:
                view = p.cli("wait", task_id, "--timeout", "90", "--json", check=False)
                assert view.returncode in (0, 1), view.stdout + view.stderr
            yield p
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in workers.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            processor.stop()


# -- traces ---------------------------------------------------------------------------


def spans_of(p: Platform, task_id: str, names: set[str], timeout: float = 30
             ) -> list[ReceivedSpan]:
    trace_id = task_trace_id(task_id)

    def have() -> list[ReceivedSpan] | None:
        spans = p.receiver.trace(trace_id)
        return spans if names <= {s.name for s in spans} else None

    return wait_for(f"spans {sorted(names)} of task {task_id}", have, timeout=timeout)


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, found)
    return found[0]


def test_each_task_is_one_trace_across_producer_and_worker_processes(p: Platform) -> None:
    task_id = p.tasks["traced"]
    spans = spans_of(p, task_id, {"taskstream.submit", "taskstream.queue_wait",
                                  "taskstream.run", "observe.handler.step"})
    services = {s.service for s in spans}
    assert {"taskstream-producer", "taskstream-worker"} <= services, services
    assert len({s.pid for s in spans}) >= 2  # joined from separate processes' exports
    submit, run = one(spans, "taskstream.submit"), one(spans, "taskstream.run")
    root = submit_context(task_id)
    assert (submit.span_id, submit.parent_span_id) == (root.span_id, None)
    dispatch_ids = {s.attributes["taskstream.dispatch_id"] for s in spans
                    if s.name == "taskstream.run"}
    dispatch = dispatch_context(task_id, dispatch_ids.pop())
    assert run.parent_span_id == dispatch.span_id
    assert one(spans, "taskstream.queue_wait").parent_span_id == dispatch.span_id
    assert one(spans, "observe.handler.step").parent_span_id == run.span_id
    assert run.attributes["taskstream.outcome"] == "succeeded"


def test_retries_and_dead_ends_show_in_the_worker_spans(p: Platform) -> None:
    def runs_of(task_id: str, n: int) -> list[ReceivedSpan] | None:
        runs = sorted((s for s in p.receiver.trace(task_trace_id(task_id))
                       if s.name == "taskstream.run"), key=lambda s: s.start_ns)
        return runs if len(runs) >= n else None

    runs = wait_for("both attempts of the flaky task", lambda: runs_of(p.tasks["flaky"], 2))
    assert [r.attributes["taskstream.attempt"] for r in runs] == [1, 2]
    assert [r.attributes["taskstream.outcome"] for r in runs] == ["failed", "succeeded"]
    assert runs[0].status_code == 2  # ERROR
    poison = spans_of(p, p.tasks["poison"], {"taskstream.run"})
    assert one(poison, "taskstream.run").attributes["error.type"] == "NonRetryableError"
    for task_id in p.many:  # submit_many: each task its own trace, rooted at its submit
        many = spans_of(p, task_id, {"taskstream.submit", "taskstream.run"})
        assert one(many, "taskstream.submit").span_id == submit_context(task_id).span_id


def test_a_submit_through_the_api_starts_the_trace_and_links_the_caller(p: Platform) -> None:
    task_id = p.tasks["api"]
    spans = spans_of(p, task_id, {"taskstream.submit", "taskstream.run"})
    submit = one(spans, "taskstream.submit")
    assert submit.service == "taskstream-processor"  # the API is served by the processor
    assert (submit.span_id, submit.parent_span_id) == (submit_context(task_id).span_id, None)
    assert (FOREIGN.trace_id, FOREIGN.span_id) in submit.links
    assert FOREIGN.trace_id not in {s.trace_id for s in spans}


def test_the_processor_traces_dispatches_retries_and_dead_letters(p: Platform) -> None:
    traced = spans_of(p, p.tasks["traced"], {"taskstream.dispatch"}, timeout=10)
    dispatch = one(traced, "taskstream.dispatch")
    assert dispatch.service == "taskstream-processor"
    assert dispatch.parent_span_id == submit_context(p.tasks["traced"]).span_id
    flaky = spans_of(p, p.tasks["flaky"], {"taskstream.retry"}, timeout=10)
    run1 = next(s for s in flaky if s.name == "taskstream.run"
                and s.attributes["taskstream.attempt"] == 1)
    assert one(flaky, "taskstream.retry").parent_span_id == run1.span_id
    spans_of(p, p.tasks["poison"], {"taskstream.dead_letter"}, timeout=10)


# -- logs -------------------------------------------------------------------------------


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is JSON
    for line in parsed:
        assert {"ts", "level", "logger", "message", "task_id", "attempt", "queue",
                "trace_id"} <= set(line), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical")
    return parsed


def test_every_log_line_is_json_and_a_handler_line_carries_its_task(p: Platform) -> None:
    task_id = p.tasks["traced"]
    lines = json_lines(p.worker_logs["main"])
    handler = [line for line in lines if line["task_id"] == task_id
               and line["logger"] in ("taskstream.task", "observe.handlers")]
    assert {line["logger"] for line in handler} == {"taskstream.task", "observe.handlers"}
    for line in handler:
        assert (line["attempt"], line["queue"], line["trace_id"]) == (
            1, "default", task_trace_hex(task_id))
        assert line["span_id"]  # the handler's own span was current
    started = [line for line in lines if line["task_id"] == task_id
               and "event=task.started" in line["message"]]
    assert started and started[0]["level"] == "info"
    flaky = [line for line in lines if line["task_id"] == p.tasks["flaky"]
             and "event=task.retry" in line["message"]]
    assert flaky and flaky[0]["level"] == "warning"
    processor = json_lines(p.processor.log_path)  # Faust's own lines too
    assert any("Ready" in line["message"] for line in processor)


# -- health and doctor -------------------------------------------------------------------


def test_ready_and_verbose_health(p: Platform) -> None:
    assert httpx.get(f"{p.api}/readyz", timeout=5).json() == {"status": "ready"}
    assert httpx.get(f"{p.api}/healthz", timeout=5).json() == {"status": "ok", "ready": True}

    def sampled() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{p.api}/healthz?verbose", timeout=5).json()
        ready = body["lag"]["sampled_at"] and body["workers"].get("running", 0) >= 2
        return body if ready else None

    body = wait_for("a lag sample and both workers", sampled, timeout=30)
    assert body["partitions"]["active"] == list(range(p.settings.partitions))
    assert body["partitions"]["total"] == p.settings.partitions
    assert set(body["lag"]["events"]) == {str(i) for i in range(p.settings.partitions)}
    assert {q["queue"] for q in body["lag"]["queues"]} >= {"default", "other"}
    assert body["url"] in body["replicas"]

    def drained() -> dict[str, int] | None:  # read from the fold's own group (fold_group)
        lag: dict[str, int] = httpx.get(f"{p.api}/healthz?verbose", timeout=5).json()[
            "lag"]["events"]
        return lag if lag and not any(lag.values()) else None

    # every task is finished: the fold has committed every events partition to its end
    wait_for("the events lag of every partition to be 0", drained, timeout=60)


def test_doctor_finds_the_platform_whole(p: Platform) -> None:
    done = p.cli("doctor", "--json", check=False)
    findings = json.loads(done.stdout)
    assert done.returncode == 0, findings
    checks = {f["check"] for f in findings if f["level"] == "ok"}
    assert checks == {"brokers", "topics", "processors", "workers"}, findings


def test_doctor_says_what_is_wrong_with_a_bad_bootstrap(p: Platform) -> None:
    env = p.env | {"TASKSTREAM_BOOTSTRAP": f"127.0.0.1:{free_port()}",
                   "TASKSTREAM_KAFKA_TIMEOUT_S": "2"}
    done = subprocess.run([sys.executable, "-m", "taskstream", "doctor"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "FAIL  brokers" in done.stdout and "taskstream kafka up" in done.stdout


# -- workers ------------------------------------------------------------------------------


def test_workers_are_listed_and_a_killed_one_shows_as_lost(p: Platform) -> None:
    def listed() -> list[dict[str, Any]] | None:
        workers: list[dict[str, Any]] = httpx.get(f"{p.api}/workers", timeout=5).json()[
            "workers"]
        return workers if len([w for w in workers if w["status"] == "running"]) == 2 else None

    workers = wait_for("two running workers", listed, timeout=30)
    by_queue = {tuple(w["queues"]): w for w in workers}
    assert set(by_queue) == {("default",), ("other",)}
    main = by_queue[("default",)]
    assert main["concurrency"] == 8 and main["tags"] == [] and main["tasks_succeeded"] >= 1
    assert main["heartbeat_interval_ms"] == HEARTBEAT_S * 1000
    table = p.cli("workers").stdout
    assert main["worker_id"] in table and "running" in table
    victim = by_queue[("other",)]["worker_id"]
    p.workers["other"].send_signal(signal.SIGKILL)
    p.workers["other"].wait(10)

    def lost() -> dict[str, Any] | None:
        for w in httpx.get(f"{p.api}/workers", timeout=5).json()["workers"]:
            if w["worker_id"] == victim and w["status"] == "lost":
                return dict(w)
        return None

    wait_for("the killed worker to show as lost", lost, timeout=30)
    assert json.loads(p.cli("workers", "--json").stdout)["workers"]
    families = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"{p.api}/metrics", timeout=10).text)}
    lost_samples = {s.labels["worker_id"]: s.value for s in
                    families["taskstream_worker_lost"].samples}
    assert lost_samples[victim] == 1 and lost_samples[main["worker_id"]] == 0
    running = {(s.labels["queue"], s.labels["status"]): s.value
               for s in families["taskstream_workers"].samples}
    assert running[("other", "running")] == 0 and running[("other", "lost")] == 1
    done = p.cli("doctor", check=False)
    assert done.returncode == 1
    assert "FAIL  workers" in done.stdout and "queue other has no running worker" in done.stdout
    assert f"worker {victim}" in done.stdout and "lost" in done.stdout


# -- metrics, dashboards, rules and a real Prometheus ----------------------------------------


def dashboard_queries() -> list[str]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found += [t["expr"] for t in panel.get("targets", [])]
    return found


def rule_queries() -> list[str]:
    found = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [rule["expr"] for rule in group["rules"]]
    return found


def exported_names(pages: dict[str, str]) -> set[str]:
    """Every sample name the components export, and the ones their families promise
    (a labelled counter with no child yet still declares its ``_total``)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "info": ("_info",), "summary": ("_sum", "_count", "")}
    for page in pages.values():
        for family in text_string_to_metric_families(page):
            names |= {s.name for s in family.samples}
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def test_every_metric_in_the_dashboards_and_rules_is_exported(p: Platform) -> None:
    wait_for("a lag sample", lambda: "taskstream_queue_depth{" in httpx.get(
        f"{p.api}/metrics", timeout=10).text, timeout=30)
    exported = exported_names(p.scrape())
    used = {m for expr in [*dashboard_queries(), *rule_queries()] for m in METRIC.findall(expr)}
    assert used, "no metric found in the dashboards and rules"
    assert used - exported == set(), f"named but not exported: {sorted(used - exported)}"
    with_samples = {s.name for page in p.scrape().values()
                    for f in text_string_to_metric_families(page) for s in f.samples}
    for name in ("taskstream_dispatched_total", "taskstream_dead_letters_total",
                 "taskstream_retries_total", "taskstream_worker_tasks_failed_total",
                 "taskstream_worker_queue_wait_seconds_bucket", "taskstream_queue_depth",
                 "taskstream_processor_lag_records", "taskstream_worker_info"):
        assert name in with_samples, name


def test_a_real_prometheus_scrapes_the_platform(p: Platform) -> None:
    from tests.test_observability_prometheus import require

    port = free_port()
    targets = [f"127.0.0.1:{p.processor.web_port}"] + [
        f"127.0.0.1:{port_}" for name, port_ in p.metrics_ports.items()
        if p.workers[name].poll() is None]
    config = p.tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES / "*.yml")],
        "scrape_configs": [{"job_name": "taskstream", "static_configs": [
            {"targets": targets}]}]}))
    log = p.tmp / "prometheus.log"
    with open(log, "wb") as out:
        prom = subprocess.Popen(
            [require("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={p.tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=p.tmp)
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        def query(expr: str) -> dict[str, Any]:
            resp = httpx.get(f"{url}/query", params={"query": expr}, timeout=10)
            body: dict[str, Any] = resp.json()
            assert body.get("status") == "success", (expr, body)
            return body

        def answered() -> bool:  # every target scraped up once, and a dispatch counted
            try:
                up = query("count(up == 1)")["data"]["result"]
                return (bool(up) and int(up[0]["value"][1]) == len(targets)
                        and bool(query("sum(taskstream_dispatched_total) > 0")["data"]["result"]))
            except (httpx.HTTPError, AssertionError, ValueError):  # ValueError: a 503 page
                return False  # while Prometheus starts ("Service Unavailable", not JSON)

        wait_for(f"Prometheus to scrape all {len(targets)} targets (log {log})", answered,
                 timeout=60)
        assert len(targets) > 1, targets  # the processor and at least one live worker
        assert query("taskstream_worker_info")["data"]["result"]
        for expr in dashboard_queries():  # every dashboard query is valid PromQL here
            query(expr.replace("$__rate_interval", "1m").replace("$queue", "default"))
        rules = httpx.get(f"{url}/rules", timeout=10).json()["data"]["groups"]
        loaded = [r for g in rules for r in g["rules"]]
        assert len(loaded) == len(rule_queries())

        def evaluated() -> bool:
            state = httpx.get(f"{url}/rules", timeout=10).json()["data"]["groups"]
            return all(r["health"] == "ok" for g in state for r in g["rules"])

        wait_for("every rule evaluated without error", evaluated, timeout=30)
    finally:
        prom.send_signal(signal.SIGTERM)
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)


@pytest.fixture
def p(platform: Platform) -> Platform:
    return platform
