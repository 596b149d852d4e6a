"""What every step of one alarm's processing shares: the ``Job`` (the alarm, its instance and
incident, its bound logger), the claim a worker holds, and the outcomes said the same way from
every step (skipped, already processed, deferred behind another worker's claim)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from shared import metrics
from shared.alarm import Alarm
from shared.claims import ClaimVerdict
from shared.policy import Skip
from shared.pricing import PlanChange
from shared.records import ActionRecord, Asked
from shared.statuses import ActionStatus
from worker.outcomes import Ack, Outcome, Retries

# What to do once an alarm's first transaction has committed.
Then = Callable[[], Awaitable[Outcome]]

FIRST_DELIVERY_WON = "another delivery of this event decided first"


@dataclass
class Job:
    """One alarm being processed: what every record and log line of it shares."""

    alarm: Alarm
    instance_id: str | None
    incident_id: str | None
    log: structlog.typing.FilteringBoundLogger
    plan: str | None = None
    from_plan: str | None = None  # the plan read before the upgrade, where it was read
    verification: dict[str, Any] | None = None  # what the broker check saw, where it looked
    new: bool = False  # its event was recorded in this step (it has no action row yet)
    change: PlanChange | None = None  # the plan change priced before the call
    kind: str | None = None  # the remedy, where not an upgrade ("resize_disk")
    extra_disk_from: int | None = None  # a disk resize's extra disk read, and asked for (GB)
    extra_disk_to: int | None = None
    asked: Asked | None = None  # a change an earlier attempt asked for, whose answer never came

    def action(self, status: ActionStatus, now: float, **fields: Any) -> ActionRecord:
        """A write of this alarm's action row."""
        change = self.change
        if change is not None:
            fields.setdefault("from_price", change.from_price)
            fields.setdefault("to_price", change.to_price)
        return ActionRecord(
            self.alarm,
            status,
            now,
            self.incident_id,
            self.instance_id,
            plan=self.plan,
            from_plan=self.from_plan,
            verification=self.verification,
            attempts=fields.pop("attempts", self.alarm.attempts),
            kind=self.kind,
            extra_disk_from=self.extra_disk_from,
            extra_disk_to=self.extra_disk_to,
            **fields,
        )


@dataclass(frozen=True)
class Claim:
    """The cooldown claim a worker holds: its scope and this worker's owner token."""

    scope: str
    owner: str


async def skipped(job: Job, skip: Skip) -> Outcome:
    job.log.info("upgrade.skipped", reason=skip.reason.value, detail=skip.detail)
    metrics.MESSAGES.labels(skip.reason.value).inc()
    return Ack()


async def already_processed(job: Job, detail: str = FIRST_DELIVERY_WON) -> Outcome:
    job.log.info("alarm.already_processed", detail=detail)
    metrics.MESSAGES.labels("already_processed").inc()
    return Ack()


async def deferred(
    retries: Retries, job: Job, scope: str, lease_left: float, verdict: ClaimVerdict
) -> Outcome:
    """Another worker holds the claim: wait in a delay queue (no attempt spent)."""
    defer = retries.defer(lease_left, "another worker holds the upgrade claim")
    job.log.info(
        "upgrade.deferred",
        scope=scope,
        lease_left_s=round(lease_left, 1),
        delay_s=defer.delay,
        # The holder's lease had run out: it now has one more to report (shared.claims).
        stale_claim=verdict is ClaimVerdict.NOTICED,
    )
    return defer
