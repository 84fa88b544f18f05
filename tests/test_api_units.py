"""The pure parts of the HTTP API: auth decisions, parameter parsing, merging, rates."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskstream.api.auth import Scope, TokenAuth, bearer_token, required_scope, token_digest
from taskstream.api.errors import ApiError, AuthFailure
from taskstream.api.progress import Position, check_partition, parse_after, pending_error
from taskstream.api.query import (
    ListQuery,
    RateWindow,
    aggregate_queues,
    bounded_matches,
    first_matches,
    merge_by_id,
    merge_pages,
    missing_partitions,
    parse_list_query,
    parse_since,
    parse_wait_timeout,
    sum_rates,
)
from taskstream.errors import ConfigError
from taskstream.schemas.events import Backoff
from taskstream.schemas.state import TaskState, TaskStatus

# -- auth --------------------------------------------------------------------------


def _auth() -> TokenAuth:
    return TokenAuth.from_settings({
        token_digest("r"): ["read"],
        token_digest("s"): ["read", "submit"],
        token_digest("a"): ["admin"],
    })


def test_open_api_when_no_token_is_configured() -> None:
    auth = TokenAuth.from_settings({})
    assert not auth.enabled
    auth.check(None, Scope.ADMIN)  # no exception


@pytest.mark.parametrize(("header", "status"), [
    (None, 401), ("", 401), ("Bearer", 401), ("Basic r", 401), ("Bearer nope", 401),
])
def test_missing_or_unknown_token_is_401(header: str | None, status: int) -> None:
    with pytest.raises(AuthFailure) as info:
        _auth().check(header, Scope.READ)
    assert info.value.status == status


def test_scopes_are_enforced_and_admin_implies_all() -> None:
    auth = _auth()
    auth.check("Bearer r", Scope.READ)
    auth.check("bearer s", Scope.SUBMIT)
    for scope in Scope:
        auth.check("Bearer a", scope)
    with pytest.raises(AuthFailure) as info:
        auth.check("Bearer r", Scope.SUBMIT)
    assert info.value.status == 403
    with pytest.raises(AuthFailure) as info:
        auth.check("Bearer s", Scope.ADMIN)
    assert info.value.status == 403


def test_open_paths_need_nothing_even_with_tokens() -> None:
    _auth().check(None, required_scope("GET", "/healthz"))
    _auth().check(None, required_scope("GET", "/readyz"))


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/tasks/x", Scope.READ),
    ("GET", "/metrics", Scope.READ),
    ("GET", "/internal/tasks", Scope.READ),
    ("POST", "/tasks", Scope.SUBMIT),
    ("POST", "/tasks/x/cancel", Scope.ADMIN),
    ("POST", "/tasks/x/redrive", Scope.ADMIN),
    ("POST", "/queues/q/pause", Scope.ADMIN),
    ("DELETE", "/tasks", Scope.ADMIN),
    ("POST", "/schedules", Scope.SUBMIT),
    ("GET", "/schedules/s", Scope.READ),
    ("POST", "/schedules/s/pause", Scope.ADMIN),
    ("POST", "/schedules/s/resume", Scope.ADMIN),
    ("DELETE", "/schedules/s", Scope.ADMIN),
])
def test_required_scope(method: str, path: str, scope: Scope) -> None:
    assert required_scope(method, path) is scope


def test_bad_token_config_names_the_problem() -> None:
    with pytest.raises(ConfigError, match="sha256"):
        TokenAuth.from_settings({"plain-token": ["read"]})
    with pytest.raises(ConfigError, match="scope"):
        TokenAuth.from_settings({token_digest("x"): ["write"]})


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer  abc ") == "abc"
    assert bearer_token("Token abc") is None


# -- parameters ------------------------------------------------------------------


def test_list_query_parses_every_parameter() -> None:
    q = parse_list_query({"queue": "emails", "state": "dead", "name": "send",
                          "since": "2026-01-01T00:00:00Z", "limit": "5", "cursor": "01ABC"})
    assert q == ListQuery("emails", TaskStatus.DEAD, "send",
                          int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000), 5, "01ABC")
    assert parse_list_query(q.to_params()) == q


@pytest.mark.parametrize(("params", "field"), [
    ({"state": "BOGUS"}, "state"),
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "x"}, "limit"),
    ({"since": "yesterday"}, "since"),
    ({"since": "\u00b9"}, "since"),  # a digit to str.isdigit, not to int(): found by fuzz
    ({"limit": "\u00b2"}, "limit"),
    ({"before": "\u00b9\u00b2"}, "before"),
    ({"cursor": "a b"}, "cursor"),
    ({"colour": "red"}, "colour"),
])
def test_bad_list_parameters_name_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_list_query(params)
    assert info.value.status == 400
    assert info.value.field == field
    assert info.value.body()["error"]["field"] == field


def test_since_accepts_millis_and_naive_iso_as_utc() -> None:
    assert parse_since("1700000000000") == 1_700_000_000_000
    assert parse_since("2026-01-01T00:00:00") == parse_since("2026-01-01T00:00:00+00:00")


@pytest.mark.parametrize("raw", ["-1", "301", "nan", "abc"])
def test_bad_wait_timeouts(raw: str) -> None:
    with pytest.raises(ApiError):
        parse_wait_timeout(raw)


def test_wait_timeout_default() -> None:
    assert parse_wait_timeout(None) == 30.0
    assert parse_wait_timeout("0.5") == 0.5


# -- filtering and merging -----------------------------------------------------------


def _state(task_id: str, status: TaskStatus = TaskStatus.READY, queue: str = "default",
           name: str = "t", submitted: int = 1000) -> TaskState:
    return TaskState(
        task_id=task_id, name=name, queue=queue, priority=1, status=status, payload=b"",
        content_type="application/json", payload_digest="", max_attempts=3,
        backoff=Backoff(), timeout_ms=None, lease_ms=30_000, submitted_at_ms=submitted,
        updated_at_ms=submitted)


def test_first_matches_applies_filters_and_cursor() -> None:
    states = [_state("a", queue="q1"), _state("b", queue="q2"), _state("c", name="x"),
              _state("d", submitted=5), _state("e"), _state("f")]
    q = ListQuery(queue="default", name="t", since_ms=100, limit=2, cursor="c")
    assert [s.task_id for s in first_matches(states, q)] == ["e", "f"]
    q = dataclasses.replace(q, state=TaskStatus.DEAD)
    assert first_matches(states, q) == []


def test_merge_by_id_interleaves_runs() -> None:
    runs = [iter([_state("a"), _state("d")]), iter([_state("b"), _state("c")])]
    assert [s.task_id for s in merge_by_id(runs)] == ["a", "b", "c", "d"]


def test_merge_pages_dedups_and_sets_cursor() -> None:
    page = merge_pages([[{"task_id": "a"}, {"task_id": "c"}],
                        [{"task_id": "b"}, {"task_id": "c"}]], limit=3)
    assert [i["task_id"] for i in page.items] == ["a", "b", "c"]
    assert page.next_cursor == "c"
    last = merge_pages([[{"task_id": "d"}]], limit=3)
    assert last.body() == {"items": [{"task_id": "d"}], "next_cursor": None,
                           "scan_limit_reached": False}


def test_bounded_matches_stops_at_the_bound_and_says_where() -> None:
    states = [_state(c) for c in "abcdef"]
    q = ListQuery(name="nothing", limit=10)
    scan = bounded_matches(states, q, max_scanned=4)
    assert (scan.states, scan.scanned, scan.scanned_through) == ([], 4, "d")
    full = bounded_matches(states, ListQuery(limit=2), max_scanned=2)
    assert [s.task_id for s in full.states] == ["a", "b"] and full.scanned_through is None
    done = bounded_matches(states, ListQuery(limit=10), max_scanned=100)
    assert done.scanned == 6 and done.scanned_through is None


def test_merge_pages_keeps_items_up_to_the_lowest_stop() -> None:
    page = merge_pages([[{"task_id": "a"}, {"task_id": "e"}], [{"task_id": "b"}]], limit=5,
                       scanned_through=["c", None])
    assert [i["task_id"] for i in page.items] == ["a", "b"]
    assert (page.next_cursor, page.scan_limit_reached) == ("c", True)
    full = merge_pages([[{"task_id": "a"}, {"task_id": "b"}]], limit=2, scanned_through=["z"])
    assert (full.next_cursor, full.scan_limit_reached) == ("b", False)


@given(st.sets(st.text("0123456789ABCDEF", min_size=1, max_size=4), max_size=60),
       st.integers(1, 7), st.integers(1, 4), st.integers(1, 9),
       st.sets(st.text("0123456789ABCDEF", min_size=1, max_size=4), max_size=20))
def test_bounded_paging_visits_every_match_once(ids: set[str], limit: int, shards: int,
                                                bound: int, matching: set[str]) -> None:
    """Scatter-gather paging where each shard examines at most ``bound`` rows per page
    still yields every matching ID exactly once, in order, and ends."""
    by_shard: list[list[TaskState]] = [[] for _ in range(shards)]
    for task_id in sorted(ids):
        by_shard[hash(task_id) % shards].append(_state(task_id, name=(
            "m" if task_id in matching else "t")))
    query = ListQuery(name="m", limit=limit)
    seen: list[str] = []
    cursor = ""
    for _ in range(len(ids) + 2):
        scans = [bounded_matches([s for s in shard if s.task_id > cursor],
                                 dataclasses.replace(query, cursor=cursor), bound)
                 for shard in by_shard]
        page = merge_pages([[{"task_id": s.task_id} for s in scan.states] for scan in scans],
                           limit, [scan.scanned_through for scan in scans])
        seen.extend(i["task_id"] for i in page.items)
        if page.next_cursor is None:
            break
        assert page.next_cursor > cursor
        cursor = page.next_cursor
    assert seen == sorted(ids & matching)


@given(st.sets(st.text("0123456789ABCDEF", min_size=1, max_size=4), max_size=60),
       st.integers(1, 7), st.integers(1, 4))
def test_paging_through_shards_visits_every_id_once(ids: set[str], limit: int, shards: int
                                                    ) -> None:
    """Scatter-gather paging over any split of IDs yields each ID exactly once, in order."""
    by_shard: list[list[str]] = [[] for _ in range(shards)]
    for task_id in sorted(ids):
        by_shard[hash(task_id) % shards].append(task_id)
    seen: list[str] = []
    cursor = ""
    for _ in range(len(ids) + 2):
        pages = [[{"task_id": t} for t in shard if t > cursor][:limit] for shard in by_shard]
        page = merge_pages(pages, limit)
        seen.extend(i["task_id"] for i in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == sorted(ids)


def test_missing_partitions() -> None:
    assert missing_partitions([0, 2], 4) == [1, 3]


# -- queues ----------------------------------------------------------------------------


def test_aggregate_queues_sums_rows_of_every_replica() -> None:
    rows = [["q", "READY", 1, 2], ["q", "READY", 2, 1], ["q", "DEAD", 1, 1],
            ["r", "SUCCEEDED", 0, 4]]
    stats = aggregate_queues(rows, {"q": 1.5}, {"r": True}, ["default"])
    bodies = {s.name: s.body() for s in stats}
    assert set(bodies) == {"default", "q", "r"}
    assert bodies["q"]["counts"] == {"DEAD": 1, "READY": 3}
    assert bodies["q"]["by_priority"] == {"1": {"DEAD": 1, "READY": 2}, "2": {"READY": 1}}
    assert bodies["q"]["succeeded_per_s"] == 1.5
    assert bodies["r"]["paused"] is True
    assert bodies["default"]["total"] == 0


def test_rate_window_measures_growth_per_second() -> None:
    window = RateWindow(window_s=60)
    window.add(0.0, [0, 1], {(0, "q"): 10})
    assert window.rates() == {"q": None}  # one sample: unknown
    window.add(10.0, [0, 1], {(0, "q"): 30, (1, "q"): 10})
    assert window.rates() == {"q": 3.0}  # (20 + 10) in 10 s


def test_rate_window_ignores_partitions_that_moved() -> None:
    window = RateWindow(window_s=60)
    window.add(0.0, [0], {(0, "q"): 10})
    window.add(10.0, [0, 1], {(0, "q"): 20, (1, "q"): 1000})  # partition 1 just arrived
    assert window.rates() == {"q": 1.0}


def test_rate_window_forgets_old_samples() -> None:
    window = RateWindow(window_s=60)
    window.add(0.0, [0], {(0, "q"): 0})
    window.add(30.0, [0], {(0, "q"): 1000})
    window.add(70.0, [0], {(0, "q"): 1000})
    window.add(100.0, [0], {(0, "q"): 1000})
    assert window.rates() == {"q": 0.0}
    assert len(window.samples) <= 3


def test_sum_rates() -> None:
    assert sum_rates([{"q": 1.0, "r": None}, {"q": 2.0}]) == {"q": 3.0, "r": None}


# -- read-your-writes and retry hints (D46) -------------------------------------------


def test_parse_after() -> None:
    assert parse_after(None, 6) is None and parse_after("", 6) is None
    assert parse_after("3:120", 6) == Position(3, 120)
    for bad in ("3", "a:1", "3:-1", "1:2:3", "9:1", "³:1"):
        with pytest.raises(ApiError) as info:
            parse_after(bad, 6)
        assert (info.value.status, info.value.field) == (400, "after")


def test_after_must_be_the_tasks_partition() -> None:
    check_partition(None, 2, "T")
    check_partition(Position(2, 5), 2, "T")
    with pytest.raises(ApiError, match="partition 2, not 4"):
        check_partition(Position(4, 5), 2, "T")


def test_pending_says_how_far_behind_and_when_to_retry() -> None:
    error = pending_error("T", 3, folded=100, end=130)
    assert error.status == 503 and error.retriable
    body = error.body()["error"]
    assert (body["code"], body["partition"], body["behind"]) == ("pending", 3, 30)
    assert error.headers() == {"Retry-After": "1"}


def test_an_error_passed_on_by_a_proxy_keeps_its_fields() -> None:
    error = ApiError(503, "too_many_waiters", "busy", retry_after_s=2.5,
                     details={"code": "shadowed", "extra": 1})
    again = ApiError.from_body(503, error.body()["error"])
    assert again.body() == error.body()
    assert again.headers() == {"Retry-After": "3"}
    assert ApiError(404, "not_found", "x").headers() is None
