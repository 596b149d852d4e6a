"""The operator's controls in the store: pauses, approvals and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Sequence

from shared.claims import ClaimStatus
from shared.controls import GLOBAL, ControlError, Pause
from shared.db import Row, lit, rows_cte
from shared.queries import Query
from shared.records import ActionRecord, ApprovalDecision, ApprovalRequest, AuditEntry
from shared.statuses import ActionStatus
from shared.store.part import Part

_APPROVED = lit(ActionStatus.APPROVED)
_AWAITING = lit(ClaimStatus.AWAITING)
_AWAITING_APPROVAL = lit(ActionStatus.AWAITING_APPROVAL)
_EXPIRED = lit(ActionStatus.EXPIRED)
_HELD = lit(ClaimStatus.HELD)
_IN_PROGRESS = lit(ActionStatus.IN_PROGRESS)
_RELEASED = lit(ClaimStatus.RELEASED)
_RETRYING = lit(ActionStatus.RETRYING)
_STALE = lit(ClaimStatus.STALE)

_AUDIT_COLUMNS = (
    ("audit_id", "text"),
    ("at", "float8"),
    ("actor", "text"),
    ("kind", "text"),
    ("act", "text"),
    ("target", "text"),
    ("detail", "text"),
)


def pause_of(row: Row) -> Pause:
    return Pause(
        row["scope"], float(row["until_at"]), row["operator"], row["reason"], float(row["created_at"])
    )


def running_pauses(now: float) -> Query[list[Pause]]:
    """Every pause still running at ``now``."""
    return Query("SELECT * FROM pauses WHERE until_at > $1", [now], lambda rows: [pause_of(r) for r in rows])


class Controls(Part):
    """Pauses, approvals and the audit trail, inside one open transaction."""

    async def pauses_for(self, instance: str, now: float) -> list[Pause]:
        """Pauses holding ``instance`` at ``now`` (its own and the global one)."""
        rows = await self.tx.fetch(
            "SELECT * FROM pauses WHERE until_at > $1 AND scope IN ($2, $3)", now, instance, GLOBAL
        )
        return [pause_of(r) for r in rows]

    async def set_pause(self, pause: Pause) -> None:
        """Pause a scope (a new pause replaces the one it had)."""
        await self.tx.execute(
            """INSERT INTO pauses (scope, until_at, operator, reason, created_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (scope) DO UPDATE SET until_at = excluded.until_at,
                   operator = excluded.operator, reason = excluded.reason,
                   created_at = excluded.created_at""",
            pause.scope,
            pause.until,
            pause.operator,
            pause.reason,
            pause.created_at,
        )

    async def clear_pause(self, scope: str, now: float) -> Pause | None:
        """End a scope's pause; the pause that was still running, or None."""
        row = await self.tx.fetchrow("DELETE FROM pauses WHERE scope = $1 RETURNING *", scope)
        return pause_of(row) if row is not None and row["until_at"] > now else None

    async def audit(self, entry: AuditEntry) -> None:
        """Append to the audit trail; writing the same entry (same id) twice keeps one."""
        await self.audit_many([entry])

    async def audit_many(self, entries: Sequence[AuditEntry]) -> None:
        """``audit`` of several entries, in one statement."""
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            _AUDIT_COLUMNS,
            [
                (
                    e.audit_id,
                    e.at,
                    e.actor,
                    e.kind,
                    e.act,
                    e.target,
                    json.dumps(e.detail, ensure_ascii=False, sort_keys=True),
                )
                for e in entries
            ],
        )
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO audit (audit_id, at, actor, kind, act, target, detail)
               SELECT audit_id, at, actor, kind, act, target, detail FROM v WHERE true
               ON CONFLICT (audit_id) DO NOTHING""",
            *args,
        )

    async def _put_approval(self, request: ApprovalRequest) -> None:
        """Remember what an upgrade awaiting approval would do (its claim, written with it by
        ``apply``, already waits)."""
        await self.tx.execute(
            """INSERT INTO approvals (action_id, scope, owner, instance_id, plan, reason, rule,
                   cooldown_seconds, requested_at, deadline)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (action_id) DO UPDATE SET scope = excluded.scope,
                   owner = excluded.owner, plan = excluded.plan, reason = excluded.reason,
                   rule = excluded.rule, cooldown_seconds = excluded.cooldown_seconds,
                   requested_at = excluded.requested_at, deadline = excluded.deadline,
                   decided_by = NULL, decided_at = NULL, decision_reason = NULL""",
            request.action_id,
            request.scope,
            request.owner,
            request.instance_id,
            request.plan,
            request.reason,
            request.rule,
            request.cooldown_seconds,
            request.requested_at,
            request.deadline,
        )

    async def approval(self, action_id: str) -> Row | None:
        """An action with its approval (and the monthly price it showed, ``to_price``) and the
        alarm that caused it (None: no such action)."""
        return await self.tx.fetchrow(
            """SELECT a.action_id, a.status, a.incident_id, a.attempts, a.to_price, a.kind, a.extra_disk_to,
                      a.asked_at, a.reason AS action_reason, a.plan AS action_plan, a.from_plan,
                      a.extra_disk_from, p.scope, p.owner,
                      p.instance_id, p.plan, p.reason, p.rule, p.cooldown_seconds, p.deadline,
                      p.decided_by, p.decided_at, e.received_at, e.event_key, e.body
               FROM actions a
               LEFT JOIN approvals p ON p.action_id = a.action_id
               LEFT JOIN events e ON e.event_id = a.event_id
               WHERE a.action_id = $1""",
            action_id,
        )

    async def decide_approval(self, decision: ApprovalDecision) -> Row | None:
        """Approve or deny, in single conditional statements: only one of any number of
        concurrent answers (or the expiry) changes an awaiting action; None for the others.
        Approving turns the claim into an ordinary held one (the worker's lease); denying
        releases it."""
        changed = await self.tx.fetchrow(
            f"""UPDATE actions SET status = $2, updated_at = $3
               WHERE action_id = $1 AND status = {_AWAITING_APPROVAL}
                 AND EXISTS (SELECT 1 FROM approvals p WHERE p.action_id = $1 AND p.deadline > $3)
               RETURNING action_id""",
            decision.action_id,
            decision.status.value,
            decision.now,
        )
        if changed is None:
            return None
        approval = await self.tx.fetchrow(
            """UPDATE approvals SET decided_by = $2, decided_at = $3, decision_reason = $4
               WHERE action_id = $1 RETURNING *""",
            decision.action_id,
            decision.operator,
            decision.now,
            decision.reason,
        )
        assert approval is not None
        approved = decision.status is ActionStatus.APPROVED
        claim = await self.tx.fetchrow(
            f"""UPDATE claims SET status = $3, lease_until = $4
               WHERE scope = $1 AND owner = $2 AND status = {_AWAITING} RETURNING scope""",
            approval["scope"],
            approval["owner"],
            (ClaimStatus.HELD if approved else ClaimStatus.RELEASED).value,
            decision.now + decision.lease if approved else decision.now,
        )
        if claim is None and approved:
            # Its claim was taken after all (the worker's clock said the deadline had passed):
            # refuse, so that no approval answers 200 and then never runs. (Rolls back.)
            raise ControlError("expired", "the approval window closed; the next alarm asks again")
        return approval

    async def expire_approval(self, action_id: str, now: float) -> Row | None:
        """Close an approval whose window has passed and release its claim (None: it was
        answered, or expired, already)."""
        changed = await self.tx.fetchrow(
            f"""UPDATE actions SET status = {_EXPIRED}, updated_at = $2,
                   detail = 'nobody approved or denied it in time'
               WHERE action_id = $1 AND status = {_AWAITING_APPROVAL}
                 AND EXISTS (SELECT 1 FROM approvals p WHERE p.action_id = $1 AND p.deadline <= $2)
               RETURNING action_id""",
            action_id,
            now,
        )
        if changed is None:
            return None
        approval = await self.tx.fetchrow("SELECT * FROM approvals WHERE action_id = $1", action_id)
        assert approval is not None
        await self.tx.execute(
            f"""UPDATE claims SET status = {_RELEASED}
               WHERE scope = $1 AND owner = $2 AND status = {_AWAITING}""",
            approval["scope"],
            approval["owner"],
        )
        return approval

    async def refuse_approved(self, record: ActionRecord, scope: str, owner: str, *, cooldown: bool) -> None:
        """An approved upgrade that may not go ahead after all (paused, no longer managed, rule
        gone, dry run): record why and free its claim (a dry run keeps its cooldown)."""
        await self.tx.execute(
            f"""UPDATE actions SET status = $2, reason = $3, detail = $4, updated_at = $5
               WHERE action_id = $1 AND status IN ({_APPROVED}, {_RETRYING}, {_IN_PROGRESS})""",
            record.alarm.event_id,
            record.status.value,
            record.reason,
            record.detail,
            record.now,
        )
        await self.tx.execute(
            f"""UPDATE claims SET status = $3
                WHERE scope = $1 AND owner = $2 AND status IN ({_HELD}, {_STALE})""",
            scope,
            owner,
            (ClaimStatus.DONE if cooldown else ClaimStatus.RELEASED).value,
        )

    async def start_approved(self, action_id: str, owner: str, now: float, lease: float) -> bool:
        """Take an approved upgrade to carry it out: one statement, so of the approval's nudge,
        its periodic check and any redelivery exactly one calls the API. The approval's claim
        passes to ``owner`` (this call), renewed, with the cooldown counted from now."""
        row = await self.tx.fetchrow(
            f"""UPDATE actions SET status = {_IN_PROGRESS}, updated_at = $2, attempts = attempts + 1
               WHERE action_id = $1 AND status = {_APPROVED} RETURNING action_id""",
            action_id,
            now,
        )
        if row is None:
            return False
        approval = await self.tx.fetchrow("SELECT * FROM approvals WHERE action_id = $1", action_id)
        assert approval is not None
        held = await self.tx.fetchrow(
            f"""UPDATE claims SET status = {_HELD}, owner = $3, lease_until = $4, cooldown_until = $5
               WHERE scope = $1 AND owner = $2 AND status IN ({_HELD}, {_STALE}) RETURNING scope""",
            approval["scope"],
            approval["owner"],
            owner,
            now + lease,
            now + float(approval["cooldown_seconds"]),
        )
        if held is None:
            # The claim lapsed while no worker ran (its lease after approval) and another
            # upgrade took it: this one must not call as well.
            await self.tx.execute(
                f"""UPDATE actions SET status = {_EXPIRED}, updated_at = $2,
                       detail = 'approved, but its claim lapsed before a worker could act'
                   WHERE action_id = $1""",
                action_id,
                now,
            )
            return False
        return True
