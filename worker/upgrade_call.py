"""An upgrade whose cooldown claim this worker holds: ask the instance's own nodes whether the
alarm still holds, read the instance (its plan; busy while CloudAMQP configures it), ask
CloudAMQP for the plan, record the outcome, and release or complete the claim — renewing the
claim's lease all the while."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from shared import metrics
from shared.alarm import iso
from shared.errors import BusyError, PermanentError, RetryableError
from shared.policy import OVER_BUDGET_ASK, Skip, SkipReason, Upgrade, made_already, price_check, resolve_plan
from shared.pricing import INCREASE_WINDOW, PlanChange
from shared.records import AUTOPILOT, Asked, Asking, AuditEntry, DiskMark, Finish
from shared.retrying import first_then
from shared.statuses import RECONFIGURING, UNANSWERED, ActionStatus
from shared.verify import assess
from worker.jobs import Claim, Job, already_processed
from worker.management import read_nodes
from worker.outcomes import PERMANENT_ERROR, RETRIES_EXHAUSTED, Ack, Defer, Outcome, Park

if TYPE_CHECKING:
    from worker.process import Processor

BUSY_STATUS = "busy"  # the reason of an action waiting for CloudAMQP to finish configuring


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
        approved_price: float | None = None,
    ):
        assert processor.client is not None
        self.approved_by = approved_by
        self.approved_price = approved_price  # the monthly price the approval showed, if any
        self.processor = processor
        self.client = processor.client
        self.settings = processor.settings
        self.job = job
        self.upgrade = upgrade
        self.claim = claim
        self.attempts = job.alarm.attempts + 1
        self.unreadable = False  # the API showed no instance to read (the blog's world)
        self.disk_marks: tuple[DiskMark, ...] = ()  # what a disk resize learnt of the disk
        self.read_plan: str | None = None  # the instance's plan as read before the call
        self.sent = False  # this attempt sent its change to CloudAMQP
        # The change an earlier attempt asked for and never heard the answer to is in place:
        # CloudAMQP made it, and this attempt only follows it up.
        self.made_earlier = False

    async def run(self) -> Outcome:
        async with self._renewing():
            return await self._call()

    async def _call(self) -> Outcome:
        job, upgrade = self.job, self.upgrade

        async def before_request() -> None:
            self.sent = True
            job.log.info("upgrade.requested", plan=job.plan, rule=upgrade.rule, api_id=self.api_id)

        cleared = await self._verify()
        if cleared is not None:
            return await self._skip_after_read(cleared)
        try:
            await self._listed()
            plan = await self._target_plan()
            if isinstance(plan, Skip) or self.made_earlier:
                await self._note_read()
            if isinstance(plan, Skip):
                return await self._skip_after_read(plan)
            job.plan = plan
            if not self.made_earlier:
                await self._asking(Asked(self.processor.clock(), plan, job.from_plan))
                await self.client.upgrade(self.api_id, plan, upgrade.reason, before_request)
        except (RetryableError, PermanentError) as exc:
            return await self.refused(exc)
        metrics.MESSAGES.labels("upgraded").inc()
        metrics.LAST_UPGRADE.labels(upgrade.instance_id).set(self.processor.clock())
        if self.made_earlier:
            asked = self.job.asked
            assert asked is not None
            job.log.info("upgrade.found_made", plan=plan, asked_at=iso(asked.at), attempts=self.attempts)
            return await self._follow_accepted(
                f"CloudAMQP made the change to {plan} asked for at {iso(asked.at)}, whose answer never "
                "came; waiting for the instance to be ready",
                plan,
            )
        job.log.info("upgrade.accepted", plan=plan, attempts=self.attempts, api=self.client.api_in_use)
        if self.unreadable:
            # Nothing to follow: CloudAMQP's 200 stands, and the action says it is unconfirmed.
            job.log.info("upgrade.succeeded", plan=plan, attempts=self.attempts, confirmed=False)
            detail = f"{upgrade.reason}; not confirmed: the API shows no instance to read"
            await self._record_call(ActionStatus.SUCCEEDED, detail=self._noted(detail))
            return Ack()
        return await self._follow_accepted(
            f"CloudAMQP accepted the change to {plan}; waiting for the instance to be ready", plan
        )

    async def _follow_accepted(self, detail: str, plan: str) -> Outcome:
        """CloudAMQP took the change: record it (the claim completes, its cooldown runs) and
        follow it until the instance is ready on ``plan``."""
        await self._record_call(ActionStatus.IN_PROGRESS, reason=RECONFIGURING, detail=self._noted(detail))
        return self.processor.follow(self.job.alarm.event_id, self.upgrade.instance_id, plan)

    async def _asking(self, asked: Asked) -> None:
        """Write down the change about to be asked (with the plan just read), so that an
        answer that never comes — or a worker stopped while it waits — is followed up by
        reading the instance (``shared.policy.made_already``), never by asking blindly. A
        store that does not take it holds the call back: a retry asks later. The calls of
        one batch write theirs together (``Processor.askings``)."""
        await self.processor.askings.ask(
            Asking(self.job.alarm.event_id, asked, self.upgrade.instance_id, self.read_plan)
        )

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

    async def refused(self, exc: RetryableError | PermanentError) -> Outcome:
        """What CloudAMQP's refusal (``worker.cloudamqp.classify``) means for this call: busy
        waits without spending an attempt, a retryable one is retried, a permanent one parks."""
        if isinstance(exc, BusyError):
            return await self._busy(exc)
        if isinstance(exc, RetryableError):
            return await self._retryable(exc)
        return await self._park(self._maybe_made(str(exc)), PERMANENT_ERROR)

    def _uncertain(self, exc: BaseException) -> bool:
        """Has a change asked of CloudAMQP gone unanswered, so that it may have been made: this
        attempt's (no answer came), or an earlier attempt's that this one has not asked again?"""
        if self.sent:
            return isinstance(exc, RetryableError) and exc.unanswered
        return self.job.asked is not None

    def _maybe_made(self, error: str) -> str:
        if self.job.asked is not None and not self.sent:
            asked_at = iso(self.job.asked.at)
            return f"{error}; the change asked for at {asked_at} got no answer and may have been made"
        return error

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
        reason = UNANSWERED if self._uncertain(exc) else BUSY_STATUS
        await self._finish(ActionStatus.RETRYING, succeeded=False, reason=reason, detail=str(exc))
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
        self.read_plan = current.plan if current is not None else None
        if current is not None and not current.ready:
            await self._note_read()
            raise BusyError(f"CloudAMQP is configuring the instance (ready: false, plan {current.plan})")
        self.job.from_plan = self.read_plan
        asked = self.job.asked
        if asked is None or asked.plan is None:
            plan = resolve_plan(self.upgrade, self.job.from_plan)
            return plan if isinstance(plan, Skip) else await self._priced(plan)
        # An earlier attempt asked for this plan and never heard back: the same plan is asked
        # again (``next`` is not worked out afresh from a plan that change may have made),
        # unless the instance shows it made.
        self.job.from_plan = asked.from_plan or self.read_plan
        self.made_earlier = made_already(self.upgrade, asked, self.read_plan, None)
        priced = await self._priced(asked.plan)  # made: its prices, for the record (money spent)
        return asked.plan if self.made_earlier else priced

    async def _note_read(self) -> None:
        """Remember the plan just read, where no asking write (``_asking``) does."""
        if self.read_plan is not None:
            await self.processor.note_plans({self.upgrade.instance_id: self.read_plan})

    async def _priced(self, plan: str) -> str | Skip:
        """The plan priced from the plan just read, against the catalogue and the caps (the
        decision priced it from the plan last read, which may be old): a plan not sold, not
        in place or over budget is a skip, never a call. A person's approval stands for the
        price they were shown (and no more)."""
        upgrade, catalogue, settings = self.upgrade, self.processor.catalogue, self.settings
        increased = 0.0
        if catalogue is not None and settings.max_monthly_increase is not None:
            since = self.processor.clock() - INCREASE_WINDOW
            async with self.processor.store.unit() as unit:
                spent = await unit.increases_of(
                    [upgrade.instance_id], since, leaving_out=self.job.alarm.event_id
                )
            increased = spent.get(upgrade.instance_id, 0.0)
        found = price_check(
            upgrade,
            self.job.from_plan,
            plan,
            catalogue,
            settings,
            increased,
            approved_price=self.approved_price,
        )

        if isinstance(found, PlanChange):
            self.job.change = found
            return plan
        if found.change is not None:
            self.job.change, self.job.plan = found.change, found.change.to_plan
        if found.reason is SkipReason.OVER_BUDGET and (
            upgrade.approve or upgrade.over_budget == OVER_BUDGET_ASK
        ):
            # Priced from an older plan when decided; the plan just read is kept, so the next
            # alarm's decision prices it right and asks.
            return Skip(found.reason, f"{found.detail}; the next alarm asks for approval", found.change)
        return found

    async def _retryable(self, exc: RetryableError) -> Outcome:
        retries = self.processor.retries
        uncertain = self._uncertain(exc)
        if retries.exhausted(self.attempts):
            error = str(exc) + ("; the change may have been made" if uncertain and self.sent else "")
            return await self._park(self._maybe_made(error), RETRIES_EXHAUSTED)
        self.job.log.warning("upgrade.retrying", error=str(exc), attempts=self.attempts, unanswered=uncertain)
        reason = UNANSWERED if uncertain else None
        await self._finish(ActionStatus.RETRYING, succeeded=False, reason=reason, detail=str(exc))
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
            Finish(self.claim.scope, self.claim.owner, succeeded, record, audit, self.disk_marks)
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
                "price": self.job.change.as_dict() if self.job.change is not None else None,
                "rule": self.upgrade.rule,
                "approved_by": self.approved_by,
                "cause": {
                    "event_id": alarm.event_id,
                    "alarm_type": alarm.alarm_type,
                    "value": alarm.raw("value"),
                    "triggered_at": alarm.raw("triggered_at"),
                    "reason": self.upgrade.reason,
                },
            },
        )

    async def _record_call(self, status: ActionStatus, **fields: Any) -> None:
        """Record an upgrade CloudAMQP accepted. Only this worker knows it happened, so a store
        outage is waited out (at least as long as the claim's lease keeps others off) rather
        than turned into a retry that would forget the call and repeat it."""
        lease = self.settings.claim_lease_seconds

        def retrying() -> AsyncRetrying:
            return AsyncRetrying(
                stop=stop_after_delay(max(lease, 300.0)),
                # Tried well within a lease: once the store is back, a worker that found the
                # lease run out gives this one a single lease to report (see ``shared.claims``).
                wait=wait_exponential(multiplier=0.2, max=min(5.0, lease / 4)),
                reraise=True,
                before_sleep=lambda state: self.job.log.warning(
                    "store.write_retrying",
                    error=repr(state.outcome.exception()) if state.outcome else None,
                    attempt=state.attempt_number,
                ),
            )

        await first_then(lambda: self._finish(status, succeeded=True, **fields), retrying)

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
