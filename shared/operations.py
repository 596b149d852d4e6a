"""The operator's acts — pause, resume, approve, deny — each one transaction of the store
with its audit entry, shared by the receiver's write endpoints and the ``autopilot`` CLI.

The rules are in ``shared.controls`` and in the store's conditional statements; this module
only strings them together. Approving also sends the workers a nudge (a check message on the
work queue) so the upgrade starts at once; if the nudge cannot be sent, the approval's own
periodic check carries it out a little later.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from shared.alarm import iso, new_id
from shared.controls import GLOBAL, ApprovalState, ControlError, Pause, approval_refusal
from shared.db import Row
from shared.envelope import ApprovalCheck
from shared.records import ApprovalDecision, AuditEntry
from shared.settings import Settings
from shared.statuses import ActionStatus
from shared.store import Store

log = structlog.get_logger("operations")

Nudge = Callable[[ApprovalCheck], Awaitable[None]]


class Operations:
    def __init__(self, store: Store, settings: Settings, nudge: Nudge | None = None):
        self.store = store
        self.settings = settings
        self.nudge = nudge

    def _scope(self, instance: str | None) -> str:
        if instance is None:
            return GLOBAL
        if self.settings.instance_ids and instance not in self.settings.managed:
            raise ControlError("unknown_instance", f"instance {instance} is not in CLOUDAMQP_INSTANCE_ID")
        return instance

    async def pause(
        self, instance: str | None, until: float, *, operator: str, reason: str | None, now: float
    ) -> Pause:
        """Pause one instance (``None``: every instance) until ``until``."""
        pause = Pause(self._scope(instance), until, operator, reason, now)
        async with self.store.unit() as unit:
            await unit.set_pause(pause)
            await unit.audit(
                _entry(now, operator, "pause", pause.scope, {"until": iso(until), "reason": reason})
            )
        log.info("operator.paused", scope=pause.scope, until=iso(until), operator=operator)
        return pause

    async def resume(
        self, instance: str | None, *, operator: str, reason: str | None, now: float
    ) -> Pause | None:
        """End a pause; the pause that was still running (None: there was none)."""
        scope = self._scope(instance)
        async with self.store.unit() as unit:
            ended = await unit.clear_pause(scope, now)
            await unit.audit(
                _entry(now, operator, "resume", scope, {"was_paused": ended is not None, "reason": reason})
            )
        log.info("operator.resumed", scope=scope, was_paused=ended is not None, operator=operator)
        return ended

    async def approve(self, action_id: str, *, operator: str, reason: str | None, now: float) -> Row:
        """Let an awaiting upgrade go ahead: one of any number of concurrent approvals wins,
        the others get ``already_approved``."""
        row = await self._decide(action_id, ActionStatus.APPROVED, operator, reason, now)
        if self.nudge is not None:
            try:
                await self.nudge(ApprovalCheck(action_id, float(row["approval_deadline"] or now)))
            except Exception as exc:  # the approval's periodic check carries it out instead
                log.warning(
                    "operator.nudge_failed", action_id=action_id, error=f"{type(exc).__name__}: {exc}"
                )
        return row

    async def deny(self, action_id: str, *, operator: str, reason: str | None, now: float) -> Row:
        """Refuse an awaiting upgrade: nothing is called, and the claim is released."""
        return await self._decide(action_id, ActionStatus.DENIED, operator, reason, now)

    async def _decide(
        self, action_id: str, status: ActionStatus, operator: str, reason: str | None, now: float
    ) -> Row:
        decision = ApprovalDecision(
            action_id, status, operator, reason, now, self.settings.claim_lease_seconds
        )
        act = "approve" if status is ActionStatus.APPROVED else "deny"
        async with self.store.unit() as unit:
            current = await unit.approval(action_id)
            if (
                current is not None
                and current["status"] == ApprovalState.AWAITING
                and status is ActionStatus.APPROVED
            ):
                pauses = await unit.pauses_for(current["instance_id"] or "", now)
                if pauses:
                    raise ControlError("instance_paused", f"{pauses[0].describe()}; resume it to approve")
            approval = await unit.decide_approval(decision)
            if approval is None:
                # Read again: a concurrent answer that won has committed by now.
                raise _refusal(await unit.approval(action_id), now)
            detail: dict[str, Any] = {"action_id": action_id, "plan": approval["plan"], "reason": reason}
            await unit.audit(_entry(now, operator, act, approval["instance_id"], detail))
        log.info(f"operator.{act}d", action_id=action_id, operator=operator)
        row = await self.store.get_action(action_id)
        assert row is not None
        return row


def _refusal(current: Row | None, now: float) -> ControlError:
    status = current["status"] if current is not None else None
    deadline = current["deadline"] if current is not None else None
    refusal = approval_refusal(status, float(deadline) if deadline is not None else None, now)
    return refusal or ControlError("conflict", "another answer changed this approval just now")


def _entry(now: float, operator: str, act: str, target: str | None, detail: dict[str, Any]) -> AuditEntry:
    return AuditEntry(f"{act}:{new_id()}", now, operator, "operator", act, target, detail)
