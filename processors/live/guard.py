"""Periodic jobs that never raise.

Faust treats an exception escaping an ``app.timer`` as a crash of the whole app, so
a periodic job (the timer scan between fold batches, the API's rate sampler) that
read an index while a rebalance began would have stopped the replica.

A record the fold cannot apply never comes here: the batched fold sets it aside
for the quarantine topic with its reason (processors/live/batch.py), and Kafka
refusing a record the fold sends is retried by the engine until it is
acknowledged, before the offset commit (processors/live/engine.py, ``persist``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("taskstream.processor")

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
