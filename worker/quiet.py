"""The quiet-resolve sweep: a flapping incident's clear only sets its resolve
``FLAP_QUIET_SECONDS`` later ("resolves at …, if quiet"), and when no alarm comes after it,
nothing else would resolve it. The pending resolve is a column of the incident in the store,
so it survives any worker's restart; one worker per interval (``worker.schedule``) resolves
those that fell due, under their keys' locks, as an alarm of the key would
(``shared.snapshot.settle_due``): resolved at the time the quiet period ended, told once
(``incident.resolved``, with the outbox in the same transaction).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from shared.settings import Settings
from shared.store import Store
from worker import schedule

log = structlog.get_logger("worker.quiet")

SCHEDULE = "quiet-resolve"
BATCH = 100  # incidents resolved per transaction
# How often the sweep looks: a tenth of the quiet period, between these (the incident's
# resolved_at is when its quiet period ended however late the sweep comes).
LOOK_SECONDS = (1.0, 30.0)


def interval(quiet_seconds: float) -> float:
    low, high = LOOK_SECONDS
    return min(max(quiet_seconds / 10, low), high)


class QuietResolves:
    def __init__(
        self, settings: Settings, store: Store, *, worker_id: str, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.worker_id = worker_id
        self.clock = clock
        self.interval = interval(settings.flap_quiet_seconds)

    async def run(self, stop: asyncio.Event) -> None:
        every = self.interval
        await schedule.every(self.store, SCHEDULE, self.worker_id, every, self.sweep, stop, self.clock)

    async def sweep(self, run: int = 0) -> int:
        """Resolve every flapping incident whose quiet period has passed; how many."""
        done = 0
        while True:
            async with self.store.unit() as unit:
                settled = await unit.settle_quiet(self.clock(), BATCH)
            for incident_id in settled:
                log.info("incident.resolved_quiet", incident_id=incident_id)
            done += len(settled)
            if len(settled) < BATCH:
                return done
