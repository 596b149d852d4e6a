"""Following a plan change (or a disk resize) CloudAMQP accepted: a check message comes back
every ``UPGRADE_POLL_SECONDS`` and reads the instance until it is ready on the new plan — or its
nodes, configured again, have the new extra disk — (``succeeded``, with how long it took) or
the deadline passes (``unconfirmed``)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import structlog

from shared import metrics, watch
from shared.envelope import Check
from shared.errors import PermanentError, RetryableError
from shared.plans import plan_shows
from shared.statuses import ActionStatus
from worker.cloudamqp import InstanceState
from worker.outcomes import Ack, Follow, Outcome

if TYPE_CHECKING:
    from worker.process import Processor

log = structlog.get_logger("worker")


def first_look(
    processor: Processor,
    action_id: str,
    instance_id: str,
    plan: str,
    *,
    accepted: bool = True,
    extra_disk: int | None = None,
) -> Follow:
    """The first look at a plan change (a disk resize, with ``extra_disk``) CloudAMQP accepted
    (just now, where ``accepted``), one poll interval from now."""
    now = processor.clock()
    deadline = now + processor.settings.upgrade_confirm_timeout_seconds
    accepted_at = now if accepted else None
    check = Check(action_id, instance_id, plan, deadline, accepted_at=accepted_at, extra_disk=extra_disk)
    return Follow(check, processor.settings.upgrade_poll_seconds)


def shows(check: Check, state: InstanceState) -> bool:
    """Does the instance show what the change asked for: its plan, or its nodes' extra disk?"""
    if check.extra_disk is not None:
        return state.extra_disk == check.extra_disk
    return plan_shows(check.plan, state.plan)


def done_detail(check: Check, state: InstanceState) -> str:
    if check.extra_disk is not None:
        return f"every node now has {state.extra_disk} GB of extra disk"
    return f"instance is now on {state.plan}"


def late_detail(check: Check, state: InstanceState | None) -> str:
    if check.extra_disk is not None:
        seen = f"{state.extra_disk} GB, configured: {state.configured}" if state is not None else "unknown"
        return f"{check.extra_disk} GB of extra disk did not show before the deadline (last seen: {seen})"
    seen = f"{state.plan}, ready: {state.ready}" if state is not None else "unknown"
    return f"plan {check.plan} did not show before the deadline (last seen: {seen})"


class PlanCheck:
    """One look at a plan change under way (a ``Check`` message)."""

    def __init__(self, processor: Processor):
        self.processor = processor

    async def run(self, check: Check) -> Outcome:
        """Follow a plan change CloudAMQP accepted: ``succeeded`` once the instance is ready
        on the new plan with every node configured (with how long that took), else look again
        one poll later, until the deadline records ``unconfirmed``. Where the instance cannot
        be read at all (the blog's world), CloudAMQP's 200 stands, said to be unconfirmed."""
        assert self.processor.client is not None
        bound = log.bind(action_id=check.action_id, instance=check.instance_id, plan=check.plan)
        if check.extra_disk is not None:
            bound = bound.bind(extra_disk=check.extra_disk)
        state: InstanceState | None
        try:
            state = await self.processor.client.readable(
                self.processor.directory.api_id(check.instance_id), nodes=True
            )
            readable = state is not None
        except (RetryableError, PermanentError) as exc:
            bound.warning("upgrade.check_failed", error=str(exc))
            state, readable = None, True
        now = self.processor.clock()
        if not readable:
            detail = (
                f"CloudAMQP accepted the change to {check.plan}; not confirmed: the instance cannot be read"
            )
            return await self._confirmed(check, bound, detail, None)
        if state is not None and state.settled and shows(check, state):
            took = now - check.accepted_at if check.accepted_at is not None else None
            detail = done_detail(check, state) + (f"; reconfigured in {took:.0f}s" if took else "")
            if check.extra_disk is None:  # a plan change: the plan now known
                await self.processor.note_plans({check.instance_id: state.plan})
            return await self._confirmed(check, bound, detail, took)
        if now >= check.deadline:
            detail = late_detail(check, state)
            if not await self.processor.store.confirm_action(
                check.action_id, ActionStatus.UNCONFIRMED, detail, now
            ):
                return _say_confirmed(bound)
            bound.error("upgrade.unconfirmed", detail=detail)
            metrics.MESSAGES.labels("upgrade_unconfirmed").inc()
            return Ack()
        bound.info(
            "upgrade.waiting",
            current=state.plan if state else None,
            ready=state.ready if state else None,
            configured=state.configured if state else None,
            current_extra_disk=state.extra_disk if state else None,
            checks=check.checks + 1,
        )
        await watch.checked(self.processor.store.db, check.action_id, now)
        return Follow(replace(check, checks=check.checks + 1), self.processor.settings.upgrade_poll_seconds)

    async def _confirmed(
        self, check: Check, bound: structlog.typing.FilteringBoundLogger, detail: str, took: float | None
    ) -> Outcome:
        now = self.processor.clock()
        if not await self.processor.store.confirm_action(
            check.action_id, ActionStatus.SUCCEEDED, detail, now, took
        ):
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
