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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import structlog
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from shared import metrics
from shared.alarm import Alarm, new_id
from shared.claims import ClaimVerdict
from shared.envelope import Check
from shared.errors import PermanentError, RetryableError
from shared.incidents import plan_incident
from shared.settings import Settings, UpgradeApi
from shared.store import AWAITING_CONFIRMATION, ActionRecord, ActionStatus, EventRecord, Store, Unit
from worker.cloudamqp import CloudAmqpClient
from worker.outcomes import PERMANENT_ERROR, RETRIES_EXHAUSTED, Ack, Follow, Outcome, Park, Retries
from worker.plans import plan_shows
from worker.policy import (
    DecisionState,
    Policy,
    Skip,
    SkipReason,
    Upgrade,
    decide,
    needs_current_plan,
    resolve_plan,
    target_instance,
)

log = structlog.get_logger("worker")

# What to do once an alarm's first transaction has committed.
Then = Callable[[], Awaitable[Outcome]]

_FIRST_DELIVERY_WON = "another delivery of this event decided first"


@dataclass
class Job:
    """One alarm being processed: what every record and log line of it shares."""

    alarm: Alarm
    instance_id: str | None
    incident_id: str | None
    log: structlog.typing.FilteringBoundLogger
    plan: str | None = None
    from_plan: str | None = None  # the plan read before the upgrade, where it was read

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
    ):
        self.settings = settings
        self.policy = policy or Policy.default(settings)
        self.retries = Retries.from_settings(settings)
        self.store = store
        self.client = client
        self.worker_id = worker_id
        self.clock = clock

    @property
    def dry_run(self) -> bool:
        return self.client is None or self.settings.effective_dry_run

    async def process(self, alarm: Alarm) -> Outcome:
        now = self.clock()
        instance = target_instance(alarm, self.settings)
        bound = log.bind(
            event_id=alarm.event_id,
            instance=instance,
            alarm_type=alarm.alarm_type,
            attempt=alarm.attempts + 1,
            replayed=alarm.replayed,
        )
        incident = plan_incident(alarm, instance)
        async with self.store.unit() as unit:
            record = await unit.record_event(alarm, instance, incident, now)
            job = Job(alarm, instance, record.incident_id, bound)
            then = await self._first_step(unit, job, record, now)
        if record.new:
            bound.info(
                f"incident.{record.incident_change}",
                incident_id=record.incident_id,
                key=incident.key,
                reason=incident.reason,
            )
        return await then()

    async def _first_step(self, unit: Unit, job: Job, record: EventRecord, now: float) -> Then:
        alarm = job.alarm
        if record.awaiting_plan is not None and job.instance_id is not None and not alarm.replayed:
            # Accepted by CloudAMQP, but its confirmation check may have been lost with the
            # connection that delivered this alarm: schedule one (a second one is harmless).
            return partial(self._reschedule, job, job.instance_id, record.awaiting_plan)
        if record.final_status is not None and not alarm.replayed:
            return partial(already_processed, job, f"its action is already {record.final_status}")
        decision = decide(alarm, DecisionState(duplicate=record.duplicate), self.settings, now, self.policy)
        if isinstance(decision, Skip):
            return await self._skip(unit, job, decision, now)
        job.instance_id, job.plan = decision.instance_id, decision.plan
        return await self._claim(unit, job, decision, now)

    async def _claim(self, unit: Unit, job: Job, upgrade: Upgrade, now: float) -> Then:
        dry_run = self.dry_run
        # Dry runs have their own claims, so that going live does not inherit a cooldown.
        claim = Claim(
            f"dry-run:{upgrade.scope}" if dry_run else upgrade.scope,
            f"{self.worker_id}/{job.alarm.event_id}/{new_id()[:8]}",
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
        if result.verdict is not ClaimVerdict.GRANTED:
            lease_left = (result.row.lease_until - now) if result.row else 0.0
            return partial(self._deferred, job, claim.scope, lease_left, result.verdict)
        if dry_run:
            record = job.action(ActionStatus.DRY_RUN, now, detail=upgrade.reason)
            if not await unit.finish_claim(claim.scope, claim.owner, succeeded=True, record=record):
                return partial(already_processed, job)
            return partial(self._dry_run, job, upgrade)
        await unit.write_action(job.action(ActionStatus.IN_PROGRESS, now, attempts=job.alarm.attempts + 1))
        return UpgradeCall(self, job, upgrade, claim).run

    async def _skip(self, unit: Unit, job: Job, skip: Skip, now: float) -> Then:
        record = job.action(ActionStatus.SKIPPED, now, reason=skip.reason.value, detail=skip.detail)
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

    async def _dry_run(self, job: Job, upgrade: Upgrade) -> Outcome:
        job.log.info("upgrade.dry_run", plan=upgrade.plan, reason=upgrade.reason)
        metrics.MESSAGES.labels("dry_run").inc()
        return Ack()

    async def _reschedule(self, job: Job, instance_id: str, plan: str) -> Outcome:
        job.log.info("upgrade.check_rescheduled", plan=plan)
        return self.follow(job.alarm.event_id, instance_id, plan)

    def follow(self, action_id: str, instance_id: str, plan: str) -> Follow:
        """The first confirmation check of an upgrade CloudAMQP accepted."""
        deadline = self.clock() + self.settings.upgrade_confirm_timeout_seconds
        return Follow(Check(action_id, instance_id, plan, deadline), self.retries.check_interval)

    # --- confirmation checks ----------------------------------------------------------------

    async def check(self, check: Check) -> Outcome:
        """Follow an accepted upgrade: ``succeeded`` once the plan shows, else check again,
        until the deadline records ``unconfirmed``."""
        assert self.client is not None
        bound = log.bind(action_id=check.action_id, instance=check.instance_id, plan=check.plan)
        now = self.clock()
        try:
            current: str | None = await self.client.current_plan(check.instance_id)
        except (RetryableError, PermanentError) as exc:
            bound.warning("upgrade.check_failed", error=str(exc))
            current = None
        if plan_shows(check.plan, current):
            detail = f"instance is now on {current}"
            await self.store.confirm_action(check.action_id, ActionStatus.SUCCEEDED, detail, now)
            bound.info("upgrade.succeeded", checks=check.checks + 1)
            metrics.MESSAGES.labels("upgrade_confirmed").inc()
            return Ack()
        if now >= check.deadline:
            detail = f"plan {check.plan} did not show before the deadline (last seen: {current or 'unknown'})"
            await self.store.confirm_action(check.action_id, ActionStatus.UNCONFIRMED, detail, now)
            bound.error("upgrade.unconfirmed", detail=detail)
            metrics.MESSAGES.labels("upgrade_unconfirmed").inc()
            return Ack()
        bound.info("upgrade.waiting", current=current, checks=check.checks + 1)
        return Follow(replace(check, checks=check.checks + 1), self.retries.check_interval)


async def skipped(job: Job, skip: Skip) -> Outcome:
    job.log.info("upgrade.skipped", reason=skip.reason.value, detail=skip.detail)
    metrics.MESSAGES.labels(skip.reason.value).inc()
    return Ack()


async def already_processed(job: Job, detail: str = _FIRST_DELIVERY_WON) -> Outcome:
    job.log.info("alarm.already_processed", detail=detail)
    metrics.MESSAGES.labels("already_processed").inc()
    return Ack()


class UpgradeCall:
    """An upgrade whose claim this worker holds: read the plan where needed, call the API,
    record the outcome, and release or complete the claim."""

    def __init__(self, processor: Processor, job: Job, upgrade: Upgrade, claim: Claim):
        assert processor.client is not None
        self.processor = processor
        self.client = processor.client
        self.settings = processor.settings
        self.job = job
        self.upgrade = upgrade
        self.claim = claim
        self.attempts = job.alarm.attempts + 1

    async def run(self) -> Outcome:
        async with self._renewing():
            return await self._call()

    async def _call(self) -> Outcome:
        job, upgrade = self.job, self.upgrade

        async def before_request() -> None:
            job.log.info("upgrade.requested", plan=job.plan, rule=upgrade.rule)

        try:
            plan = await self._target_plan()
            if isinstance(plan, Skip):
                return await self._skip_after_read(plan)
            job.plan = plan
            await self.client.upgrade(upgrade.instance_id, plan, upgrade.reason, before_request)
        except RetryableError as exc:
            return await self._retryable(exc)
        except PermanentError as exc:
            return await self._park(str(exc), PERMANENT_ERROR)
        metrics.MESSAGES.labels("upgraded").inc()
        metrics.LAST_UPGRADE.labels(upgrade.instance_id).set(self.processor.clock())
        if self.settings.upgrade_api is not UpgradeApi.INSTANCES:
            job.log.info("upgrade.succeeded", plan=plan, attempts=self.attempts)
            await self._record_call(ActionStatus.SUCCEEDED, detail=upgrade.reason)
            return Ack()
        job.log.info("upgrade.accepted", plan=plan, attempts=self.attempts)
        await self._record_call(
            ActionStatus.IN_PROGRESS,
            reason=AWAITING_CONFIRMATION,
            detail=f"CloudAMQP accepted the upgrade to {plan}; waiting for the plan to show",
        )
        return self.processor.follow(job.alarm.event_id, upgrade.instance_id, plan)

    async def _target_plan(self) -> str | Skip:
        """Read the current plan where possible (always in ``instances`` mode; for ``next``
        in both), so that a repeat after a crash or a lost response is harmless."""
        current = None
        if self.settings.upgrade_api is UpgradeApi.INSTANCES or needs_current_plan(self.upgrade):
            current = await self.client.current_plan(self.upgrade.instance_id)
            self.job.from_plan = current
        return resolve_plan(self.upgrade, current)

    async def _retryable(self, exc: RetryableError) -> Outcome:
        retries = self.processor.retries
        if retries.exhausted(self.attempts):
            return await self._park(str(exc), RETRIES_EXHAUSTED)
        self.job.log.warning("upgrade.retrying", error=str(exc), attempts=self.attempts)
        await self._finish(ActionStatus.RETRYING, succeeded=False, detail=str(exc))
        return retries.after_failure(str(exc), self.attempts, exc.retry_after)

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
        """Complete (``succeeded``: the cooldown runs) or release the claim, with the outcome."""
        record = self.job.action(status, self.processor.clock(), attempts=self.attempts, **fields)
        written = await self.processor.store.finish_claim(
            self.claim.scope, self.claim.owner, succeeded=succeeded, record=record
        )
        if not written:
            await already_processed(self.job)

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
