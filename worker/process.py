"""One alarm, start to finish: record it, update its incident, decide, claim, call, and say
how the message is to be settled (a ``worker.outcomes.Outcome``). Transport-free: it sees our
``Alarm`` and ``Check``, never a broker message.

An alarm's first step — event record, incident change, decision, claim — commits in one
transaction and hands back what to do once it has committed (``Then``): log lines say only
what was committed, and an API call starts only after its claim is in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from shared import metrics, watch
from shared.alarm import Alarm, iso, new_id
from shared.claims import ClaimVerdict
from shared.controls import effective_pause
from shared.db import Row
from shared.envelope import AnyCheck, ApprovalCheck, Check
from shared.errors import BusyError, PermanentError, RetryableError
from shared.incidents import plan_incident
from shared.settings import Settings
from shared.store import (
    RECONFIGURING,
    ActionRecord,
    ActionStatus,
    ApprovalRequest,
    Arrival,
    AuditEntry,
    EventRecord,
    Finish,
    QueuedAction,
    Store,
    Unit,
    segments,
)
from worker.cloudamqp import CloudAmqpClient, InstanceState
from worker.group_commit import Finishes
from worker.instances import Directory
from worker.management import ManagementApi, read_nodes
from worker.outcomes import (
    PERMANENT_ERROR,
    RETRIES_EXHAUSTED,
    Ack,
    Defer,
    Follow,
    Outcome,
    Park,
    Retries,
    defer_delay,
)
from worker.plans import plan_shows
from worker.policy import (
    DecisionState,
    Policy,
    Skip,
    SkipReason,
    Upgrade,
    decide,
    resolve_plan,
    target_instance,
    upgrade_scope,
)
from worker.verify import assess

log = structlog.get_logger("worker")

# What to do once an alarm's first transaction has committed.
Then = Callable[[], Awaitable[Outcome]]

_FIRST_DELIVERY_WON = "another delivery of this event decided first"
# An alarm naming an instance the directory does not know re-reads CloudAMQP's list at most this often.
RESOLVE_INTERVAL = 60.0
BUSY_STATUS = "busy"  # how long CloudAMQP stayed busy for this alarm: park status
AUTOPILOT = "autopilot"  # the actor of automatic entries in the audit trail


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

    def action(self, status: ActionStatus, now: float, **fields: Any) -> ActionRecord:
        """A write of this alarm's action row."""
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
            **fields,
        )


@dataclass(frozen=True)
class Claim:
    """The cooldown claim a worker holds: its scope and this worker's owner token."""

    scope: str
    owner: str


class Processor:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: CloudAmqpClient | None,
        *,
        worker_id: str,
        policy: Policy | None = None,
        clock: Callable[[], float] = time.time,
        management: ManagementApi | None = None,
    ):
        self.settings = settings
        self.management = management
        self.policy = policy or Policy.default(settings)
        self.retries = Retries.from_settings(settings)
        self.store = store
        self.client = client
        self.worker_id = worker_id
        self.clock = clock
        self.finishes = Finishes(store)  # upgrades' outcomes, recorded together when together
        self.directory = Directory()  # ids compared as given until CloudAMQP's list is read
        self._listed_at: float | None = None  # monotonic time of the last read of that list
        # Why the last read of that list failed, when it may work on another try (a name
        # cannot be called by: an upgrade waits for the list rather than guess).
        self.listing_error: RetryableError | None = None

    async def resolve_instances(self, *, force: bool = False) -> None:
        """Tie ``CLOUDAMQP_INSTANCE_ID``'s names to CloudAMQP's instances (``GET
        /api/instances``): at start (``force``), and again for an alarm naming an instance the
        list did not have, at most once every ``RESOLVE_INTERVAL``. An API that does not answer
        leaves ids compared as given (and is asked again later)."""
        if self.client is None or not self.settings.instance_ids:
            return
        started = time.monotonic()
        if not force and self._listed_at is not None and started - self._listed_at < RESOLVE_INTERVAL:
            return
        self._listed_at = started
        try:
            listing = await self.client.list_instances()
        except (RetryableError, PermanentError) as exc:
            self.listing_error = exc if isinstance(exc, RetryableError) else None
            log.warning("instances.unresolved", error=str(exc), detail="instance ids are compared as given")
            return
        self.listing_error = None
        self.directory = Directory.from_listing(self.settings.instance_ids, listing)
        log.info(
            "instances.resolved",
            instances={ref: self.directory.api_id(ref) for ref in self.settings.instance_ids},
        )
        if self.directory.unresolved:
            log.warning(
                "instances.not_listed",
                detail="CLOUDAMQP_INSTANCE_ID names instances CloudAMQP does not list; used as given",
                instances=list(self.directory.unresolved),
            )

    async def _named(self, alarms: Sequence[Alarm]) -> list[Alarm]:
        """``alarms``, each naming its instance as ``CLOUDAMQP_INSTANCE_ID`` does."""
        if self.client is None:
            return list(alarms)
        named = [a.instance_id for a in alarms]
        if any(ref is not None and not self.directory.knows(ref) for ref in named):
            await self.resolve_instances()
        out = []
        for alarm, ref in zip(alarms, named, strict=True):
            configured = self.directory.configured(ref) if ref is not None else None
            out.append(alarm if configured == ref else replace(alarm, configured_instance=configured))
        return out

    @property
    def dry_run(self) -> bool:
        return self.client is None or self.settings.effective_dry_run

    async def process(self, alarm: Alarm) -> Outcome:
        [then] = await self.first_steps([alarm])
        return await then()

    async def first_steps(self, alarms: Sequence[Alarm]) -> list[Then]:
        """The first steps of ``alarms``, in order, in one transaction (group commit): what
        each one does next once it has committed. When the transaction fails, none of them
        took its step (the caller decides whether to try them one by one).

        They are taken by instance and incident, so that batches of several workers lock
        incident and claim rows in one order (PostgreSQL would otherwise break their deadlocks
        by failing one). A stable sort: alarms of one instance and incident keep their delivery
        order, the only order their outcomes depend on. The store takes them in runs
        (``shared.store.segments``), each recorded in a handful of statements for the whole
        run, then decided one by one; their new action rows are written together at the end
        of the run."""
        alarms = await self._named(alarms)
        now = self.clock()
        arrivals = []
        for alarm in alarms:
            instance = target_instance(alarm, self.settings)
            arrivals.append(Arrival(alarm, instance, plan_incident(alarm, instance)))
        order = sorted(range(len(alarms)), key=lambda i: _lock_order(arrivals[i]))
        arrivals = [arrivals[i] for i in order]
        thens: list[Then | None] = [None] * len(alarms)
        async with self.store.unit() as unit:
            for run in segments(arrivals):
                taken = [arrivals[n] for n in run]
                records = await unit.record_events(taken, now)
                unit.expect_claims(self._scope(a) for a in taken if a.instance_id is not None)
                for n, arrival, record in zip(run, taken, records, strict=True):
                    thens[order[n]] = await self._decide(unit, arrival, record, now)
                await unit.flush()
        return [then for then in thens if then is not None]

    def _scope(self, arrival: Arrival) -> str:
        """The claim an upgrade decided for this alarm would ask for (``_claim``)."""
        return self._claim_scope(upgrade_scope(arrival.instance_id or "", arrival.alarm.alarm_type))

    def _claim_scope(self, scope: str) -> str:
        """Dry runs have their own claims, so that going live does not inherit a cooldown."""
        return f"dry-run:{scope}" if self.dry_run else scope

    async def _decide(self, unit: Unit, arrival: Arrival, record: EventRecord, now: float) -> Then:
        alarm, instance, incident = arrival.alarm, arrival.instance_id, arrival.plan
        bound = log.bind(
            event_id=alarm.event_id,
            instance=instance,
            alarm_type=alarm.alarm_type,
            attempt=alarm.attempts + 1,
            replayed=alarm.replayed,
        )
        job = Job(alarm, instance, record.incident_id, bound, new=record.new)
        then = await self._first_step(unit, job, record, now)
        if not record.new:
            return then
        return partial(_incident_changed, bound, record, incident.key, incident.reason, then)

    async def _first_step(self, unit: Unit, job: Job, record: EventRecord, now: float) -> Then:
        alarm = job.alarm
        if record.awaiting_plan is not None and job.instance_id is not None and not alarm.replayed:
            # Accepted by CloudAMQP, but its confirmation check may have been lost with the
            # connection that delivered this alarm: schedule one (a second one is harmless).
            return partial(self._reschedule, job, job.instance_id, record.awaiting_plan)
        if record.approval_deadline is not None:
            # (Even for a replay: deciding afresh would only meet its own waiting claim.)
            # Its approval's periodic check may have been lost with the delivery: send one
            # (a second one is harmless: only one look carries the upgrade out).
            check = ApprovalCheck(alarm.event_id, record.approval_deadline)
            return partial(self._awaiting_again, job, check)
        if record.final_status is not None and not alarm.replayed:
            return partial(already_processed, job, f"its action is already {record.final_status}")
        state = DecisionState(duplicate=await unit.duplicate(alarm))
        decision = decide(alarm, state, self.settings, now, self.policy)
        if isinstance(decision, Upgrade):
            # Only an alarm that would upgrade pays for the look at pauses.
            pauses = await unit.pauses_for(decision.instance_id, now)
            if pauses:
                state = replace(state, pause=effective_pause(pauses, decision.instance_id, now))
                decision = decide(alarm, state, self.settings, now, self.policy)
        if isinstance(decision, Upgrade):
            changing = await unit.reconfiguring(decision.instance_id)
            if changing is not None:
                detail = f"CloudAMQP is still applying the change to {changing}"
                decision = Skip(SkipReason.RECONFIGURING, detail)
        if isinstance(decision, Skip):
            return await self._skip(unit, job, decision, now)
        job.instance_id, job.plan = decision.instance_id, decision.plan
        return await self._claim(unit, job, decision, now)

    async def _claim(self, unit: Unit, job: Job, upgrade: Upgrade, now: float) -> Then:
        dry_run = self.dry_run
        claim = Claim(
            self._claim_scope(upgrade.scope), f"{self.worker_id}/{job.alarm.event_id}/{new_id()[:8]}"
        )
        result = await unit.try_claim(
            claim.scope,
            upgrade.instance_id,
            claim.owner,
            now,
            self.settings.claim_lease_seconds,
            upgrade.cooldown_seconds,
        )
        if result.verdict is ClaimVerdict.COOLING_DOWN:
            left = (result.row.cooldown_until if result.row else now) - now
            skip = Skip(SkipReason.COOLING_DOWN, f"upgraded recently; cooldown ends in {left:.0f}s")
            return await self._skip(unit, job, skip, now)
        if result.verdict is ClaimVerdict.AWAITING_APPROVAL:
            until = iso(result.row.lease_until) if result.row else "?"
            skip = Skip(SkipReason.AWAITING_APPROVAL, f"an upgrade of it awaits approval (until {until})")
            return await self._skip(unit, job, skip, now)
        if result.verdict is not ClaimVerdict.GRANTED:
            lease_left = (result.row.lease_until - now) if result.row else 0.0
            return partial(self._deferred, job, claim.scope, lease_left, result.verdict)
        if dry_run:
            record = job.action(ActionStatus.DRY_RUN, now, detail=upgrade.reason)
            if not await unit.finish_claim(claim.scope, claim.owner, succeeded=True, record=record):
                return partial(already_processed, job)
            return partial(self._dry_run, job, upgrade)
        if upgrade.approve:
            return await self._request_approval(unit, job, upgrade, claim, now)
        record = job.action(ActionStatus.IN_PROGRESS, now, attempts=job.alarm.attempts + 1)
        if job.new:  # no action row yet: written with the run's skips
            unit.queue_action(record)
        else:
            await unit.write_action(record)
        return UpgradeCall(self, job, upgrade, claim).run

    async def _request_approval(
        self, unit: Unit, job: Job, upgrade: Upgrade, claim: Claim, now: float
    ) -> Then:
        """Hold the claim for a person's answer (until the rule's ``approve_timeout``) and say
        what the upgrade would do; a delayed check message follows it (never a held delivery)."""
        deadline = now + upgrade.approve_timeout
        action_id = job.alarm.event_id
        await unit.request_approval(
            ApprovalRequest(
                action_id,
                claim.scope,
                claim.owner,
                upgrade.instance_id,
                upgrade.plan,
                upgrade.reason,
                upgrade.rule,
                upgrade.cooldown_seconds,
                now,
                deadline,
            )
        )
        detail = (
            f"{upgrade.reason}; awaits approval until {iso(deadline)} (POST /actions/{action_id}/approve)"
        )
        await unit.write_action(job.action(ActionStatus.AWAITING_APPROVAL, now, detail=detail))
        await unit.audit(
            AuditEntry(
                f"approval.requested:{claim.owner}",
                now,
                AUTOPILOT,
                "automatic",
                "approval.requested",
                upgrade.instance_id,
                {
                    "action_id": action_id,
                    "plan": upgrade.plan,
                    "rule": upgrade.rule,
                    "deadline": iso(deadline),
                },
            )
        )
        return partial(self._awaiting_approval, job, upgrade, ApprovalCheck(action_id, deadline))

    async def _skip(self, unit: Unit, job: Job, skip: Skip, now: float) -> Then:
        record = job.action(ActionStatus.SKIPPED, now, reason=skip.reason.value, detail=skip.detail)
        if job.new:  # no action row yet: written with the run's other skips
            return partial(_skipped_if_written, job, skip, unit.queue_action(record))
        if not await unit.write_action(record):
            return partial(already_processed, job)
        return partial(skipped, job, skip)

    # --- what follows the first step's commit ---------------------------------------------

    async def _deferred(self, job: Job, scope: str, lease_left: float, verdict: ClaimVerdict) -> Outcome:
        defer = self.retries.defer(lease_left, "another worker holds the upgrade claim")
        job.log.info(
            "upgrade.deferred",
            scope=scope,
            lease_left_s=round(lease_left, 1),
            delay_s=defer.delay,
            # The holder's lease had run out: it now has one more to report (shared.claims).
            stale_claim=verdict is ClaimVerdict.NOTICED,
        )
        return defer

    async def _awaiting_approval(self, job: Job, upgrade: Upgrade, check: ApprovalCheck) -> Outcome:
        job.log.info(
            "upgrade.awaiting_approval", plan=upgrade.plan, rule=upgrade.rule, until=iso(check.deadline)
        )
        metrics.MESSAGES.labels("awaiting_approval").inc()
        return self._look_again(check, self.clock())

    async def _awaiting_again(self, job: Job, check: ApprovalCheck) -> Outcome:
        job.log.info("upgrade.approval_check_rescheduled", until=iso(check.deadline))
        return self._look_again(check, self.clock())

    def _look_again(self, check: ApprovalCheck, now: float) -> Follow:
        """The next periodic look at an approval: about a minute, never past its deadline."""
        wait = min(self.retries.check_interval, max(check.deadline - now, 0.0))
        return Follow(replace(check, checks=check.checks + 1), defer_delay(self.retries.delays, wait))

    async def _dry_run(self, job: Job, upgrade: Upgrade) -> Outcome:
        job.log.info("upgrade.dry_run", plan=upgrade.plan, reason=upgrade.reason)
        metrics.MESSAGES.labels("dry_run").inc()
        return Ack()

    async def _reschedule(self, job: Job, instance_id: str, plan: str) -> Outcome:
        job.log.info("upgrade.check_rescheduled", plan=plan)
        return self.follow(job.alarm.event_id, instance_id, plan)

    def follow(self, action_id: str, instance_id: str, plan: str, *, accepted: bool = True) -> Follow:
        """The first look at a plan change CloudAMQP accepted (just now, where ``accepted``),
        one poll interval from now."""
        now = self.clock()
        deadline = now + self.settings.upgrade_confirm_timeout_seconds
        check = Check(action_id, instance_id, plan, deadline, accepted_at=now if accepted else None)
        return Follow(check, self.settings.upgrade_poll_seconds)

    # --- follow-up checks ---------------------------------------------------------------------

    async def follow_up(self, check: AnyCheck) -> Outcome:
        """A check message: an accepted upgrade's plan, or an approval's answer."""
        if isinstance(check, ApprovalCheck):
            return await self.approval_check(check)
        return await self.check(check)

    async def approval_check(self, check: ApprovalCheck) -> Outcome:
        """Close an approval whose window passed, look again at one still awaiting, or carry
        out an approved upgrade — under the same claim, pause, retry and crash rules as any
        upgrade: a retryable failure comes back through a delay queue, a worker that dies
        mid-call leaves a claim that expires."""
        now = self.clock()
        bound = log.bind(action_id=check.action_id)
        async with self.store.unit() as unit:
            row = await unit.approval(check.action_id)
            if row is None or row["scope"] is None:
                then: Then = partial(_say_settled, bound, "approval.unknown", None)
            elif row["status"] == ActionStatus.AWAITING_APPROVAL:
                then = await self._awaiting(unit, row, check, now, bound)
            elif row["status"] in _CARRIED_OUT and row["decided_at"] is not None:
                then = await self._carry_out(unit, _approved_job(row, bound), row, now)
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
        return self._look_again(check, now)

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
        claim = Claim(row["scope"], f"{self.worker_id}/{job.alarm.event_id}/{new_id()[:8]}")
        lease = self.settings.claim_lease_seconds
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
                return partial(self._deferred, job, claim.scope, lease_left, result.verdict)
            await unit.write_action(
                job.action(ActionStatus.IN_PROGRESS, now, attempts=job.alarm.attempts + 1)
            )
        job.log.info("upgrade.approved", by=row["decided_by"], plan=upgrade.plan)
        return UpgradeCall(self, job, upgrade, claim, approved_by=row["decided_by"]).run

    async def _approved_refusal(
        self, unit: Unit, job: Job, row: Row, now: float
    ) -> tuple[ActionStatus, Skip] | None:
        instance = str(row["instance_id"])
        if instance not in self.settings.managed:
            return ActionStatus.SKIPPED, Skip(
                SkipReason.NOT_MANAGED, f"instance {instance} is not in CLOUDAMQP_INSTANCE_ID"
            )
        if not any(rule.name == row["rule"] for rule in self.policy.rules):
            return ActionStatus.SKIPPED, Skip(
                SkipReason.NO_RULE, f"rule {row['rule']!r} is no longer in the policy"
            )
        pause = effective_pause(await unit.pauses_for(instance, now), instance, now)
        if pause is not None:
            return ActionStatus.SKIPPED, Skip(SkipReason.PAUSED, f"approved, but {pause.describe()}")
        if self.dry_run:
            return ActionStatus.DRY_RUN, Skip(
                SkipReason.NO_ACTION, "approved, but this worker runs in dry run"
            )
        return None

    def _approved_upgrade(self, row: Row) -> Upgrade:
        """The upgrade that was approved, with its rule's ladder and ceiling as they are now."""
        rule = next(r for r in self.policy.rules if r.name == row["rule"])
        return Upgrade(
            instance_id=row["instance_id"],
            plan=row["plan"],
            reason=row["reason"],
            scope=row["scope"],
            cooldown_seconds=float(row["cooldown_seconds"]),
            rule=row["rule"],
            ladder=rule.ladder,
            max_plan=rule.max_plan,
            condition=rule.condition(self.settings),
        )

    async def check(self, check: Check) -> Outcome:
        """Follow a plan change CloudAMQP accepted: ``succeeded`` once the instance is ready
        on the new plan with every node configured (with how long that took), else look again
        one poll later, until the deadline records ``unconfirmed``. Where the instance cannot
        be read at all (the blog's world), CloudAMQP's 200 stands, said to be unconfirmed."""
        assert self.client is not None
        bound = log.bind(action_id=check.action_id, instance=check.instance_id, plan=check.plan)
        state: InstanceState | None
        try:
            state = await self.client.readable(self.directory.api_id(check.instance_id), nodes=True)
            readable = state is not None
        except (RetryableError, PermanentError) as exc:
            bound.warning("upgrade.check_failed", error=str(exc))
            state, readable = None, True
        now = self.clock()
        if not readable:
            detail = (
                f"CloudAMQP accepted the change to {check.plan}; not confirmed: the instance cannot be read"
            )
            return await self._confirmed(check, bound, detail, None)
        if state is not None and state.settled and plan_shows(check.plan, state.plan):
            took = now - check.accepted_at if check.accepted_at is not None else None
            detail = f"instance is now on {state.plan}" + (f"; reconfigured in {took:.0f}s" if took else "")
            return await self._confirmed(check, bound, detail, took)
        if now >= check.deadline:
            seen = f"{state.plan}, ready: {state.ready}" if state is not None else "unknown"
            detail = f"plan {check.plan} did not show before the deadline (last seen: {seen})"
            if not await self.store.confirm_action(check.action_id, ActionStatus.UNCONFIRMED, detail, now):
                return _say_confirmed(bound)
            bound.error("upgrade.unconfirmed", detail=detail)
            metrics.MESSAGES.labels("upgrade_unconfirmed").inc()
            return Ack()
        bound.info(
            "upgrade.waiting",
            current=state.plan if state else None,
            ready=state.ready if state else None,
            checks=check.checks + 1,
        )
        await watch.checked(self.store.db, check.action_id, now)
        return Follow(replace(check, checks=check.checks + 1), self.settings.upgrade_poll_seconds)

    async def _confirmed(
        self, check: Check, bound: structlog.typing.FilteringBoundLogger, detail: str, took: float | None
    ) -> Outcome:
        now = self.clock()
        if not await self.store.confirm_action(check.action_id, ActionStatus.SUCCEEDED, detail, now, took):
            return _say_confirmed(bound)
        took_s = round(took, 1) if took is not None else None
        bound.info("upgrade.succeeded", checks=check.checks + 1, reconfigure_seconds=took_s, detail=detail)
        metrics.MESSAGES.labels("upgrade_confirmed").inc()
        return Ack()


def _say_confirmed(bound: structlog.typing.FilteringBoundLogger) -> Outcome:
    """A second chain of checks (one the confirmation sweep sent, or a reschedule) found the
    upgrade already closed by the other: nothing more to do."""
    bound.info("upgrade.check_settled")
    return Ack()


# The statuses of an approved upgrade that a look carries on: approved (not started yet),
# retrying (a retryable failure released its claim), in progress (its worker may have died).
_CARRIED_OUT = frozenset({ActionStatus.APPROVED, ActionStatus.RETRYING, ActionStatus.IN_PROGRESS})


def _approved_job(row: Row, bound: structlog.typing.FilteringBoundLogger) -> Job:
    """The alarm that asked for the approval, as recorded, with the attempts its action made."""
    body = json.loads(row["body"]) if isinstance(row["body"], str) else {}
    alarm = Alarm(
        row["action_id"], float(row["received_at"] or 0.0), body, row["event_key"] or "", row["attempts"]
    )
    return Job(
        alarm, row["instance_id"], row["incident_id"], bound.bind(instance=row["instance_id"]), row["plan"]
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


async def _incident_changed(
    bound: structlog.typing.FilteringBoundLogger,
    record: EventRecord,
    key: str | None,
    reason: str | None,
    then: Then,
) -> Outcome:
    """Say the incident change that committed, then go on with the alarm's next step."""
    bound.info(f"incident.{record.incident_change}", incident_id=record.incident_id, key=key, reason=reason)
    return await then()


async def skipped(job: Job, skip: Skip) -> Outcome:
    job.log.info("upgrade.skipped", reason=skip.reason.value, detail=skip.detail)
    metrics.MESSAGES.labels(skip.reason.value).inc()
    return Ack()


def _lock_order(arrival: Arrival) -> tuple[str, str]:
    return arrival.instance_id or "", arrival.plan.key or ""


async def _skipped_if_written(job: Job, skip: Skip, queued: QueuedAction) -> Outcome:
    return await (skipped(job, skip) if queued.written else already_processed(job))


async def already_processed(job: Job, detail: str = _FIRST_DELIVERY_WON) -> Outcome:
    job.log.info("alarm.already_processed", detail=detail)
    metrics.MESSAGES.labels("already_processed").inc()
    return Ack()


class UpgradeCall:
    """An upgrade whose claim this worker holds: read the plan where needed, call the API,
    record the outcome, and release or complete the claim."""

    def __init__(
        self,
        processor: Processor,
        job: Job,
        upgrade: Upgrade,
        claim: Claim,
        *,
        approved_by: str | None = None,
    ):
        assert processor.client is not None
        self.approved_by = approved_by
        self.processor = processor
        self.client = processor.client
        self.settings = processor.settings
        self.job = job
        self.upgrade = upgrade
        self.claim = claim
        self.attempts = job.alarm.attempts + 1
        self.unreadable = False  # the API showed no instance to read (the blog's world)

    async def run(self) -> Outcome:
        async with self._renewing():
            return await self._call()

    async def _call(self) -> Outcome:
        job, upgrade = self.job, self.upgrade

        async def before_request() -> None:
            job.log.info("upgrade.requested", plan=job.plan, rule=upgrade.rule, api_id=self.api_id)

        cleared = await self._verify()
        if cleared is not None:
            return await self._skip_after_read(cleared)
        try:
            await self._listed()
            plan = await self._target_plan()
            if isinstance(plan, Skip):
                return await self._skip_after_read(plan)
            job.plan = plan
            await self.client.upgrade(self.api_id, plan, upgrade.reason, before_request)
        except BusyError as exc:
            return await self._busy(exc)
        except RetryableError as exc:
            return await self._retryable(exc)
        except PermanentError as exc:
            return await self._park(str(exc), PERMANENT_ERROR)
        metrics.MESSAGES.labels("upgraded").inc()
        metrics.LAST_UPGRADE.labels(upgrade.instance_id).set(self.processor.clock())
        job.log.info("upgrade.accepted", plan=plan, attempts=self.attempts, api=self.client.api_in_use)
        if self.unreadable:
            # Nothing to follow: CloudAMQP's 200 stands, and the action says it is unconfirmed.
            job.log.info("upgrade.succeeded", plan=plan, attempts=self.attempts, confirmed=False)
            detail = f"{upgrade.reason}; not confirmed: the API shows no instance to read"
            await self._record_call(ActionStatus.SUCCEEDED, detail=self._noted(detail))
            return Ack()
        await self._record_call(
            ActionStatus.IN_PROGRESS,
            reason=RECONFIGURING,
            detail=self._noted(
                f"CloudAMQP accepted the change to {plan}; waiting for the instance to be ready"
            ),
        )
        return self.processor.follow(job.alarm.event_id, upgrade.instance_id, plan)

    async def _listed(self) -> None:
        """CloudAMQP's instance list, read (again) if its last read failed for a reason that
        may pass: until it is read, the configured name is not known to be callable."""
        if self.processor.listing_error is not None:
            await self.processor.resolve_instances(force=True)
            if self.processor.listing_error is not None:
                raise self.processor.listing_error

    @property
    def api_id(self) -> str:
        """The instance's id in the CloudAMQP API (its integer id, where the list gave it)."""
        return self.processor.directory.api_id(self.upgrade.instance_id)

    async def _busy(self, exc: BusyError) -> Outcome:
        """CloudAMQP is configuring the instance: release the claim and look again one poll
        later without spending an attempt, until ``UPGRADE_CONFIRM_TIMEOUT_SECONDS`` after
        the first such answer; then park. A look at an approval counts it as a retry (its
        check message carries no first-busy time)."""
        alarm, now = self.job.alarm, self.processor.clock()
        if self.approved_by is not None:
            return await self._retryable(exc)
        since = alarm.busy_since if alarm.busy_since is not None else now
        limit = self.settings.upgrade_confirm_timeout_seconds
        if now - since >= limit:
            return await self._park(f"{exc} (busy for {now - since:.0f}s, over {limit:g}s)", BUSY_STATUS)
        self.job.log.info("upgrade.busy", error=str(exc), busy_s=round(now - since, 1))
        await self._finish(ActionStatus.RETRYING, succeeded=False, reason=BUSY_STATUS, detail=str(exc))
        return Defer(self.settings.upgrade_poll_seconds, str(exc), busy_since=since)

    async def _verify(self) -> Skip | None:
        """Ask the instance's own nodes whether the alarm's condition still holds: a skip
        (``condition_cleared``) when no node shows it any more. A management API that cannot
        be read never holds the upgrade up: it goes ahead, recorded as unverified."""
        condition, api = self.upgrade.condition, self.processor.management
        instance = self.upgrade.instance_id
        if condition is None or api is None or not api.covers(instance):
            return None
        readings = await read_nodes(api, instance)
        if isinstance(readings, str):
            metrics.BROKER_CHECKS.labels("unverified").inc()
            self.job.verification = {"status": "unverified", "error": readings}
            self.job.log.warning("upgrade.unverified", error=readings)
            return None
        found = assess(condition, readings)
        figures = {"value": found.value, "nodes": list(found.nodes), "checked": found.describe(condition)}
        metrics.BROKER_CHECKS.labels(
            {None: "unverified", True: "verified", False: "cleared"}[found.holds]
        ).inc()
        if found.holds is None:
            self.job.verification = {"status": "unverified", "error": found.describe(condition), **figures}
            self.job.log.warning("upgrade.unverified", error=found.describe(condition))
            return None
        if found.holds:
            self.job.verification = {"status": "verified", **figures}
            self.job.log.info("upgrade.verified", checked=found.describe(condition))
            return None
        self.job.verification = {"status": "cleared", **figures}
        detail = f"the instance's nodes no longer show it: {found.describe(condition)}"
        return Skip(SkipReason.CONDITION_CLEARED, detail)

    def _noted(self, detail: str) -> str:
        """The outcome's detail, saying so when the broker check could not verify the alarm."""
        verification = self.job.verification
        if verification is None or verification.get("status") != "unverified":
            return detail
        return f"{detail} (unverified: {verification.get('error')})"

    async def _target_plan(self) -> str | Skip:
        """Read the instance first, so that a repeat after a crash or a lost response is
        harmless and no change is asked of an instance CloudAMQP is still configuring
        (``BusyError``). The blog's world has no instance read: then the change goes ahead
        unread (a ``next`` rule, which needs the plan, is skipped)."""
        current = await self.client.readable(self.api_id)
        self.unreadable = current is None
        if current is not None and not current.ready:
            raise BusyError(f"CloudAMQP is configuring the instance (ready: false, plan {current.plan})")
        self.job.from_plan = current.plan if current is not None else None
        return resolve_plan(self.upgrade, self.job.from_plan)

    async def _retryable(self, exc: RetryableError) -> Outcome:
        retries = self.processor.retries
        if retries.exhausted(self.attempts):
            return await self._park(str(exc), RETRIES_EXHAUSTED)
        self.job.log.warning("upgrade.retrying", error=str(exc), attempts=self.attempts)
        await self._finish(ActionStatus.RETRYING, succeeded=False, detail=str(exc))
        return retries.after_failure(str(exc), self.attempts, exc.retry_after, exc.max_delay)

    async def _park(self, error: str, status: str) -> Outcome:
        self.job.log.error("upgrade.failed", error=error, status=status, attempts=self.attempts)
        await self._finish(ActionStatus.FAILED, succeeded=False, reason=status, detail=error)
        return Park(error, status, self.attempts)

    async def _skip_after_read(self, skip: Skip) -> Outcome:
        """Nothing to upgrade after all: release the claim (no cooldown) and record why."""
        self.job.log.info("upgrade.skipped", reason=skip.reason.value, detail=skip.detail)
        metrics.MESSAGES.labels(skip.reason.value).inc()
        await self._finish(
            ActionStatus.SKIPPED, succeeded=False, reason=skip.reason.value, detail=skip.detail
        )
        return Ack()

    async def _finish(self, status: ActionStatus, *, succeeded: bool, **fields: Any) -> None:
        """Complete (``succeeded``: the cooldown runs, and the upgrade goes into the audit trail
        with its cause) or release the claim, with the outcome."""
        now = self.processor.clock()
        record = self.job.action(status, now, attempts=self.attempts, **fields)
        audit = self._audit_entry(now) if succeeded else None
        written = await self.processor.finishes.finish(
            Finish(self.claim.scope, self.claim.owner, succeeded, record, audit)
        )
        if not written:
            await already_processed(self.job)

    def _audit_entry(self, now: float) -> AuditEntry:
        alarm = self.job.alarm
        return AuditEntry(
            f"upgrade:{self.claim.owner}",  # one per claim: a retried write of it keeps one
            now,
            self.approved_by or AUTOPILOT,
            "automatic",
            "upgrade",
            self.upgrade.instance_id,
            {
                "action_id": alarm.event_id,
                "plan_from": self.job.from_plan,
                "plan_to": self.job.plan,
                "rule": self.upgrade.rule,
                "approved_by": self.approved_by,
                "cause": {
                    "event_id": alarm.event_id,
                    "alarm_type": alarm.alarm_type,
                    "value": alarm.body.get("value"),
                    "triggered_at": alarm.body.get("triggered_at"),
                    "reason": self.upgrade.reason,
                },
            },
        )

    async def _record_call(self, status: ActionStatus, **fields: Any) -> None:
        """Record an upgrade CloudAMQP accepted. Only this worker knows it happened, so a store
        outage is waited out (at least as long as the claim's lease keeps others off) rather
        than turned into a retry that would forget the call and repeat it."""
        lease = self.settings.claim_lease_seconds
        retrying = AsyncRetrying(
            stop=stop_after_delay(max(lease, 300.0)),
            # Tried well within a lease: once the store is back, a worker that found the lease
            # run out gives this one a single lease to report (see ``shared.claims``).
            wait=wait_exponential(multiplier=0.2, max=min(5.0, lease / 4)),
            reraise=True,
            before_sleep=lambda state: self.job.log.warning(
                "store.write_retrying",
                error=repr(state.outcome.exception()) if state.outcome else None,
                attempt=state.attempt_number,
            ),
        )
        async for attempt in retrying:
            with attempt:
                await self._finish(status, succeeded=True, **fields)

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """Renew the claim's lease every third of it while this worker calls the API and
        records the outcome: a slow call or a slow write never lets the lease run out under
        a worker that is alive (``shared.claims`` covers a store that cannot be reached)."""
        lease, store, clock = self.settings.claim_lease_seconds, self.processor.store, self.processor.clock

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    await store.renew_claim(self.claim.scope, self.claim.owner, clock() + lease)
                except Exception as exc:
                    self.job.log.warning("claim.renew_failed", error=f"{type(exc).__name__}: {exc}")

        task = asyncio.ensure_future(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
