"""What the fold does when handling one record raises.

Faust acks the record an agent was iterating when the agent crashes, and its
supervisor restarts the agent at the *next* record: an exception escaping the
fold would skip a fact silently. So the fold never lets one escape:

* a retriable error (a :class:`~taskstream.errors.TaskstreamError` with
  ``retriable = True``, such as the broker not answering while a new queue's
  topics are made) is retried with backoff; handling is idempotent (a record
  applied before the failure is recognised by its event id and only its effects
  are redone), so a retry is safe;
* anything else, or a retriable error that outlasts the retries, sends the record
  to the quarantine topic with the reason, logged and counted, and the fold goes
  on. The record is still in the events topic, and ``replay verify`` will show
  the task it concerns.

The processor's periodic jobs (the timer scan, the rate sampler) are guarded too:
Faust treats an exception escaping an ``app.timer`` as a crash of the whole app,
so one that read an index while a rebalance began would have stopped the replica
(:func:`timer_round`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from taskstream.errors import TaskstreamError

log = logging.getLogger("taskstream.processor")

RETRIES = 5
FIRST_BACKOFF_S = 0.2


async def guarded(
    handle: Callable[[], Awaitable[None]],
    quarantine: Callable[[str], Awaitable[None]],
    *,
    where: str,
    retries: int = RETRIES,
    first_backoff_s: float = FIRST_BACKOFF_S,
) -> bool:
    """Run ``handle``; True when it succeeded, False when the record was quarantined."""
    backoff = first_backoff_s
    for attempt in range(1, retries + 1):
        try:
            await handle()
            return True
        except TaskstreamError as exc:
            if not exc.retriable or attempt == retries:
                reason = f"fold failed after {attempt} attempt(s): {type(exc).__name__}: {exc}"
                break
            log.warning("fold of %s failed (%s), retry %d of %d in %.1fs",
                        where, exc, attempt, retries - 1, backoff)
            await asyncio.sleep(backoff)
            backoff *= 2
        except Exception as exc:  # a bug must not skip the record silently
            log.exception("fold of %s raised", where)
            reason = f"fold failed: {type(exc).__name__}: {exc}"
            break
    await quarantine(reason)
    return False


def timer_round(
    job: Callable[[], Awaitable[None]], name: str, skip: tuple[type[BaseException], ...] = ()
) -> Callable[[], Awaitable[None]]:
    """``job`` as an ``app.timer`` body that never raises: an exception of a ``skip``
    type ends the round quietly (the next round tries again), anything else is logged
    with its traceback and the round ends. Faust would crash the app instead."""

    async def one_round() -> None:
        try:
            await job()
        except skip:
            return
        except Exception:  # a bug in a periodic job must not stop the replica
            log.exception("periodic job %s raised; it runs again next round", name)

    one_round.__name__ = one_round.__qualname__ = f"{name}_round"
    return one_round
