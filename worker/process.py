"""One alarm, start to finish: record it, update its incident, decide, claim, call, and say
how the message is to be settled (a ``worker.outcomes.Outcome``). Transport-free: it sees our
``Alarm`` and ``Check``, never a broker message.

An alarm's first step — event record, incident change, decision, claim — commits in one
transaction and hands back what to do once it has committed (``Then``): log lines say only
what was committed, and an API call starts only after its claim is in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import structlog

from shared import metrics
from shared.alarm import Alarm, iso, new_id
from shared.claims import ClaimVerdict
from shared.controls import effective_pause
from shared.envelope import AnyCheck, ApprovalCheck
from shared.errors import PermanentError, RetryableError
from shared.incidents import plan_incident
from shared.settings import Settings
from shared.store import (
    ActionStatus,
    ApprovalRequest,
    Arrival,
    AuditEntry,
    EventRecord,
    QueuedAction,
    Store,
    Unit,
    segments,
)
from worker.approvals import Approvals
from worker.cloudamqp import CloudAmqpClient
from worker.confirmation import PlanCheck, first_look
from worker.group_commit import Finishes
from worker.instances import Directory
from worker.jobs import AUTOPILOT, Claim, Job, Then, already_processed, deferred, skipped
from worker.management import ManagementApi
from worker.outcomes import (
    Ack,
    Follow,
    Outcome,
    Retries,
)
from worker.policy import (
    DecisionState,
    Policy,
    Skip,
    SkipReason,
    Upgrade,
    decide,
    target_instance,
    upgrade_scope,
)
from worker.upgrade_call import UpgradeCall

log = structlog.get_logger("worker")

# An alarm naming an instance the directory does not know re-reads CloudAMQP's list at most this often.
RESOLVE_INTERVAL = 60.0


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
        self.approvals = Approvals(self)
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
            return partial(self.approvals.rescheduled, job, check)
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
            return partial(deferred, self.retries, job, claim.scope, lease_left, result.verdict)
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
        return partial(self.approvals.requested, job, upgrade, ApprovalCheck(action_id, deadline))

    async def _skip(self, unit: Unit, job: Job, skip: Skip, now: float) -> Then:
        record = job.action(ActionStatus.SKIPPED, now, reason=skip.reason.value, detail=skip.detail)
        if job.new:  # no action row yet: written with the run's other skips
            return partial(_skipped_if_written, job, skip, unit.queue_action(record))
        if not await unit.write_action(record):
            return partial(already_processed, job)
        return partial(skipped, job, skip)

    # --- what follows the first step's commit ---------------------------------------------

    async def _dry_run(self, job: Job, upgrade: Upgrade) -> Outcome:
        job.log.info("upgrade.dry_run", plan=upgrade.plan, reason=upgrade.reason)
        metrics.MESSAGES.labels("dry_run").inc()
        return Ack()

    async def _reschedule(self, job: Job, instance_id: str, plan: str) -> Outcome:
        job.log.info("upgrade.check_rescheduled", plan=plan)
        return self.follow(job.alarm.event_id, instance_id, plan, accepted=False)

    def follow(self, action_id: str, instance_id: str, plan: str, *, accepted: bool = True) -> Follow:
        """The first look at a plan change CloudAMQP accepted (``worker.confirmation``)."""
        return first_look(self, action_id, instance_id, plan, accepted=accepted)

    # --- follow-up checks ---------------------------------------------------------------------

    async def follow_up(self, check: AnyCheck) -> Outcome:
        """A check message: an accepted upgrade's plan, or an approval's answer."""
        if isinstance(check, ApprovalCheck):
            return await self.approvals.run(check)
        return await PlanCheck(self).run(check)


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


def _lock_order(arrival: Arrival) -> tuple[str, str]:
    return arrival.instance_id or "", arrival.plan.key or ""


async def _skipped_if_written(job: Job, skip: Skip, queued: QueuedAction) -> Outcome:
    return await (skipped(job, skip) if queued.written else already_processed(job))
