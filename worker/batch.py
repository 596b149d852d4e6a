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
store refuses fails alone and never sends its neighbours to a retry. The collecting is
``worker.group_commit.Collector``'s, the same that records the upgrades' outcomes.
"""

from __future__ import annotations

from collections.abc import Callable

from shared import metrics
from shared.alarm import Alarm
from worker.group_commit import Collector
from worker.jobs import Then
from worker.process import Processor

# How long a batch waits for more alarms, and only when the last one was not alone.
WINDOW_SECONDS = 0.002


class FirstSteps(Collector[Alarm, Then]):
    """Collects alarms and runs their first steps, a batch at a time (see the module)."""

    def __init__(self, processor: Processor, limit: int, in_flight: Callable[[], int] = lambda: 0):
        super().__init__(
            processor.first_steps,
            limit,
            "the batch's transaction failed: its alarms are tried one at a time",
            window=WINDOW_SECONDS,
            in_flight=in_flight,
            on_batch=metrics.BATCH_SIZE.observe,
        )
        self.processor = processor

    async def take(self, alarm: Alarm, *, first: bool = False) -> Then:
        """Commit ``alarm``'s first step (with whatever else is waiting); what to do next.
        Raises what the step raised when it failed on its own. ``first``: ahead of the others
        waiting — an alarm from the fast lane passes those from the work queue
        (``receiver.lanes``)."""
        return await self.add(alarm, first=first)
