"""One alarm, start to finish: record it, update its incident, decide, claim, call, and say
how the message is to be settled. Transport-free: it sees our ``Alarm``, never a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import structlog
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from shared import metrics
from shared.alarm import Alarm, new_id
from shared.claims import ClaimVerdict
from shared.errors import DecodeError, PermanentError, RetryableError
from shared.incidents import plan_incident
from shared.settings import Settings
from shared.store import AWAITING_CONFIRMATION, ActionRecord, EventRecord, Store, Unit
from worker.cloudamqp import CloudAmqpClient
from worker.plans import parse_plan
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


@dataclass(frozen=True)
class Ack:
    """Done (whatever was decided): acknowledge."""


@dataclass(frozen=True)
class Retry:
    """Try again later through a delay queue; ``attempts`` is the count after this one."""

    error: str
    attempts: int
    retry_after: float | None = None


@dataclass(frozen=True)
class Defer:
    """Another worker holds the claim: wait in a delay queue without spending an attempt."""

    delay: float
    reason: str


@dataclass(frozen=True)
class Park:
    """Give up: move to the parking lot with an explanation."""

    error: str
    status: str
    attempts: int


@dataclass(frozen=True)
class Check:
    """A follow-up on an upgrade CloudAMQP accepted: read the instance until ``plan`` shows,
    or give up at ``deadline`` (the upgrade itself runs asynchronously at CloudAMQP)."""

    action_id: str
    instance_id: str
    plan: str
    deadline: float
    checks: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Check:
        try:
            return cls(
                str(data["action_id"]),
                str(data["instance_id"]),
                str(data["plan"]),
                float(data["deadline"]),
                int(data.get("checks", 0)),
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise DecodeError(f"not an upgrade check: {exc}") from exc


@dataclass(frozen=True)
class Follow:
    """Acknowledge, and send ``check`` through a delay queue of ``delay`` seconds."""

    check: Check
    delay: float


Outcome = Ack | Retry | Defer | Park | Follow


def defer_delay(retry_delays: tuple[float, ...], wait: float) -> float:
    """The longest delay queue that does not overshoot ``wait``, else the shortest one."""
    fitting = [d for d in retry_delays if d <= wait]
    return max(fitting) if fitting else min(retry_delays)


def retry_delay(retry_delays: tuple[float, ...], attempts: int, retry_after: float | None) -> float:
    """Delay before the next attempt: the configured one for this attempt, or the shortest
    configured delay that honours ``Retry-After`` (the longest when none is long enough)."""
    base = retry_delays[min(max(attempts, 1), len(retry_delays)) - 1]
    if retry_after is None or retry_after <= base:
        return base
    longer = [d for d in retry_delays if d >= retry_after]
    return min(longer) if longer else max(retry_delays)


def _already_processed(job: Job, detail: str = "another delivery of this event decided first") -> None:
    job.log.info("alarm.already_processed", detail=detail)
    metrics.MESSAGES.labels("already_processed").inc()


@dataclass
class Job:
    """One alarm being processed: what every record and log line of it shares."""

    alarm: Alarm
    instance_id: str | None
    incident_id: str | None
    log: structlog.typing.FilteringBoundLogger
    plan: str | None = None


@dataclass(frozen=True)
class _Granted:
    """The claim is ours and the upgrade recorded as in progress: call the API."""

    upgrade: Upgrade
    scope: str
    owner: str


@dataclass(frozen=True)
class _Skipped:
    skip: Skip


@dataclass(frozen=True)
class _Held:
    """Another worker holds the claim (``noticed``: its lease had run out, and it now has one
    more lease to report before the claim can be taken over)."""

    scope: str
    lease_left: float
    noticed: bool = False


@dataclass(frozen=True)
class _DryRun:
    upgrade: Upgrade


@dataclass(frozen=True)
class _Reschedule:
    """An accepted upgrade whose confirmation check is to be scheduled again."""

    instance_id: str
    plan: str


@dataclass(frozen=True)
class _Decided:
    """Another delivery of this event got there first."""

    detail: str = "another delivery of this event decided first"


# What the first transaction of an alarm did.
_Step = _Granted | _Skipped | _Held | _DryRun | _Reschedule | _Decided


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
        # Recording the event, deciding, claiming and the decision's record commit together:
        # one transaction for most alarms, and logs only say what was committed.
        async with self.store.unit() as unit:
            record = await unit.record_event(alarm, instance, incident, now)
            job = Job(alarm, instance, record.incident_id, bound)
            step = await self._first_step(unit, job, record, now)
        if record.new:
            bound.info(
                f"incident.{record.incident_change}",
                incident_id=record.incident_id,
                key=incident.key,
                reason=incident.reason,
            )
        return await self._next_step(job, step)

    async def _first_step(self, unit: Unit, job: Job, record: EventRecord, now: float) -> _Step:
        alarm = job.alarm
        if record.awaiting_plan is not None and job.instance_id is not None and not alarm.replayed:
            # Accepted by CloudAMQP, but its confirmation check may have been lost with the
            # connection that delivered this alarm: schedule one (a second one is harmless).
            return _Reschedule(job.instance_id, record.awaiting_plan)
        if record.final_status is not None and not alarm.replayed:
            return _Decided(f"its action is already {record.final_status}")
        decision = decide(alarm, DecisionState(duplicate=record.duplicate), self.settings, now, self.policy)
        if isinstance(decision, Skip):
            return await self._skip(unit, job, decision)
        job.instance_id, job.plan = decision.instance_id, decision.plan
        return await self._claim(unit, job, decision, now)

    async def _claim(self, unit: Unit, job: Job, upgrade: Upgrade, now: float) -> _Step:
        dry_run = self.dry_run
        # Dry runs have their own claims, so that going live does not inherit a cooldown.
        scope = f"dry-run:{upgrade.scope}" if dry_run else upgrade.scope
        owner = f"{self.worker_id}/{job.alarm.event_id}/{new_id()[:8]}"
        claim = await unit.try_claim(
            scope,
            upgrade.instance_id,
            owner,
            now,
            self.settings.claim_lease_seconds,
            upgrade.cooldown_seconds,
        )
        if claim.verdict is ClaimVerdict.COOLING_DOWN:
            left = (claim.row.cooldown_until if claim.row else now) - now
            skip = Skip(SkipReason.COOLING_DOWN, f"upgraded recently; cooldown ends in {left:.0f}s")
            return await self._skip(unit, job, skip)
        if claim.verdict in (ClaimVerdict.HELD, ClaimVerdict.NOTICED):
            lease_left = (claim.row.lease_until - now) if claim.row else 0.0
            return _Held(scope, lease_left, noticed=claim.verdict is ClaimVerdict.NOTICED)
        if dry_run:
            record = self._action(job, "dry_run", detail=upgrade.reason)
            if not await unit.finish_claim(scope, owner, succeeded=True, record=record):
                return _Decided()
            return _DryRun(upgrade)
        await unit.write_action(self._action(job, "in_progress", attempts=job.alarm.attempts + 1))
        return _Granted(upgrade, scope, owner)

    async def _skip(self, unit: Unit, job: Job, skip: Skip) -> _Step:
        record = self._action(job, "skipped", reason=skip.reason.value, detail=skip.detail)
        return _Skipped(skip) if await unit.write_action(record) else _Decided()

    async def _next_step(self, job: Job, step: _Step) -> Outcome:
        """Say what the committed first step did, and go on from it."""
        if isinstance(step, _Granted):
            async with self._renewing(job, step.scope, step.owner):
                return await self._call_api(job, step.upgrade, step.scope, step.owner)
        if isinstance(step, _Skipped):
            job.log.info("upgrade.skipped", reason=step.skip.reason.value, detail=step.skip.detail)
            metrics.MESSAGES.labels(step.skip.reason.value).inc()
            return Ack()
        if isinstance(step, _Held):
            delay = defer_delay(self.settings.retry_delays, step.lease_left)
            job.log.info(
                "upgrade.deferred",
                scope=step.scope,
                lease_left_s=round(step.lease_left, 1),
                delay_s=delay,
                stale_claim=step.noticed,
            )
            return Defer(delay, "another worker holds the upgrade claim")
        if isinstance(step, _DryRun):
            job.log.info("upgrade.dry_run", plan=step.upgrade.plan, reason=step.upgrade.reason)
            metrics.MESSAGES.labels("dry_run").inc()
            return Ack()
        if isinstance(step, _Reschedule):
            job.log.info("upgrade.check_rescheduled", plan=step.plan)
            return self._follow(job.alarm.event_id, step.instance_id, step.plan)
        _already_processed(job, step.detail)
        return Ack()

    def _action(self, job: Job, status: str, **fields: Any) -> ActionRecord:
        return ActionRecord(
            job.alarm,
            status,
            self.clock(),
            job.incident_id,
            job.instance_id,
            plan=job.plan,
            attempts=fields.pop("attempts", job.alarm.attempts),
            **fields,
        )

    async def _finish(
        self, job: Job, scope: str, owner: str, succeeded: bool, status: str, **fields: Any
    ) -> None:
        written = await self.store.finish_claim(
            scope, owner, succeeded=succeeded, record=self._action(job, status, **fields)
        )
        if not written:
            _already_processed(job)

    @asynccontextmanager
    async def _renewing(self, job: Job, scope: str, owner: str) -> AsyncIterator[None]:
        """Renew the claim's lease every third of it while this worker calls the API and
        records the outcome: a slow call or a slow write never lets the lease run out under
        a worker that is alive (``shared.claims`` covers a store that cannot be reached)."""
        lease = self.settings.claim_lease_seconds

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease / 3)
                try:
                    await self.store.renew_claim(scope, owner, self.clock() + lease)
                except Exception as exc:
                    job.log.warning("claim.renew_failed", error=f"{type(exc).__name__}: {exc}")

        task = asyncio.ensure_future(renew())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def check_interval(self) -> float:
        """Seconds between plan reads while an upgrade runs at CloudAMQP (about a minute)."""
        return defer_delay(self.settings.retry_delays, 60.0)

    async def _call_api(self, job: Job, upgrade: Upgrade, scope: str, owner: str) -> Outcome:
        assert self.client is not None
        attempts = job.alarm.attempts + 1

        async def before_request() -> None:
            job.log.info("upgrade.requested", plan=job.plan, rule=upgrade.rule)

        try:
            plan = await self._target_plan(upgrade)
            if isinstance(plan, Skip):
                return await self._skip_after_read(job, scope, owner, plan, attempts)
            job.plan = plan
            await self.client.upgrade(upgrade.instance_id, plan, upgrade.reason, before_request)
        except RetryableError as exc:
            if attempts >= self.settings.max_attempts:
                return await self._park(job, scope, owner, str(exc), "retries_exhausted", attempts)
            job.log.warning("upgrade.retrying", error=str(exc), attempts=attempts)
            await self._finish(job, scope, owner, False, "retrying", detail=str(exc), attempts=attempts)
            return Retry(str(exc), attempts, exc.retry_after)
        except PermanentError as exc:
            return await self._park(job, scope, owner, str(exc), "permanent_error", attempts)
        metrics.MESSAGES.labels("upgraded").inc()
        metrics.LAST_UPGRADE.labels(upgrade.instance_id).set(self.clock())
        if self.settings.upgrade_api != "instances":
            job.log.info("upgrade.succeeded", plan=plan, attempts=attempts)
            await self._finish_after_call(
                job, scope, owner, "succeeded", detail=upgrade.reason, attempts=attempts
            )
            return Ack()
        job.log.info("upgrade.accepted", plan=plan, attempts=attempts)
        await self._finish_after_call(
            job,
            scope,
            owner,
            "in_progress",
            reason=AWAITING_CONFIRMATION,
            detail=f"CloudAMQP accepted the upgrade to {plan}; waiting for the plan to show",
            attempts=attempts,
        )
        return self._follow(job.alarm.event_id, upgrade.instance_id, plan)

    def _follow(self, action_id: str, instance_id: str, plan: str) -> Follow:
        deadline = self.clock() + self.settings.upgrade_confirm_timeout_seconds
        return Follow(Check(action_id, instance_id, plan, deadline), self.check_interval)

    async def _finish_after_call(self, job: Job, scope: str, owner: str, status: str, **fields: Any) -> None:
        """Record an upgrade CloudAMQP accepted. Only this worker knows it happened, so a store
        outage is waited out (at least as long as the claim's lease keeps others off) rather
        than turned into a retry that would forget the call and repeat it."""
        retrying = AsyncRetrying(
            stop=stop_after_delay(max(self.settings.claim_lease_seconds, 300.0)),
            # Tried well within a lease: once the store is back, a worker that found the lease
            # run out gives this one a single lease to report (see ``shared.claims``).
            wait=wait_exponential(multiplier=0.2, max=min(5.0, self.settings.claim_lease_seconds / 4)),
            reraise=True,
            before_sleep=lambda state: job.log.warning(
                "store.write_retrying",
                error=repr(state.outcome.exception()) if state.outcome else None,
                attempt=state.attempt_number,
            ),
        )
        async for attempt in retrying:
            with attempt:
                await self._finish(job, scope, owner, True, status, **fields)

    async def _target_plan(self, upgrade: Upgrade) -> str | Skip:
        """Read the current plan where possible (always in ``instances`` mode; for ``next``
        in both), so that a repeat after a crash or a lost response is harmless."""
        assert self.client is not None
        current = None
        if self.settings.upgrade_api == "instances" or needs_current_plan(upgrade):
            current = await self.client.current_plan(upgrade.instance_id)
        return resolve_plan(upgrade, current)

    async def _skip_after_read(self, job: Job, scope: str, owner: str, skip: Skip, attempts: int) -> Outcome:
        """Nothing to upgrade after all: release the claim (no cooldown) and record why."""
        job.log.info("upgrade.skipped", reason=skip.reason.value, detail=skip.detail)
        metrics.MESSAGES.labels(skip.reason.value).inc()
        await self._finish(
            job,
            scope,
            owner,
            False,
            "skipped",
            reason=skip.reason.value,
            detail=skip.detail,
            attempts=attempts,
        )
        return Ack()

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
        target, shown = parse_plan(check.plan), parse_plan(current) if current else None
        if current is not None and (current == check.plan or (target and shown and shown == target)):
            await self.store.confirm_action(
                check.action_id, "succeeded", f"instance is now on {current}", now
            )
            bound.info("upgrade.succeeded", checks=check.checks + 1)
            metrics.MESSAGES.labels("upgrade_confirmed").inc()
            return Ack()
        if now >= check.deadline:
            detail = f"plan {check.plan} did not show before the deadline (last seen: {current or 'unknown'})"
            await self.store.confirm_action(check.action_id, "unconfirmed", detail, now)
            bound.error("upgrade.unconfirmed", detail=detail)
            metrics.MESSAGES.labels("upgrade_unconfirmed").inc()
            return Ack()
        bound.info("upgrade.waiting", current=current, checks=check.checks + 1)
        return Follow(replace(check, checks=check.checks + 1), self.check_interval)

    async def _park(self, job: Job, scope: str, owner: str, error: str, status: str, attempts: int) -> Park:
        job.log.error("upgrade.failed", error=error, status=status, attempts=attempts)
        await self._finish(job, scope, owner, False, "failed", reason=status, detail=error, attempts=attempts)
        return Park(error, status, attempts)
