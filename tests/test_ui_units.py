"""The dashboard's server side without a broker: the activity arithmetic, the files it
serves and how (CSP, no token, no path escapes), and the static rules its scripts keep.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from taskstream.api.activity import (
    ActivityWindow,
    Sample,
    merge_activity,
    quantile,
    sample_registry,
)
from taskstream.api.auth import Scope, TokenAuth, required_scope, token_digest
from taskstream.api.console import HIDDEN, RedriveMany, hide_dispatch_ids
from taskstream.api.dashboard import CONTENT_SECURITY_POLICY, Dashboard, load_assets
from taskstream.api.errors import ApiError
from taskstream.processors.live.metrics import ProcessorMetrics

UI = Path(__file__).resolve().parent.parent / "api" / "ui"
BOUNDS = (0.001, 0.01, 0.1, 1.0)


# -- activity -------------------------------------------------------------------------


def test_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    # 10 observations in (0.01, 0.1]: the median is halfway through that bucket
    assert quantile(0.5, BOUNDS, [0, 0, 10, 0, 0]) == pytest.approx(0.055)
    assert quantile(0.99, BOUNDS, [0, 0, 0, 0, 5]) == 1.0  # above the top bound: the bound
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0, 0]) is None


@given(st.lists(st.integers(0, 50), min_size=5, max_size=5).filter(lambda c: sum(c) > 0),
       st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_quantiles_are_monotone_and_inside_the_bounds(counts: list[int], a: float,
                                                      b: float) -> None:
    low, high = sorted((a, b))
    q_low, q_high = quantile(low, BOUNDS, counts), quantile(high, BOUNDS, counts)
    assert q_low is not None and q_high is not None
    assert 0.0 <= q_low <= q_high <= BOUNDS[-1]


def _sample(at: float, succeeded: float, buckets: tuple[float, ...]) -> Sample:
    return Sample(at, {"succeeded": succeeded, "submitted": 2 * succeeded}, buckets)


def test_a_window_answers_what_each_step_gained() -> None:
    window = ActivityWindow(step_s=2.0, window_s=10.0)
    window.add(_sample(100.0, 10, (1, 3, 3, 3, 3)), BOUNDS)
    window.add(_sample(102.0, 16, (1, 5, 8, 8, 9)), BOUNDS)
    answer = window.deltas()
    assert answer["bounds"] == list(BOUNDS)
    [(at_ms, span, gained, buckets)] = answer["deltas"]
    assert (at_ms, span) == (102_000, 2.0)
    assert gained == {"succeeded": 6, "submitted": 12}
    assert buckets == [0, 2, 3, 0, 1]  # per bucket, no longer cumulative
    for at in range(104, 140, 2):
        window.add(_sample(float(at), 16, (1, 5, 8, 8, 9)), BOUNDS)
    assert len(window.samples) <= 7  # ten seconds of samples, and the one before


def test_merging_adds_the_replicas_rates_per_step() -> None:
    now_ms = 1_000_000
    one = {"bounds": list(BOUNDS), "deltas": [[now_ms - 1000, 2.0, {"succeeded": 10.0},
                                               [0, 4, 0, 0, 0]]]}
    two = {"bounds": list(BOUNDS), "deltas": [[now_ms - 500, 1.0, {"succeeded": 3.0},
                                               [0, 0, 4, 0, 0]]]}
    merged = merge_activity([one, two], now_ms, step_s=2.0, window_s=10.0)
    points = merged["points"]
    assert len(points) == 5
    assert [p["t_ms"] for p in points] == sorted(p["t_ms"] for p in points)
    last = points[-1]
    assert last["rates"]["succeeded"] == pytest.approx(10 / 2 + 3 / 1)
    assert last["rates"]["failed"] == 0
    assert last["latency_ms"]["p50"] == pytest.approx(10.0)  # the top of the 4 fast ones
    assert points[0]["rates"] is None and points[0]["latency_ms"]["p50"] is None
    assert merged["latency_max_ms"] == 1000.0


def test_the_registry_is_read_by_metric_names() -> None:
    metrics = ProcessorMetrics()
    metrics.applied.labels("TaskSucceeded").inc(3)
    metrics.applied.labels("TaskSubmitted").inc(5)
    metrics.dispatched.labels("a").inc(2)
    metrics.dispatched.labels("b").inc(1)
    metrics.dispatch_latency.observe(0.003)
    sample, bounds = sample_registry(metrics.registry, 12.5)
    assert sample.counts["succeeded"] == 3
    assert sample.counts["submitted"] == 5
    assert sample.counts["dispatched"] == 3
    assert sample.counts["failed"] == 0
    assert bounds[0] == 0.001 and len(sample.buckets) == len(bounds) + 1
    assert sample.buckets[0] == 0 and sample.buckets[1] == 1  # cumulative, +Inf last


# -- redrive many, history -------------------------------------------------------------


def test_redrive_many_takes_a_bounded_list_and_nothing_else() -> None:
    assert RedriveMany.model_validate({"task_ids": ["A"], "dry_run": True}).dry_run
    for bad in ({"task_ids": []}, {"task_ids": ["A"] * 501}, {"task_ids": ["A"], "x": 1},
                {"task_ids": ["A"], "dry_run": "yes"}):
        with pytest.raises(ValidationError):
            RedriveMany.model_validate(bad)


def test_dispatch_ids_are_hidden_from_history_without_the_admin_scope() -> None:
    event = {"fields": {"dispatch_id": "4b2f9a654feaa553", "worker_id": "w"},
             "decisions": ["dispatched attempt 2 (4b2f9a654feaa553)", "retry in 5 ms"]}
    hidden = hide_dispatch_ids(event)
    assert "4b2f9a654feaa553" not in repr(hidden)
    assert hidden["fields"] == {"dispatch_id": HIDDEN, "worker_id": "w"}
    assert hidden["decisions"] == [f"dispatched attempt 2 {HIDDEN}", "retry in 5 ms"]
    auth = TokenAuth.from_settings({token_digest("r"): ["read"], token_digest("a"): ["admin"]})
    assert not auth.grants("Bearer r", Scope.ADMIN)
    assert auth.grants("Bearer a", Scope.ADMIN)
    assert TokenAuth.from_settings({}).grants(None, Scope.ADMIN)


# -- the files ----------------------------------------------------------------------------


def test_the_dashboard_needs_no_token_but_everything_else_still_does() -> None:
    for path in ("/ui", "/ui/", "/ui/static/app.js", "/ui/static/missing.js"):
        assert required_scope("GET", path) is None, path
    assert required_scope("GET", "/uix") is Scope.READ
    assert required_scope("GET", "/activity") is Scope.READ
    assert required_scope("POST", "/dlq/redrive") is Scope.ADMIN


def test_pages_carry_the_policy_and_unknown_names_are_404() -> None:
    asyncio.run(_pages_carry_the_policy_and_unknown_names_are_404())


async def _pages_carry_the_policy_and_unknown_names_are_404() -> None:
    dashboard = Dashboard()
    page = await dashboard.page(make_mocked_request("GET", "/ui"))
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["Content-Type"].startswith("text/html")
    script = await dashboard.static(make_mocked_request("GET", "/ui/static/app.js"), "app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    again = await dashboard.static(make_mocked_request(
        "GET", "/ui/static/app.js", headers={"If-None-Match": script.headers["ETag"]}),
        "app.js")
    assert again.status == 304
    for name in ("../service.py", "index.html", "nope.js", ".hidden.js", "APP.JS"):
        with pytest.raises(ApiError) as caught:
            await dashboard.static(make_mocked_request("GET", f"/ui/static/{name}"), name)
        assert caught.value.status == 404


def test_the_policy_forbids_inline_scripts_and_foreign_origins() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_every_module_an_asset_imports_is_shipped() -> None:
    assets = load_assets()
    for name, asset in assets.items():
        if name.endswith(".js"):
            for imported in re.findall(r"from '\./([^']+)'", asset.body.decode()):
                assert imported in assets, f"{name} imports {imported}, which is not shipped"
    html = assets["index.html"].body.decode()
    for ref in re.findall(r'(?:src|href)="/ui/static/([^"]+)"', html):
        assert ref in assets, ref


def test_scripts_never_parse_text_as_html_and_the_page_has_no_inline_code() -> None:
    """The rendering rule (api/ui/dom.js): values go in as text nodes or attributes."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|"
                       r"new Function|setAttribute\(\s*['\"]on|\.srcdoc")
    for path in UI.glob("*.js"):
        found = sinks.findall(path.read_text())
        assert not found, f"{path.name} uses {found}"
    html = (UI / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)


def test_every_script_parses_as_an_es_module() -> None:
    """A syntax error would only show as a blank page; node finds it without a browser."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the browser tests still load every module")
    for path in sorted(UI.glob("*.js")):
        checked = subprocess.run([node, "--input-type=module", "--check"], input=path.read_bytes(),
                                 capture_output=True, timeout=60, check=False)
        assert checked.returncode == 0, f"{path.name}: {checked.stderr.decode()[-2000:]}"


def test_the_dashboard_knows_every_task_status_and_which_are_terminal() -> None:
    """dom.js lists the statuses for its filters and colours: a status the fold gains
    (WAITING, EXPIRED) must reach it, else those tasks cannot be filtered."""
    from taskstream.schemas.state import TERMINAL, TaskStatus

    dom = (UI / "dom.js").read_text()
    states = re.search(r"export const STATES = \[([^\]]*)\]", dom)
    terminal = re.search(r"export const TERMINAL = new Set\(\[([^\]]*)\]\)", dom)
    assert states is not None and terminal is not None
    assert re.findall(r"'([A-Z]+)'", states.group(1)) == [s.value for s in TaskStatus]
    assert set(re.findall(r"'([A-Z]+)'", terminal.group(1))) == {s.value for s in TERMINAL}
