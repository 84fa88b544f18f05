"""The dashboard in a real headless Chromium, against a running platform.

Given the session's broker, a ``taskstream processor`` (tokens configured) and a
``taskstream worker`` running tests/ui_tasks.py as subprocesses, and one Chromium
for the whole module, a user:

* signs in with a token (kept in session storage only) and opens every page, each
  free of serious accessibility violations (axe-core) and of console errors, and
  works it from the keyboard;
* submits tasks and watches them move on the tasks page;
* narrows the tasks with the filter form (queue, state, name, time) and pages
  through them by cursor;
* sees the worker that runs a task on the workers page and the overview;
* pauses a queue on the queues page and sees the worker stop taking its tasks,
  then resumes it;
* redrives a dead task from the DLQ page after a dry run, and one from its own page;
* opens a task and sees its state, result and history from the log; cancels one;
* meets task names, payloads and errors holding ``<script>`` shown as text, with
  nothing run, and a page whose policy refuses inline scripts.

``TASKSTREAM_UI_SCREENSHOTS=docs/ui`` saves the README's screenshots on the way
(``make ui-screenshots``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from taskstream.admin import ensure_topics
from taskstream.api.auth import token_digest
from taskstream.dev.procs import free_port, settings_env
from taskstream.queue_registry import register_queues
from taskstream.schemas.events import Backoff, TaskSubmitted
from taskstream.schemas.ids import new_task_id
from taskstream.settings import Settings
from tests.browser_support import Browser, browser_binaries, chromium, wait_until
from tests.harness import EventWriter, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TOKENS = {"read-tok": ["read"], "admin-tok": ["admin"]}
WORKED = "uiq"  # a queue the worker takes tasks from
HELD = "uihold"  # the queue the tests pause
UNWORKED = "nobody"  # a queue no worker takes tasks from
QUEUES = ["default", WORKED, HELD]
PAGES = {"": "Overview", "queues": "Queues", "tasks": "Tasks", "dlq": "Dead letters",
         "workers": "Workers"}
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


class Platform:
    """A processor and a worker as subprocesses on the session's broker."""

    def __init__(self, settings: Settings, base: Path) -> None:
        self.settings = settings
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker_log = base / "worker.log"
        env = settings_env(settings)
        env.update(TASKSTREAM_API_TOKENS=json.dumps({token_digest(t): s
                                                     for t, s in TOKENS.items()}),
                   TASKSTREAM_TIMER_INTERVAL_S="0.05")
        self.procs: list[subprocess.Popen[bytes]] = []
        self._start(env, base / "processor.log", "processor", "--web-port", str(self.port),
                    "--data-dir", str(base / "processor"), "--loglevel", "warning")
        self._start(env, self.worker_log, "worker", "-A", "tests.ui_tasks", "--queues",
                    ",".join(QUEUES), "--concurrency", "8", "--loglevel", "info")

    def _start(self, env: dict[str, str], log_path: Path, *argv: str) -> None:
        with open(log_path, "ab") as log:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "taskstream", *argv], env=env, cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT))

    def alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text(errors="replace")[-3000:]
                                 for p in self.base.glob("*.log"))
                raise AssertionError(f"{proc.args[3]} exited {proc.returncode}:\n{logs}")

    def ready(self) -> bool:
        self.alive()
        try:
            serving = httpx.get(f"{self.url}/tasks", params={"limit": 1}, timeout=5,
                                headers={"Authorization": "Bearer admin-tok"})
        except httpx.TransportError:
            return False
        return serving.status_code == 200 and "event=worker.started" in self.worker_text()

    def worker_text(self) -> str:
        return self.worker_log.read_text(errors="replace") if self.worker_log.exists() else ""

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # -- the API, as a script beside the browser --------------------------------------

    def client(self, token: str = "admin-tok") -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {token}"})

    def submit(self, name: str, payload: Any = None, **spec: Any) -> str:
        with self.client() as c:
            resp = c.post("/tasks", json={"name": name, "payload": payload, **spec})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["task_id"])

    def view(self, task_id: str) -> dict[str, Any]:
        with self.client() as c:
            resp = c.get(f"/tasks/{task_id}")
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def when(self, task_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self.alive()
            with self.client() as c:
                resp = c.get(f"/tasks/{task_id}")
            return dict(resp.json()) if resp.status_code == 200 and \
                resp.json()["status"] == status else None
        return wait_for(f"task {task_id} {status}", check, timeout=timeout, interval=0.2)


@pytest.fixture(scope="module")
def platform(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    browser_binaries()  # skip (or, under CI, fail) before starting anything
    settings = Settings(bootstrap=kafka_bootstrap, topic_prefix=f"ui{uuid.uuid4().hex[:8]}.",
                        partitions=3, queues=QUEUES)
    ensure_topics(settings)
    running = Platform(settings, tmp_path_factory.mktemp("ui"))
    try:
        wait_for("the processor serving and the worker started", running.ready, timeout=120,
                 interval=0.5)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def browser(platform: Platform) -> Iterator[Browser]:
    with chromium(platform.url) as b:
        b.go("")
        b.wait_element("#token")
        b.find("#token").send_keys("admin-tok", Keys.ENTER)
        b.wait_text("Queue depth")
        yield b


def test_sign_in_keeps_the_token_in_session_storage_only(platform: Platform) -> None:
    with chromium(platform.url) as b:
        b.go("tasks")
        token = b.wait_element("#token")
        assert b.js("return document.activeElement.id") == "token"
        b.assert_accessible("the sign-in form")
        token.send_keys("not-a-token", Keys.ENTER)
        b.wait_text("That token is not known")
        assert b.js("return sessionStorage.getItem('taskstream.token')") is None
        b.find("#token").clear()
        b.find("#token").send_keys("read-tok", Keys.ENTER)
        b.wait_text("In task-ID order")
        assert b.js("return sessionStorage.getItem('taskstream.token')") == "read-tok"
        assert b.js("return localStorage.length") == 0
        assert b.js("return document.cookie") == ""
        b.click("#signout")
        b.wait_element("#token")
        assert b.js("return sessionStorage.getItem('taskstream.token')") is None


def test_every_page_loads_accessible_and_without_console_errors(platform: Platform,
                                                               browser: Browser) -> None:
    task_id = platform.submit("ui.quick", {"hello": "world"}, queue=WORKED)
    platform.when(task_id, "SUCCEEDED")
    browser.console_errors()
    for route, title in [*PAGES.items(), (f"tasks/{task_id}", "Event history")]:
        browser.go(route)
        heading = browser.wait_element("main h1")
        browser.wait_text(title)
        browser.wait_text("TaskSucceeded" if route.startswith("tasks/") else title)
        assert browser.js("return document.activeElement") == heading, \
            f"focus did not move to the heading of {route!r}"
        browser.assert_accessible(route or "the overview")
    assert browser.console_errors() == []


def test_everything_is_reachable_from_the_keyboard(browser: Browser) -> None:
    browser.go("")
    browser.driver.refresh()  # a fresh load: the skip link comes first
    browser.wait_text("Queue depth")
    ActionChains(browser.driver).send_keys(Keys.TAB).perform()
    assert browser.js("return document.activeElement.id") == "skip"
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    assert browser.js("return document.activeElement.id") == "main"
    # the nav links take Enter: tab to "Queues" and open it
    links = browser.driver.find_elements(By.CSS_SELECTOR, "nav a[data-route]")
    queues = next(a for a in links if a.text == "Queues")
    queues.send_keys(Keys.ENTER)
    browser.wait_text("Succeeded per second")
    assert browser.find("nav a[aria-current='page']").text == "Queues"
    # every control on the page is a native, focusable element with a name
    unnamed = browser.js("""
        return [...document.querySelectorAll('button, a[href], input, select')]
          .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim() || e.labels?.length))
          .map(e => e.outerHTML.slice(0, 80));""")
    assert unnamed == []


def test_submitted_tasks_move_on_the_tasks_page(platform: Platform, browser: Browser) -> None:
    ids = [platform.submit("ui.slow", {"seconds": 6}, queue=WORKED) for _ in range(3)]
    browser.go(f"tasks?name=ui.slow&queue={WORKED}")

    def states() -> set[str] | None:
        rows = browser.driver.find_elements(By.CSS_SELECTOR, "main tbody tr")
        found = {r.find_element(By.CSS_SELECTOR, ".badge").text for r in rows
                 if any(i in r.text for i in ids)}
        return found if len([r for r in rows if any(i in r.text for i in ids)]) == 3 else None

    seen_running = wait_until("the tasks listed while they run",
                              lambda: (s := states()) and s & {"READY", "RUNNING"} and s)
    assert seen_running <= {"READY", "RUNNING", "SUCCEEDED"}
    browser.screenshot("tasks")
    wait_until("every task SUCCEEDED on the page", lambda: states() == {"SUCCEEDED"},
               timeout=60)


def test_the_filter_form_narrows_the_tasks_into_cursor_pages(platform: Platform,
                                                              browser: Browser) -> None:
    # SCHEDULED for ten minutes: they stay put while the test pages through them
    for n in range(30):
        platform.submit("ui.paged", {"n": n}, queue=WORKED, delay=600)
    platform.submit("ui.quick", {"not": "paged"}, queue=WORKED, delay=600)
    browser.go("tasks")
    browser.wait_text("In task-ID order")
    browser.find("#tasks-queue").send_keys(WORKED)
    Select(browser.find("#tasks-state")).select_by_value("SCHEDULED")
    Select(browser.find("#tasks-limit")).select_by_value("25")
    browser.js(SET_SINCE, "#tasks-since", -300_000)  # five minutes ago, in local time
    browser.find("#tasks-name").send_keys("ui.paged", Keys.ENTER)

    def names_on_page(count: int) -> list[str] | None:
        if f"Tasks: {count} on this page" not in browser.main_text():
            return None
        return [c.text for c in browser.driver.find_elements(
            By.CSS_SELECTOR, "main tbody td:nth-child(2)")]

    first = wait_until("the first page of 25", lambda: names_on_page(25))
    assert set(first) == {"ui.paged"}, first
    route = browser.js("return window.location.hash")
    for part in (f"queue={WORKED}", "state=SCHEDULED", "name=ui.paged", "since=", "limit=25"):
        assert part in route, (part, route)
    ids_first = browser.js(ROW_IDS)
    browser.click("button[data-focus='page-next']")
    wait_until("the second page of 5", lambda: names_on_page(5))
    ids_second = browser.js(ROW_IDS)
    assert not set(ids_first) & set(ids_second), "a task showed on both pages"
    assert browser.find("button[data-focus='page-next']").get_attribute("disabled")
    browser.click("button[data-focus='page-prev']")
    wait_until("the first page again", lambda: browser.js(ROW_IDS) == ids_first or None)

    # a time after every task: nothing matches
    browser.js(SET_SINCE, "#tasks-since", 3_600_000)
    browser.find("#tasks-name").send_keys(Keys.ENTER)
    browser.wait_text("No task matches.")


SET_SINCE = """
    const d = new Date(Date.now() + arguments[1]);
    const pad = (n) => String(n).padStart(2, '0');
    document.querySelector(arguments[0]).value = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-`
      + `${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;"""
ROW_IDS = ("return [...document.querySelectorAll('main tbody td:first-child')]"
           ".map(c => c.textContent)")


def test_the_workers_page_shows_the_worker_running_a_task(platform: Platform,
                                                          browser: Browser) -> None:
    running = platform.submit("ui.slow", {"seconds": 8}, queue=WORKED)
    worker_id = platform.when(running, "RUNNING")["worker_id"]
    assert worker_id
    browser.go("workers")
    text = browser.wait_text(worker_id)
    assert WORKED in text
    browser.go("")
    # the API has a workers roster (issue 18): the overview counts the workers announced
    browser.wait_text("1 worker announced (1 running)")


def test_pausing_a_queue_from_the_ui_stops_the_worker_taking_its_tasks(
        platform: Platform, browser: Browser) -> None:
    browser.go("queues")
    browser.click(f"button[aria-label='Pause queue {HELD}']")
    browser.wait_text(f"Queue {HELD} paused")
    browser.wait_element(f"button[aria-label='Resume queue {HELD}']")
    wait_for("the worker to pause its consumer", lambda: f"event=queue.paused queue={HELD}"
             in platform.worker_text(), timeout=30)
    browser.screenshot("queues")
    held = platform.submit("ui.quick", {"n": 1}, queue=HELD)
    platform.when(held, "READY")
    # a task on another queue of the same worker finishes: the worker is taking tasks,
    # just not the paused queue's
    other = platform.submit("ui.quick", {"n": 2}, queue=WORKED)
    platform.when(other, "SUCCEEDED")
    browser.go(f"tasks/{held}")
    browser.wait_text("READY")
    assert platform.view(held)["status"] == "READY", "the worker took a paused queue's task"

    browser.go("queues")
    browser.click(f"button[aria-label='Resume queue {HELD}']")
    browser.wait_text(f"Queue {HELD} resumed")
    browser.go(f"tasks/{held}")
    browser.wait_text("SUCCEEDED", timeout=60)


def test_a_dead_task_is_redriven_from_the_dlq_page(platform: Platform, browser: Browser,
                                                   tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    dead = platform.submit("ui.fixable", {"flag": str(flag)}, queue=WORKED)
    platform.when(dead, "DEAD")
    browser.go("dlq?name=ui.fixable")
    box = f"input[aria-label='Select task {dead}']"
    browser.click(box)
    browser.wait_text("1 selected")
    browser.click("section.toolbar button:not(.primary)")  # Dry run
    browser.wait_text("Dry run: nothing was sent")
    browser.wait_text("would be redriven")
    browser.screenshot("dlq")
    assert platform.view(dead)["status"] == "DEAD", "a dry run redrove"

    flag.write_text("the bug is fixed")
    browser.click("section.toolbar button.primary")
    browser.wait_text("Redrive sent")
    assert "1 redriven" in browser.main_text()
    assert platform.when(dead, "SUCCEEDED")["redrives"] == 1
    browser.go(f"tasks/{dead}")
    browser.wait_text("RedriveRequested")


def test_a_task_page_shows_state_result_history_and_cancels(platform: Platform,
                                                           browser: Browser) -> None:
    done = platform.submit("ui.quick", {"order": 42}, queue=WORKED, priority=2)
    platform.when(done, "SUCCEEDED")
    browser.go(f"tasks/{done}")
    text = browser.wait_text("TaskSucceeded")
    for expected in ("ui.quick", "SUCCEEDED", '"order": 42', '"echo"', "TaskSubmitted",
                     "TaskStarted", "READY", "RUNNING", "dispatched attempt 1"):
        assert expected in text, expected
    events = browser.driver.find_elements(By.CSS_SELECTOR, "ol.timeline > li")
    assert len(events) == 3
    browser.screenshot("task", height=1500)

    later = platform.submit("ui.quick", {"later": True}, queue=WORKED, delay=600)
    platform.when(later, "SCHEDULED")
    browser.go(f"tasks/{later}")
    browser.wait_text("SCHEDULED")
    browser.click("button[data-focus='cancel']")
    browser.wait_element("#cancel-reason")
    browser.click("form.confirm button[type='button']")  # Keep it: back to the button
    wait_until("the cancel button back, with the focus", lambda: browser.js(
        "return document.activeElement.dataset.focus === 'cancel'"))
    assert browser.driver.find_elements(By.CSS_SELECTOR, "form.confirm") == []
    browser.click("button[data-focus='cancel']")
    reason = browser.wait_element("#cancel-reason")
    assert browser.js("return document.activeElement.id") == "cancel-reason"
    reason.send_keys("not needed any more", Keys.ENTER)
    browser.wait_text("Cancellation requested")
    assert browser.driver.find_elements(By.CSS_SELECTOR, "form.confirm") == []
    assert platform.when(later, "CANCELLED")["cancel_reason"] == "not needed any more"
    browser.wait_text("CancelRequested")
    # a cancelled task is final: neither cancel nor redrive is offered (the fold refuses both)
    wait_until("no action offered for a cancelled task", lambda: not browser.driver
               .find_elements(By.CSS_SELECTOR, "main .actions button"))


def test_a_dead_task_is_redriven_from_its_own_page(platform: Platform, browser: Browser,
                                                   tmp_path: Path) -> None:
    flag = tmp_path / "fixed"
    dead = platform.submit("ui.fixable", {"flag": str(flag)}, queue=WORKED)
    platform.when(dead, "DEAD")
    browser.go(f"tasks/{dead}")
    browser.wait_text("not fixed yet")
    flag.write_text("the bug is fixed")
    browser.click("button[data-focus='redrive']")
    reason = browser.wait_element("#redrive-reason")
    assert browser.js("return document.activeElement.id") == "redrive-reason"
    reason.send_keys("the flag file exists now", Keys.ENTER)
    browser.wait_text("Redrive requested")
    assert platform.when(dead, "SUCCEEDED")["redrives"] == 1
    browser.wait_text("RedriveRequested")


def test_markup_in_names_payloads_and_errors_is_shown_as_text(platform: Platform,
                                                              browser: Browser) -> None:
    # a producer that skips the API's checks writes a name no submit would take (within
    # the fold's bounds, D28, and to a registered queue, D31: else the fold refuses it)
    register_queues(platform.settings, [UNWORKED])
    forged = new_task_id()
    EventWriter(platform.settings).send(forged, TaskSubmitted(
        name=HOSTILE, queue=UNWORKED, priority=0, payload=HOSTILE.encode(),
        content_type="text/html", eta_ms=None, max_attempts=1,
        backoff=Backoff(1000, 2.0, 10000, 0.0), timeout_ms=None, lease_ms=30000))
    failed = platform.submit("ui.hostile", {"message": HOSTILE, "html": HOSTILE},
                             queue=WORKED)
    platform.when(failed, "DEAD")
    platform.when(forged, "READY")

    browser.go(f"tasks/{failed}")
    text = browser.wait_text("TaskFailed")
    assert text.count(HOSTILE) >= 2  # the payload and the error, as typed
    browser.go(f"tasks/{forged}")
    text = browser.wait_text("TaskSubmitted")
    assert HOSTILE in text
    browser.go(f"tasks?queue={UNWORKED}")
    assert HOSTILE in browser.wait_text(HOSTILE)
    browser.go("dlq")
    browser.wait_text(failed)
    assert browser.js("return window.__pwned") is None
    assert browser.driver.find_elements(By.CSS_SELECTOR, "main script, main img") == []

    # the policy is a second wall: an inline script that got into the page does not run
    browser.console_errors()
    browser.js("const s = document.createElement('script');"
               "s.textContent = 'window.__inline = 1'; document.body.append(s);")
    time.sleep(0.5)
    assert browser.js("return window.__inline") is None
    assert any("Content Security Policy" in m for m in browser.console_errors())


def test_overview_shows_live_charts_depth_and_processors(platform: Platform,
                                                         browser: Browser) -> None:
    for n in range(60):
        platform.submit("ui.quick", {"n": n}, queue=WORKED, priority=n % 3)
    browser.go("")

    def throughput() -> bool:
        legend = browser.driver.find_elements(By.CSS_SELECTOR, ".chart-box .legend strong")
        return any(e.text not in ("\u2013", "0.00") for e in legend[:4])  # "no data", zero

    wait_until("the throughput chart to show the burst", throughput, timeout=60)
    text = browser.main_text()
    assert platform.url in text  # the processor, with its partitions
    assert "0, 1, 2" in text
    assert WORKED in text and "Queue depth by priority" in text
    drawn = browser.js("return [...document.querySelectorAll('svg.chart path.line')]"
                       ".map(p => (p.getAttribute('d') || '').length)")
    assert max(drawn) > 20, drawn
    if browser.shots is not None:  # the README's picture: a minute of a varying load
        demo_workload(platform, seconds=60.0)
        browser.go("")
        browser.wait_text("Queue depth")
        time.sleep(3)
        browser.screenshot("overview", height=1250)


def demo_workload(platform: Platform, seconds: float) -> None:
    """Tasks at a rate that rises and falls, a few slow, a few that die (screenshots only)."""
    started = time.monotonic()
    n = 0
    with platform.client() as c:
        while (elapsed := time.monotonic() - started) < seconds:
            per_tick = 1 + int(12 * math.sin(math.pi * elapsed / seconds) ** 2)
            for _ in range(per_tick):
                n += 1
                name, payload = ("ui.slow", {"seconds": 1.5}) if n % 7 == 0 else \
                    ("ui.fixable", {"flag": "/nonexistent"}) if n % 97 == 0 else \
                    ("ui.quick", {"n": n})
                c.post("/tasks", json={"name": name, "payload": payload, "queue": WORKED,
                                       "priority": n % 3})
            time.sleep(0.25)
