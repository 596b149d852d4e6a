"""Upgrades a rule asks a person to approve: the periodic look (a delayed ``ApprovalCheck``
message) closes an approval whose window passed, looks again at one still awaiting, or carries
out an approved upgrade — under the same claim, pause, retry and crash rules as any upgrade."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from shared import metrics
from shared.alarm import Alarm, iso, new_id
from shared.claims import ClaimVerdict
from shared.controls import effective_pause
from shared.db import Row
from shared.envelope import ApprovalCheck
from shared.fields import FieldMap
from shared.policy import Skip, SkipReason, Upgrade, rule_budget
from shared.records import AUTOPILOT, AuditEntry
from shared.statuses import ActionStatus
from shared.store import Unit
from shared.store.actions import asked_of
from worker.disk_resize import upgrade_call
from worker.jobs import Claim, Job, Then, already_processed, deferred, skipped
from worker.outcomes import Ack, Follow, Outcome, defer_delay

if TYPE_CHECKING:
    from worker.process import Processor

log = structlog.get_logger("worker")


# The statuses of an approved upgrade that a look carries on: approved (not started yet),
# retrying (a retryable failure released its claim), in progress (its worker may have died).
_CARRIED_OUT = frozenset({ActionStatus.APPROVED, ActionStatus.RETRYING, ActionStatus.IN_PROGRESS})


class Approvals:
    """The looks at upgrades awaiting (or given) a person's approval."""

    def __init__(self, processor: Processor):
        self.processor = processor

    async def run(self, check: ApprovalCheck) -> Outcome:
        """Close an approval whose window passed, look again at one still awaiting, or carry
        out an approved upgrade — under the same claim, pause, retry and crash rules as any
        upgrade: a retryable failure comes back through a delay queue, a worker that dies
        mid-call leaves a claim that expires."""
        now = self.processor.clock()
        bound = log.bind(action_id=check.action_id)
        async with self.processor.store.unit() as unit:
            row = await unit.approval(check.action_id)
            if row is None or row["scope"] is None:
                then: Then = partial(_say_settled, bound, "approval.unknown", None)
            elif row["status"] == ActionStatus.AWAITING_APPROVAL:
                then = await self._awaiting(unit, row, check, now, bound)
            elif row["status"] in _CARRIED_OUT and row["decided_at"] is not None:
                then = await self._carry_out(
                    unit, _approved_job(row, bound, self.processor.policy.fields), row, now
                )
            else:  # denied, expired, or done by another look
                then = partial(_say_settled, bound, "approval.settled", row["status"])
        return await then()

    async def _awaiting(
        self,
        unit: Unit,
        row: Row,
        check: ApprovalCheck,
        now: float,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> Then:
        if now < float(row["deadline"]):
            return partial(self._look, check, now)
        expired = await unit.expire_approval(check.action_id, now)
        if expired is None:
            return partial(_say_settled, bound, "approval.settled", row["status"])
        await unit.audit(_expiry_entry(check.action_id, expired, now))
        return partial(_say_settled, bound, "upgrade.approval_expired", "expired")

    async def _look(self, check: ApprovalCheck, now: float) -> Outcome:
        return self.look_again(check, now)

    async def _carry_out(self, unit: Unit, job: Job, row: Row, now: float) -> Then:
        """An approved upgrade, now: what an alarm would be refused for now still stops it
        (no longer managed, rule gone, paused, dry run); then the claim, then the call."""
        refusal = await self._approved_refusal(unit, job, row, now)
        approval_claim = Claim(row["scope"], row["owner"])
        if refusal is not None:
            record = job.action(refusal[0], now, reason=refusal[1].reason.value, detail=refusal[1].detail)
            # A dry run takes its cooldown, like any dry run; every other refusal frees the claim.
            dry = refusal[0] is ActionStatus.DRY_RUN
            await unit.refuse_approved(record, approval_claim.scope, approval_claim.owner, cooldown=dry)
            return partial(skipped, job, refusal[1])
        upgrade = self._approved_upgrade(row)
        claim = Claim(row["scope"], f"{self.processor.worker_id}/{job.alarm.event_id}/{new_id()[:8]}")
        lease = self.processor.settings.claim_lease_seconds
        if row["status"] == ActionStatus.APPROVED:
            if not await unit.start_approved(job.alarm.event_id, claim.owner, now, lease):
                return partial(already_processed, job, "its claim lapsed before a worker could act")
        else:  # a retry after a retryable failure, or a worker that died mid-call
            result = await unit.try_claim(
                claim.scope, upgrade.instance_id, claim.owner, now, lease, upgrade.cooldown_seconds
            )
            if result.verdict is ClaimVerdict.COOLING_DOWN:
                skip = Skip(SkipReason.COOLING_DOWN, "upgraded meanwhile by another alarm")
                await unit.write_action(
                    job.action(ActionStatus.SKIPPED, now, reason=skip.reason.value, detail=skip.detail)
                )
                return partial(skipped, job, skip)
            if result.verdict is not ClaimVerdict.GRANTED:
                lease_left = (result.row.lease_until - now) if result.row else 0.0
                return partial(deferred, self.processor.retries, job, claim.scope, lease_left, result.verdict)
            await unit.write_action(
                job.action(ActionStatus.IN_PROGRESS, now, attempts=job.alarm.attempts + 1)
            )
        job.log.info("upgrade.approved", by=row["decided_by"], plan=upgrade.plan)
        price = float(row["to_price"]) if row["to_price"] is not None else None
        return upgrade_call(
            self.processor, job, upgrade, claim, approved_by=row["decided_by"], approved_price=price
        ).run

    async def _approved_refusal(
        self, unit: Unit, job: Job, row: Row, now: float
    ) -> tuple[ActionStatus, Skip] | None:
        instance = str(row["instance_id"])
        if instance not in self.processor.settings.managed:
            return ActionStatus.SKIPPED, Skip(
                SkipReason.NOT_MANAGED, f"instance {instance} is not in CLOUDAMQP_INSTANCE_ID"
            )
        if not any(rule.name == row["rule"] for rule in self.processor.policy.rules):
            return ActionStatus.SKIPPED, Skip(
                SkipReason.NO_RULE, f"rule {row['rule']!r} is no longer in the policy"
            )
        pause = effective_pause(await unit.pauses_for(instance, now), instance, now)
        if pause is not None:
            return ActionStatus.SKIPPED, Skip(SkipReason.PAUSED, f"approved, but {pause.describe()}")
        if self.processor.dry_run:
            return ActionStatus.DRY_RUN, Skip(
                SkipReason.NO_ACTION, "approved, but this worker runs in dry run"
            )
        return None

    def _approved_upgrade(self, row: Row) -> Upgrade:
        """The upgrade that was approved, with its rule's ladder and ceiling as they are now."""
        rule = next(r for r in self.processor.policy.rules if r.name == row["rule"])
        cap, cap_name = rule_budget(rule, self.processor.settings)
        return Upgrade(
            instance_id=row["instance_id"],
            plan=row["plan"],
            reason=row["reason"],
            scope=row["scope"],
            cooldown_seconds=float(row["cooldown_seconds"]),
            rule=row["rule"],
            ladder=rule.ladder,
            max_plan=rule.max_plan,
            condition=rule.condition(self.processor.settings),
            max_monthly_price=cap,
            price_cap_name=cap_name,
            over_budget=rule.over_budget,
            disk=rule.disk,
        )

    def look_again(self, check: ApprovalCheck, now: float) -> Follow:
        """The next periodic look at an approval: about a minute, never past its deadline."""
        wait = min(self.processor.retries.check_interval, max(check.deadline - now, 0.0))
        return Follow(
            replace(check, checks=check.checks + 1), defer_delay(self.processor.retries.delays, wait)
        )

    async def requested(self, job: Job, upgrade: Upgrade, check: ApprovalCheck) -> Outcome:
        job.log.info("upgrade.awaiting_approval", plan=job.plan, rule=upgrade.rule, until=iso(check.deadline))
        metrics.MESSAGES.labels("awaiting_approval").inc()
        return self.look_again(check, self.processor.clock())

    async def rescheduled(self, job: Job, check: ApprovalCheck) -> Outcome:
        job.log.info("upgrade.approval_check_rescheduled", until=iso(check.deadline))
        return self.look_again(check, self.processor.clock())


def _approved_job(row: Row, bound: structlog.typing.FilteringBoundLogger, fields: FieldMap) -> Job:
    """The alarm that asked for the approval, as recorded, with the attempts its action made."""
    body = json.loads(row["body"]) if isinstance(row["body"], str) else {}
    alarm = Alarm(
        row["action_id"],
        float(row["received_at"] or 0.0),
        body,
        row["event_key"] or "",
        row["attempts"],
        fields=fields,
    )
    resize = row.get("kind") is not None  # a disk resize: its approval's plan is what it asks for
    return Job(
        alarm,
        row["instance_id"],
        row["incident_id"],
        bound.bind(instance=row["instance_id"]),
        None if resize else row["plan"],
        kind=row.get("kind"),
        extra_disk_to=row.get("extra_disk_to"),
        asked=asked_of(row, reason="action_reason", plan="action_plan"),
    )


async def _say_settled(
    bound: structlog.typing.FilteringBoundLogger, event: str, status: str | None
) -> Outcome:
    bound.info(event, status=status)
    if event == "upgrade.approval_expired":
        metrics.MESSAGES.labels("approval_expired").inc()
    return Ack()


def _expiry_entry(action_id: str, approval: Any, now: float) -> AuditEntry:
    return AuditEntry(
        f"approval.expired:{approval['owner']}",
        now,
        AUTOPILOT,
        "automatic",
        "approval.expired",
        approval["instance_id"],
        {"action_id": action_id, "plan": approval["plan"], "deadline": iso(float(approval["deadline"]))},
    )
