"""A disk resize whose claim this worker holds (a ``resize_disk`` rule): the plan change's
machinery (``worker.upgrade_call.UpgradeCall``: the claim and its lease, the broker check, the
busy wait, CloudAMQP's refusals, the outcome and its audit entry, the follow-up until the nodes
are configured again), asking for disk instead of a plan.

Before asking it reads the instance and its nodes: a shared plan has no disk to resize
(``not_supported``); the nodes' ``additional_disk_size`` is the extra disk now, which the rule
grows to the next size or to its fixed one, never past ``max_extra_disk`` (``at_ceiling``);
and no resize is asked for within ``DISK_RESIZE_INTERVAL_SECONDS`` of the last one the
autopilot made or saw (``resize_interval``) — what it read goes into the instance's disk
history either way.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from shared import metrics
from shared.alarm import iso
from shared.disk import AUTOPILOT, READ, SEEN, is_shared, resize_wait
from shared.errors import BusyError, PermanentError, RetryableError
from shared.policy import Skip, SkipReason, Upgrade, made_already, resolve_disk
from shared.records import Asked, AuditEntry, DiskMark
from shared.statuses import RECONFIGURING, ActionStatus
from worker.jobs import Claim, Job
from worker.outcomes import Outcome
from worker.upgrade_call import UpgradeCall

if TYPE_CHECKING:
    from worker.process import Processor


def upgrade_call(
    processor: Processor,
    job: Job,
    upgrade: Upgrade,
    claim: Claim,
    *,
    approved_by: str | None = None,
    approved_price: float | None = None,
) -> UpgradeCall:
    """The call a claimed remedy makes: a plan change (an approved one no dearer than the price
    its approval showed), or a disk resize."""
    if upgrade.disk is not None:
        return DiskResize(processor, job, upgrade, claim, approved_by=approved_by)
    return UpgradeCall(processor, job, upgrade, claim, approved_by=approved_by, approved_price=approved_price)


class DiskResize(UpgradeCall):
    """A ``resize_disk`` remedy: ``PUT /api/instances/{id}/disk``, then followed like a plan
    change until every node has the new extra disk and is configured again."""

    def __init__(
        self,
        processor: Processor,
        job: Job,
        upgrade: Upgrade,
        claim: Claim,
        *,
        approved_by: str | None = None,
    ):
        assert upgrade.disk is not None
        super().__init__(processor, job, upgrade, claim, approved_by=approved_by)
        self.target = upgrade.disk
        job.kind, job.plan = upgrade.kind, None

    async def _call(self) -> Outcome:
        job, upgrade = self.job, self.upgrade
        downtime = self.target.allow_downtime

        async def before_request() -> None:
            self.sent = True
            job.log.info(
                "resize.requested",
                extra_disk_from=job.extra_disk_from,
                extra_disk_to=job.extra_disk_to,
                allow_downtime=downtime,
                rule=upgrade.rule,
                api_id=self.api_id,
            )

        cleared = await self._verify()
        if cleared is not None:
            return await self._skip_after_read(cleared)
        try:
            await self._listed()
            size = await self._target_size()
            if isinstance(size, Skip) or self.made_earlier:
                await self._note_read()
            if isinstance(size, Skip):
                return await self._skip_after_read(size)
            if not self.made_earlier:
                now = self.processor.clock()
                await self._asking(Asked(now, None, job.from_plan, job.extra_disk_from, size))
                await self.client.resize_disk(self.api_id, size, downtime, before_request)
        except (RetryableError, PermanentError) as exc:
            return await self.refused(exc)
        metrics.MESSAGES.labels("disk_resized").inc()
        asked = self.job.asked
        if self.made_earlier and asked is not None:
            job.log.info(
                "resize.found_made", extra_disk_to=size, asked_at=iso(asked.at), attempts=self.attempts
            )
        else:
            job.log.info(
                "resize.accepted",
                extra_disk_from=job.extra_disk_from,
                extra_disk_to=size,
                attempts=self.attempts,
            )
        now = self.processor.clock()
        self.disk_marks = (
            DiskMark(
                f"{AUTOPILOT}:{self.claim.owner}",
                upgrade.instance_id,
                now,
                AUTOPILOT,
                job.extra_disk_from,
                size,
                job.alarm.event_id,
            ),
        )
        said = (
            f"CloudAMQP made the resize to {size} GB of extra disk asked for at {iso(asked.at)}, whose "
            "answer never came"
            if self.made_earlier and asked is not None
            else f"CloudAMQP accepted the resize from {job.extra_disk_from} GB to {size} GB of extra disk"
        )
        await self._record_call(
            ActionStatus.IN_PROGRESS,
            reason=RECONFIGURING,
            detail=self._noted(f"{said}; waiting for the nodes to be configured"),
        )
        return self.processor.follow(
            job.alarm.event_id, upgrade.instance_id, job.from_plan or "", extra_disk=size
        )

    async def _target_size(self) -> int | Skip:
        """Read the instance and its nodes (a repeat after a crash finds the resize under way,
        or done), then what to ask for: the rule's size from the nodes' extra disk, once
        CloudAMQP's interval since the last resize made or seen has passed."""
        current = await self.client.readable(self.api_id, nodes=True)
        if current is None:
            return Skip(
                SkipReason.DISK_UNKNOWN,
                "the documented API shows no instance to read, and a disk resize goes through it",
            )
        self.job.from_plan = self.read_plan = current.plan
        if is_shared(current.plan):
            return Skip(
                SkipReason.NOT_SUPPORTED,
                f"{current.plan} is a shared plan: CloudAMQP resizes the disk of dedicated plans only",
            )
        if not current.settled:
            raise BusyError(
                f"CloudAMQP is configuring the instance (ready: {current.ready}, "
                f"nodes configured: {current.configured})"
            )
        if current.extra_disk is None:
            return Skip(SkipReason.DISK_UNKNOWN, "the instance's nodes do not say their additional_disk_size")
        extra = self.job.extra_disk_from = current.extra_disk
        asked = self.job.asked
        if asked is not None and asked.extra_disk_to is not None:
            # An earlier attempt asked for this size and never heard back: the same size again
            # (``next`` not worked out afresh from a disk it may have grown), unless the nodes
            # show it made. CloudAMQP's interval does not count that resize against itself.
            self.job.extra_disk_from = asked.extra_disk_from if asked.extra_disk_from is not None else extra
            self.job.extra_disk_to = asked.extra_disk_to
            self.made_earlier = made_already(self.upgrade, asked, current.plan, extra)
            return asked.extra_disk_to
        instance, now = self.upgrade.instance_id, self.processor.clock()
        known = await self.processor.store.disk_known(instance)
        if known is None:  # the first read of this instance's disk: what it was
            self.disk_marks = (DiskMark(f"{READ}:{instance}", instance, now, READ, extra, extra),)
        elif known.extra_disk != extra:  # changed without the autopilot, by now at the latest
            mark = DiskMark(f"{SEEN}:{self.claim.owner}", instance, now, SEEN, known.extra_disk, extra)
            self.disk_marks = (mark,)
        size = resolve_disk(self.upgrade, extra)
        if isinstance(size, Skip):
            return size
        wait = resize_wait(known, extra, now, self.settings.disk_resize_interval_seconds)
        if wait is not None:
            return Skip(SkipReason.RESIZE_INTERVAL, wait)
        self.job.extra_disk_to = size
        return size

    def _audit_entry(self, now: float) -> AuditEntry:
        """The resize in the audit trail (``resize_disk``, from → to GB), with its cause."""
        entry = super()._audit_entry(now)
        detail = {k: v for k, v in entry.detail.items() if k not in ("plan_from", "plan_to")}
        detail.update(
            extra_disk_from=self.job.extra_disk_from,
            extra_disk_to=self.job.extra_disk_to,
            allow_downtime=self.target.allow_downtime,
            plan=self.job.from_plan,
        )
        return replace(entry, audit_id=f"resize_disk:{self.claim.owner}", act="resize_disk", detail=detail)
