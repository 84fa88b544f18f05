"""The fold never lets an exception skip a record: retry what is retriable, quarantine the rest."""

from __future__ import annotations

import asyncio

import pytest

from taskstream.errors import KafkaUnavailableError, TaskstreamError
from taskstream.processors.live.guard import guarded, timer_round
from taskstream.statestore.errors import IndexNotReady


class Script:
    """A handle that raises the given errors in turn, then succeeds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.quarantined: list[str] = []

    async def handle(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

    async def quarantine(self, reason: str) -> None:
        self.quarantined.append(reason)


def run(script: Script, retries: int = 3) -> bool:
    return asyncio.run(guarded(script.handle, script.quarantine, where="t[0]@1",
                               retries=retries, first_backoff_s=0.001))


def test_success_is_handled_once() -> None:
    script = Script()
    assert run(script) is True
    assert (script.calls, script.quarantined) == (1, [])


def test_a_retriable_error_is_retried_until_it_passes() -> None:
    script = Script(KafkaUnavailableError("broker away"), KafkaUnavailableError("still away"))
    assert run(script) is True
    assert (script.calls, script.quarantined) == (3, [])


def test_a_retriable_error_that_lasts_is_quarantined_with_the_reason() -> None:
    script = Script(*[KafkaUnavailableError("broker away")] * 5)
    assert run(script, retries=3) is False
    assert script.calls == 3
    assert script.quarantined == [
        "fold failed after 3 attempt(s): KafkaUnavailableError: broker away"]


@pytest.mark.parametrize("error", [TaskstreamError("bad state"), ValueError("a bug")])
def test_anything_else_is_quarantined_at_once(error: Exception) -> None:
    script = Script(error)
    assert run(script) is False
    assert script.calls == 1
    assert len(script.quarantined) == 1 and str(error) in script.quarantined[0]


def test_a_periodic_job_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    """Faust crashes the whole app when an ``app.timer`` body raises (seen: the rate
    sampler met IndexNotReady as a rebalance began, and the replica stopped)."""
    ran: list[str] = []

    async def job() -> None:
        ran.append("ran")
        raise errors.pop(0)

    errors: list[Exception] = [IndexNotReady("restoring"), ValueError("a bug")]
    one_round = timer_round(job, "taskstream.test", skip=(IndexNotReady,))
    with caplog.at_level("ERROR", logger="taskstream.processor"):
        asyncio.run(one_round())  # skipped quietly
        assert caplog.records == []
        asyncio.run(one_round())  # logged with its traceback
    assert ran == ["ran", "ran"]
    (record,) = caplog.records
    assert "periodic job taskstream.test raised" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert one_round.__name__ == "taskstream.test_round"
