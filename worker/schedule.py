"""Periodic jobs that one worker among many runs per interval: each worker looks a few times
per interval whether the job's slot is due, and the one whose conditional statement moves the
slot on (``shared.watch.take_slot``) runs it. A worker that dies leaves the next slot to the
others; no process holds anything between runs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from shared import watch
from shared.store import Store

log = structlog.get_logger("worker.schedule")


async def every(
    store: Store,
    name: str,
    owner: str,
    interval: float,
    job: Callable[[int], Awaitable[object]],
    stop: asyncio.Event,
    clock: Callable[[], float] = time.time,
) -> None:
    """Run ``job(run number)`` whenever this worker takes ``name``'s slot, until ``stop``. A
    failure is logged and the job runs again at a later slot."""
    tick = min(max(interval / 4, 0.05), 5.0)
    while not stop.is_set():
        try:
            await once(store, name, owner, interval, job, clock())
        except Exception as exc:
            log.warning(f"{name}.failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)


async def once(
    store: Store, name: str, owner: str, interval: float, job: Callable[[int], Awaitable[object]], now: float
) -> bool:
    """One look: run ``job`` if this worker takes ``name``'s slot at ``now``; whether it did."""
    run = await watch.take_slot(store.db, name, owner, now, interval)
    if run is None:
        return False
    await job(run)
    return True
