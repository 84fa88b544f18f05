"""A periodic job of the processor never raises (processors/live/guard.py)."""

from __future__ import annotations

import asyncio

import pytest

from taskstream.processors.live.guard import timer_round
from taskstream.statestore.errors import IndexNotReady


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
