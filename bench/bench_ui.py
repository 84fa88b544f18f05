"""The dashboard with many tasks in state: how long each call behind its pages takes.

Against a running platform (``--api-url``; ``TASKSTREAM_*`` settings for the
broker), this submits ``-n`` tasks to a queue no worker takes (so they all stay in
state, READY), waits until the processor holds them all, then times the API calls
each page makes, ``--reps`` times each, and prints the medians and maxima:

* overview: ``/queues``, ``/activity``, ``/processors``, and a page of RUNNING tasks
  (the workers fallback);
* tasks: the first page, a page deep in the table (cursor), a state-filtered page
  (listing index), a name filter that matches nothing (the slowest: a whole scan);
* dlq: the first page; a task: ``/tasks/{id}`` and ``/tasks/{id}/history``.

With ``--browser`` it also loads each page in headless Chromium and times until
its table or chart is on screen.

    python bench/bench_ui.py --api-url http://127.0.0.1:6066 -n 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from taskstream.producer import TaskProducer
from taskstream.settings import load_settings

QUEUE = "uibench"


def fill(api: httpx.Client, n: int) -> list[str]:
    """Submit n tasks to QUEUE (in chunks) and wait until the processor holds them."""
    def held() -> int:
        rows = api.get("/queues").json()["queues"]
        return sum(q["total"] for q in rows if q["name"] == QUEUE)

    before = held()
    ids: list[str] = []
    started = time.monotonic()
    with TaskProducer(load_settings()) as producer:
        for start in range(0, n, 10_000):
            specs = [{"name": "bench.ui", "payload": {"i": i}, "queue": QUEUE,
                      "priority": i % 3} for i in range(start, min(n, start + 10_000))]
            ids += [h.task_id for h in producer.submit_many(specs)]
    print(f"submitted {n} in {time.monotonic() - started:.1f} s", flush=True)
    while (now := held()) < before + n:
        print(f"  folded {now - before}/{n} ({time.monotonic() - started:.0f} s)", flush=True)
        time.sleep(5)
    print(f"all {n} in state after {time.monotonic() - started:.1f} s", flush=True)
    return ids


def timed(call: Callable[[], httpx.Response], reps: int) -> dict[str, float]:
    took = []
    for _ in range(reps):
        t0 = time.perf_counter()
        resp = call()
        took.append((time.perf_counter() - t0) * 1000)
        resp.raise_for_status()
    return {"median_ms": round(statistics.median(took), 1), "max_ms": round(max(took), 1)}


def api_timings(api: httpx.Client, ids: list[str], reps: int) -> dict[str, Any]:
    middle = ids[len(ids) // 2]
    calls: dict[str, Callable[[], httpx.Response]] = {
        "GET /queues": lambda: api.get("/queues"),
        "GET /activity": lambda: api.get("/activity"),
        "GET /processors": lambda: api.get("/processors"),
        "GET /tasks?state=RUNNING&limit=1000 (workers)":
            lambda: api.get("/tasks", params={"state": "RUNNING", "limit": 1000}),
        "GET /tasks?limit=50": lambda: api.get("/tasks", params={"limit": 50}),
        "GET /tasks?limit=50&cursor=<middle>":
            lambda: api.get("/tasks", params={"limit": 50, "cursor": middle}),
        "GET /tasks?queue=Q&state=READY&limit=50":
            lambda: api.get("/tasks", params={"queue": QUEUE, "state": "READY", "limit": 50}),
        "GET /tasks?name=<none>&limit=50 (whole scan)":
            lambda: api.get("/tasks", params={"name": "no.such.task", "limit": 50}),
        "GET /dlq?limit=50": lambda: api.get("/dlq", params={"limit": 50}),
        "GET /tasks/{id}": lambda: api.get(f"/tasks/{middle}"),
        "GET /tasks/{id}/history": lambda: api.get(f"/tasks/{middle}/history"),
    }
    out = {}
    for name, call in calls.items():
        out[name] = timed(call, reps)
        print(f"{name:<50} {out[name]}", flush=True)
    return out


def browser_timings(base: str, ids: list[str], token: str | None) -> dict[str, float]:
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' Chromium
    from tests.browser_support import chromium, wait_until

    routes = {"overview": ("", "svg.chart path.line"), "queues": ("queues", "main tbody tr"),
              "tasks": ("tasks", "main tbody tr a"), "dlq": ("dlq", "main table"),
              "workers": ("workers", "main table"),
              "task": (f"tasks/{ids[len(ids) // 2]}", "ol.timeline li")}
    out = {}
    with chromium(base) as b:
        b.driver.get(f"{base}/ui#/queues")
        if token:
            b.wait_element("#token").send_keys(token + "\n")
        b.wait_element("main tbody tr")
        for name, (route, css) in routes.items():
            b.driver.get(f"{base}/ui?{time.time()}#/{route}")  # a full load each time
            t0 = time.perf_counter()
            wait_until(name, lambda css=css: b.driver.find_elements(By.CSS_SELECTOR, css),
                       timeout=120, interval=0.02)
            out[name] = round((time.perf_counter() - t0) * 1000, 1)
            print(f"page {name:<10} {out[name]} ms to content", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--token", default=None)
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--browser", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.api_url, headers=headers, timeout=300) as api:
        ids = fill(api, args.n) if args.n else [
            i["task_id"] for i in api.get("/tasks", params={"queue": QUEUE, "limit": 1000})
            .json()["items"]]
        total = sum(q["total"] for q in api.get("/queues").json()["queues"])
        print(f"{total} tasks in state", flush=True)
        results: dict[str, Any] = {"tasks_in_state": total,
                                   "api": api_timings(api, ids, args.reps)}
    if args.browser:
        results["pages"] = browser_timings(args.api_url, ids, args.token)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
