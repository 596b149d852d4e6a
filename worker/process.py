"""One alarm, start to finish: record it, update its incident, decide, claim, call, and say
how the message is to be settled (a ``worker.outcomes.Outcome``). Transport-free: it sees our
``Alarm`` and ``Check``, never a broker message.

A batch of alarms' first steps — event records, incident changes, decisions, claims — is one
read of the store, a pure fold (``worker.first_step``) and one write, in one transaction; then
each alarm goes on alone (``Processor.carry_on``): log lines say only what was committed, and
an API call starts only after its claim is in the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial

import structlog

from shared import metrics
from shared.alarm import Alarm, new_id
from shared.catalogue import Catalogue
from shared.envelope import AnyCheck, ApprovalCheck
from shared.errors import PermanentError, RetryableError
from shared.flapping import FlapRule
from shared.incidents import plan_incident
from shared.policy import (
    Policy,
    Upgrade,
    target_instance,
)
from shared.pricing import INCREASE_WINDOW
from shared.settings import Settings
from shared.snapshot import Arrival
from shared.store import Store
from worker.approvals import Approvals
from worker.catalogue import PlanCatalogue
from worker.cloudamqp import CloudAmqpClient
from worker.confirmation import PlanCheck, first_look
from worker.disk_resize import upgrade_call
from worker.first_step import (
    AlreadyDone,
    ApprovalAgain,
    AwaitingApproval,
    Claimed,
    Context,
    Deferred,
    DryRun,
    FollowAgain,
    Skipped,
    Step,
    plan_batch,
)
from worker.group_commit import Askings, Finishes
from worker.instances import Directory
from worker.jobs import Claim, Job, Then, already_processed, deferred, skipped
from worker.management import ManagementApi
from worker.outcomes import (
    Ack,
    Follow,
    Outcome,
    Retries,
)

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
        plans: PlanCatalogue | None = None,
    ):
        self.settings = settings
        self.plans = plans  # CloudAMQP's plan catalogue (None: nothing is checked)
        self.management = management
        self.policy = policy or Policy.default(settings)
        self.retries = Retries.from_settings(settings)
        self.store = store
        self.client = client
        self.worker_id = worker_id
        self.clock = clock
        self.flap = FlapRule.of(settings)
        self.askings = Askings(store)  # changes about to be asked, written down together
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
        await self.note_plans(dict(self.directory.plans))
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

    async def note_plans(self, plans: dict[str, str]) -> None:
        """Remember the instances' plans as just read (what ``next`` is priced from before the
        instance is read again); a store that does not answer only costs that."""
        try:
            async with self.store.unit() as unit:
                await unit.note_plans(plans, self.clock())
        except Exception as exc:
            log.warning("instances.plans_not_kept", error=f"{type(exc).__name__}: {exc}")

    @property
    def catalogue(self) -> Catalogue | None:
        """What CloudAMQP sells, as last read (None: nothing is checked, no API key)."""
        return self.plans.current if self.plans is not None else None

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
        """The first steps of ``alarms``, in one transaction (group commit): one read of the
        store (``Unit.load``), a pure fold over it in delivery order
        (``worker.first_step.plan_batch``), one write (``Unit.apply``); then, for each alarm,
        what it does next once that has committed (``carry_on``). When the transaction fails,
        none of them took its step (the caller decides whether to try them one by one)."""
        fields = self.policy.fields
        if fields.paths:  # read through the policy file's [fields] table
            alarms = [replace(alarm, fields=fields) for alarm in alarms]
        alarms = await self._named(alarms)
        now = self.clock()
        arrivals = []
        for alarm in alarms:
            instance = target_instance(alarm, self.settings)
            arrivals.append(Arrival(alarm, instance, plan_incident(alarm, instance)))
        catalogue = self.catalogue
        context = Context(self.settings, self.policy, self.dry_run, self.worker_id, new_id, catalogue)
        scopes = {scope for a in arrivals if (scope := context.scope_of(a)) is not None}
        capped = catalogue is not None and self.settings.max_monthly_increase is not None
        async with self.store.unit() as unit:
            snapshot = await unit.load(
                arrivals,
                scopes,
                now,
                self.flap,
                plans=catalogue is not None,
                increases_since=now - INCREASE_WINDOW if capped else None,
                # A change asked and never answered holds its instance up for as long as one
                # CloudAMQP took is waited for (after that, its own alarm has long followed it);
                # one whose worker is quiet for two leases, from when its claim could be taken
                # over (``shared.claims``): then only its own alarm follows it up.
                asked_since=now - self.settings.upgrade_confirm_timeout_seconds,
                quiet_before=now - 2 * self.settings.claim_lease_seconds,
            )
            steps, writes = plan_batch(snapshot, arrivals, now, context)
            written = await unit.apply(writes, now)
        return [partial(self.carry_on, step, step.action is None or written[step.action]) for step in steps]

    async def carry_on(self, step: Step, written: bool) -> Outcome:
        """What an alarm does once its first step has committed: the one place that says
        what was decided (log lines say only what committed), counts it, and starts the
        upgrade call (only after its claim is in the store). ``written``: its action row was
        written (else another delivery of the event had the final word)."""
        alarm = step.alarm
        bound = log.bind(
            event_id=alarm.event_id,
            instance=step.arrival.instance_id,
            alarm_type=alarm.alarm_type,
            attempt=alarm.attempts + 1,
            replayed=alarm.replayed,
        )
        if step.change is not None:
            incident = step.arrival.plan
            bound.info(
                f"incident.{step.change}",
                incident_id=step.incident_id,
                key=incident.key,
                reason=incident.reason,
            )
        job = Job(
            alarm,
            step.instance_id,
            step.incident_id,
            bound,
            step.plan,
            kind=step.kind,
            extra_disk_to=step.extra_disk,
            asked=step.asked,
        )
        match step:
            case Skipped():
                return await (skipped(job, step.skip) if written else already_processed(job))
            case AlreadyDone():
                return await already_processed(job, step.detail)
            case FollowAgain():
                return await self._reschedule(
                    job, step.instance_id or "", step.awaiting_plan, step.awaiting_disk
                )
            case ApprovalAgain():
                return await self.approvals.rescheduled(job, ApprovalCheck(alarm.event_id, step.deadline))
            case Deferred():
                return await deferred(self.retries, job, step.scope, step.lease_left, step.verdict)
            case DryRun():
                return await (self._dry_run(job, step.upgrade) if written else already_processed(job))
            case AwaitingApproval():
                check = ApprovalCheck(alarm.event_id, step.deadline)
                return await self.approvals.requested(job, step.upgrade, check)
            case Claimed():
                return await upgrade_call(self, job, step.upgrade, Claim(step.scope, step.owner)).run()
        raise AssertionError(f"a step of no known kind: {step!r}")

    # --- what follows the first step's commit ---------------------------------------------

    async def _dry_run(self, job: Job, upgrade: Upgrade) -> Outcome:
        job.log.info("upgrade.dry_run", plan=job.plan, reason=upgrade.reason)
        metrics.MESSAGES.labels("dry_run").inc()
        return Ack()

    async def _reschedule(self, job: Job, instance_id: str, plan: str, disk: int | None) -> Outcome:
        job.log.info("upgrade.check_rescheduled", plan=plan, extra_disk=disk)
        return self.follow(job.alarm.event_id, instance_id, plan, accepted=False, extra_disk=disk)

    def follow(
        self,
        action_id: str,
        instance_id: str,
        plan: str,
        *,
        accepted: bool = True,
        extra_disk: int | None = None,
    ) -> Follow:
        """The first look at a plan change (or a disk resize) CloudAMQP accepted
        (``worker.confirmation``)."""
        return first_look(self, action_id, instance_id, plan, accepted=accepted, extra_disk=extra_disk)

    # --- follow-up checks ---------------------------------------------------------------------

    async def follow_up(self, check: AnyCheck) -> Outcome:
        """A check message: an accepted upgrade's plan, or an approval's answer."""
        if isinstance(check, ApprovalCheck):
            return await self.approvals.run(check)
        return await PlanCheck(self).run(check)
