"""Group commit: the first steps of alarms delivered together share one transaction.

A storm of alarms costs the store one commit per alarm (a WAL write and fsync on SQLite, two
more round trips and a WAL flush on PostgreSQL) — most of what deciding a repeat costs. So the
alarms that reach the worker together take their first steps (event record, incident change,
duplicate check, decision, claim or skip) in one transaction, in delivery order, and each goes
on alone from there: its own log lines, its own API call, its own settling. The transaction is
one read (``Unit.load``), a pure fold (``worker.first_step.plan_batch``) and one write
(``Unit.apply``): on PostgreSQL every statement is a round trip, so a batch costs a handful,
not a handful per alarm. Their upgrades' outcomes are recorded the same way
(``worker.group_commit``).

A batch is what has arrived by the time the store is free, at most ``limit``. A lone alarm
waits for nothing: when no other message is in flight, or the last batch was a single alarm
too (light load), the store takes it on the next turn of the event loop. Under load it waits
up to ``WINDOW_SECONDS`` for more: deliveries come back from the broker in small groups, one
per group of acks, and without the wait those groups would stay small; with it they merge
(the time is the broker's to deliver them, on a machine whose cores it shares).

A batch whose transaction fails is tried again one alarm at a time, so that one alarm the
store refuses fails alone and never sends its neighbours to a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog

from shared import metrics
from shared.alarm import Alarm
from worker.group_commit import commit_together, settle
from worker.jobs import Then
from worker.process import Processor

log = structlog.get_logger("worker")

# How long a batch waits for more alarms, and only when the last one was not alone.
WINDOW_SECONDS = 0.002


class FirstSteps:
    """Collects alarms and runs their first steps, a batch at a time (see the module)."""

    def __init__(self, processor: Processor, limit: int, in_flight: Callable[[], int] = lambda: 0):
        self.processor = processor
        self.limit = max(1, limit)
        self.in_flight = in_flight  # messages being worked on, these waiting here included
        self._waiting: list[tuple[Alarm, asyncio.Future[Then]]] = []
        self._runner: asyncio.Future[None] | None = None
        self._full: asyncio.Future[None] | None = None  # set when a waiting batch is full
        self._last_size = 1
        self._ahead = 0  # how many of those waiting came ``first``

    async def take(self, alarm: Alarm, *, first: bool = False) -> Then:
        """Commit ``alarm``'s first step (with whatever else is waiting); what to do next.
        Raises what the step raised when it failed on its own. ``first``: ahead of the others
        waiting (in its order among those that came ``first`` too) — an alarm from the fast
        lane passes those from the work queue (``receiver.lanes``)."""
        step: asyncio.Future[Then] = asyncio.get_running_loop().create_future()
        if first:
            self._waiting.insert(self._ahead, (alarm, step))
            self._ahead += 1
        else:
            self._waiting.append((alarm, step))
        if self._full is not None and len(self._waiting) >= self.limit and not self._full.done():
            self._full.set_result(None)
        if self._runner is None:
            # Started, not run: the deliveries read with this one join it before it begins.
            self._runner = asyncio.ensure_future(self._run())
        return await step

    async def _run(self) -> None:
        try:
            while self._waiting:
                if self._busy():
                    await self._gather()
                batch, self._waiting = self._waiting[: self.limit], self._waiting[self.limit :]
                self._ahead = max(0, self._ahead - len(batch))
                await self._commit(batch)
        finally:
            self._runner = None

    def _busy(self) -> bool:
        """More alarms are on their way: others are in flight (their acks bring the next
        deliveries) and the last batch was not alone."""
        waiting = len(self._waiting)
        return waiting < self.limit and self._last_size > 1 and self.in_flight() > waiting

    async def _gather(self) -> None:
        """Up to ``WINDOW_SECONDS`` for the batch to fill."""
        loop = asyncio.get_running_loop()
        self._full = full = loop.create_future()
        timer = loop.call_later(WINDOW_SECONDS, settle, full, None)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None

    async def _commit(self, batch: Sequence[tuple[Alarm, asyncio.Future[Then]]]) -> None:
        metrics.BATCH_SIZE.observe(len(batch))
        self._last_size = len(batch)
        await commit_together(
            batch,
            self.processor.first_steps,
            "the batch's transaction failed: its alarms are tried one at a time",
        )
