"""Actions in the store: each event's one action row (its id is the event id), written with the
notification it causes; the decided contents that make a re-send a duplicate; the plan
changes CloudAMQP is still applying; an accepted upgrade confirmed."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from shared import outbox
from shared.alarm import Alarm
from shared.db import Row, lit, lits, rows_cte
from shared.notifications import EventType, Notice, action_notice, action_price, alarm_data
from shared.queries import Query
from shared.records import AUTOPILOT, ActionRecord, Asked, Asking, AuditEntry
from shared.statuses import (
    DECIDED_STATUSES,
    DONE_STATUSES,
    HANDED_OFF,
    PASSING_SKIPS,
    RECONFIGURING,
    UNANSWERED,
    ActionKind,
    ActionStatus,
    unanswered,
)
from shared.store.controls import Controls

_IN_PROGRESS = lit(ActionStatus.IN_PROGRESS)
_SKIPPED = lit(ActionStatus.SKIPPED)
# The audit trail's acts of the two remedies, as their kinds are spelled.
UPGRADE, RESIZE_DISK = ActionKind.UPGRADE.value, ActionKind.RESIZE_DISK.value


_SETTLED_SQL = lits(DONE_STATUSES | HANDED_OFF)
_PASSING_SQL = ", ".join(f"'{reason}'" for reason in PASSING_SKIPS)
# An action row that makes identical content a duplicate (``shared.statuses.is_decided`` of a
# row about to be written says the same); the partial index ``actions_decided`` (the last
# migration) has this condition, word for word.
DECIDED_ROW = f"""status IN ({lits(DECIDED_STATUSES)})
    AND NOT (status = {_SKIPPED} AND COALESCE(reason, '') IN ({_PASSING_SQL}))"""

# Actions whose change was asked of CloudAMQP and which are not over: the partial index
# ``actions_asking`` (the migration that added ``asked_at``) has this condition, word for word.
ASKING = f"asked_at IS NOT NULL AND status IN ({_IN_PROGRESS}, {lit(ActionStatus.RETRYING)})"

# The columns ``write_actions`` writes actions from (``rows_cte``).
_ACTION_COLUMNS_IN = (
    ("action_id", "text"),
    ("event_key", "text"),
    ("incident_id", "text"),
    ("instance_id", "text"),
    ("alarm_type", "text"),
    ("status", "text"),
    ("reason", "text"),
    ("detail", "text"),
    ("plan", "text"),
    ("attempts", "int"),
    ("at", "float8"),
    ("from_plan", "text"),
    ("verification", "text"),
    ("from_price", "float8"),
    ("to_price", "float8"),
    ("kind", "text"),
    ("extra_disk_from", "int"),
    ("extra_disk_to", "int"),
)

# What ``Actions.asking`` writes of each change asked.
_ASKED_COLUMNS = (
    ("action_id", "text"),
    ("asked_at", "float8"),
    ("plan", "text"),
    ("from_plan", "text"),
    ("extra_disk_from", "int"),
    ("extra_disk_to", "int"),
)

# An action row as the views show it: with its approval, when it has one.
ACTION_COLUMNS = """a.*, p.deadline AS approval_deadline, p.decided_by AS approval_decided_by,
    p.decided_at AS approval_decided_at, p.decision_reason AS approval_reason"""
APPROVAL_JOIN = "LEFT JOIN approvals p ON p.action_id = a.action_id"


class Actions(Controls):
    """Action rows and the notifications they cause, inside one open transaction."""

    async def notify(
        self,
        event_type: EventType,
        key: str,
        data: dict[str, Any],
        *,
        instance_id: str | None = None,
        now: float | None = None,
    ) -> bool:
        """Write the notification about ``key`` in this transaction (the outbox): it is sent
        exactly when the change that causes it commits, and only once (its id is derived
        from ``event_type`` and ``key``). True when it was new."""
        notice = Notice(event_type, key, data, instance_id)
        return await outbox.insert(self.tx, notice, time.time() if now is None else now)

    def _decided_events(self, event_keys: Sequence[str]) -> Query[dict[str, set[str]]]:
        """For each content (at least one), the lowest and highest event id among its events
        whose action is a decision that stands: enough to tell whether another event than a
        given one has one."""
        cte, args = rows_cte(self.tx.dialect, "v", [("event_key", "text")], [(k,) for k in event_keys])
        # Each end by its own lookup in the partial index ``actions_decided`` (whose condition
        # is DECIDED_ROW's): never a scan of the content's rows.
        return Query(
            f"""WITH {cte}
               SELECT v.event_key,
                   (SELECT event_id FROM actions WHERE event_key = v.event_key AND {DECIDED_ROW}
                    ORDER BY event_id LIMIT 1) AS lo,
                   (SELECT event_id FROM actions WHERE event_key = v.event_key AND {DECIDED_ROW}
                    ORDER BY event_id DESC LIMIT 1) AS hi
               FROM v""",
            args,
            lambda rows: {row["event_key"]: {row["lo"], row["hi"]} for row in rows if row["lo"] is not None},
        )

    def _reconfiguring(
        self, instances: Sequence[str], asked_since: float = 0.0, quiet_before: float = float("-inf")
    ) -> Query[dict[str, str]]:
        """The changes CloudAMQP is applying to these instances, or may be: asked for since
        ``asked_since`` and their answer never heard (``shared.statuses.unanswered``) — a
        call retrying after no answer, or one whose worker went quiet while it waited (asked
        before ``quiet_before``: a live worker's call is covered by its claim). The plan, or
        the extra disk. At least one instance."""
        cte, args = rows_cte(self.tx.dialect, "v", [("instance_id", "text")], [(i,) for i in instances], 3)
        return Query(
            f"""WITH {cte} SELECT instance_id, plan, kind, extra_disk_to FROM actions
               WHERE reason = '{RECONFIGURING}' AND status = {_IN_PROGRESS}
               AND instance_id IN (SELECT instance_id FROM v)
               UNION ALL
               SELECT instance_id, plan, kind, extra_disk_to FROM actions
               WHERE {ASKING} AND asked_at >= $1
               AND (reason = '{UNANSWERED}' OR (status = {_IN_PROGRESS} AND reason IS NULL AND asked_at < $2))
               AND instance_id IN (SELECT instance_id FROM v)""",
            [asked_since, quiet_before, *args],
            lambda rows: {row["instance_id"]: change_of(row) for row in rows},
        )

    async def asking(self, askings: Sequence[Asking]) -> None:
        """Write down, before they are asked, the changes these actions' calls ask CloudAMQP
        for (one statement for any number): should an answer never come, the next attempt
        reads the instance for it (``shared.policy.made_already``) instead of asking blindly."""
        if not askings:
            return
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            _ASKED_COLUMNS,
            sorted(
                (
                    a.action_id,
                    a.asked.at,
                    a.asked.plan,
                    a.asked.from_plan,
                    a.asked.extra_disk_from,
                    a.asked.extra_disk_to,
                )
                for a in askings
            ),
        )
        if self.tx.dialect == "postgresql":
            # Rows locked in id order, as a batch's action rows are written (an UPDATE ...
            # FROM locks them in whatever order its join reads them).
            await self.tx.execute(
                f"""WITH {cte} SELECT a.action_id FROM actions a
                    WHERE a.action_id IN (SELECT action_id FROM v) ORDER BY a.action_id FOR UPDATE OF a""",
                *args,
            )
        await self.tx.execute(
            f"""WITH {cte}
               UPDATE actions SET asked_at = v.asked_at, plan = COALESCE(v.plan, actions.plan),
                   from_plan = COALESCE(v.from_plan, actions.from_plan),
                   extra_disk_from = COALESCE(v.extra_disk_from, actions.extra_disk_from),
                   extra_disk_to = COALESCE(v.extra_disk_to, actions.extra_disk_to)
               FROM v WHERE actions.action_id = v.action_id""",
            *args,
        )

    async def key_already_decided(self, event_key: str, event_id: str) -> bool:
        """Has another event with identical content already been decided?"""
        row = await self.tx.fetchrow(
            f"""SELECT 1 AS hit FROM actions WHERE event_key = $1 AND event_id <> $2
               AND {DECIDED_ROW} LIMIT 1""",
            event_key,
            event_id,
        )
        return row is not None

    async def write_action(self, record: ActionRecord) -> bool:
        """Create or update the one action row of this event (its id is the event id).

        Returns False, changing nothing, when the row already holds a final status and this
        is not a replay: the first final word about an event wins, so a second delivery of
        the same event racing the first cannot overwrite "succeeded" with a skip.
        """
        [written] = await self.write_actions([record])
        return written

    async def write_actions(self, records: Sequence[ActionRecord]) -> list[bool]:
        """``write_action`` of several events' rows (one statement for those of them that are
        not replays, one for the replays); each one's answer, in order. An action notice of
        a row written is part of the same transaction."""
        if len({r.alarm.event_id for r in records}) < len(records):  # one row twice: in turn
            return [written for r in records for written in await self.write_actions([r])]
        written: dict[str, Row] = {}
        for replayed in (False, True):
            group = [r for r in records if r.alarm.replayed is replayed]
            if not group:
                continue
            cte, args = rows_cte(
                self.tx.dialect, "v", _ACTION_COLUMNS_IN, [_action_values(r) for r in group], 2
            )
            rows = await self.tx.fetch(
                f"""WITH {cte}
                   INSERT INTO actions (action_id, event_id, event_key, incident_id, instance_id,
                       alarm_type, status, reason, detail, plan, attempts, created_at, updated_at,
                       from_plan, verification, from_price, to_price, kind, extra_disk_from, extra_disk_to)
                   SELECT action_id, action_id, event_key, incident_id, instance_id, alarm_type, status,
                       reason, detail, plan, attempts, at, at, from_plan, verification, from_price,
                       to_price, kind, extra_disk_from, extra_disk_to FROM v WHERE true
                   ON CONFLICT (action_id) DO UPDATE SET
                       status = excluded.status, reason = excluded.reason,
                       detail = excluded.detail, plan = COALESCE(excluded.plan, actions.plan),
                       attempts = excluded.attempts, updated_at = excluded.updated_at,
                       from_plan = COALESCE(excluded.from_plan, actions.from_plan),
                       verification = COALESCE(excluded.verification, actions.verification),
                       from_price = CASE WHEN excluded.to_price IS NULL THEN actions.from_price
                                         ELSE excluded.from_price END,
                       to_price = COALESCE(excluded.to_price, actions.to_price),
                       kind = COALESCE(excluded.kind, actions.kind),
                       extra_disk_from = COALESCE(excluded.extra_disk_from, actions.extra_disk_from),
                       extra_disk_to = COALESCE(excluded.extra_disk_to, actions.extra_disk_to)
                   WHERE (actions.status NOT IN ({_SETTLED_SQL})
                          AND COALESCE(actions.reason, '') <> '{RECONFIGURING}') OR $1
                   RETURNING *""",
                replayed,
                *args,
            )
            written.update((row["action_id"], row) for row in rows)
        notices = []
        for r in records:
            row = written.get(r.alarm.event_id)
            notice = action_notice(row, alarm_data(r.alarm)) if row is not None else None
            if row is not None and notice is not None:
                notices.append((notice, float(row["updated_at"])))
        await outbox.insert_many(self.tx, notices)
        return [r.alarm.event_id in written for r in records]

    async def confirm_action(
        self,
        action_id: str,
        status: ActionStatus,
        detail: str,
        now: float,
        reconfigure_seconds: float | None = None,
    ) -> bool:
        """Close an upgrade CloudAMQP was reconfiguring the instance for (``succeeded`` /
        ``unconfirmed``), with how long the reconfiguration took where it is known; a
        success goes into the audit trail with it. A success's detail starts with the
        upgrade's reason (for a forecast, its projection): the check that confirms it knows
        only the plan, and the action, its notice and the console must still say why."""
        if status is ActionStatus.SUCCEEDED:
            reason = await self._upgrade_reason(action_id)
            if reason:
                detail = f"{reason}; {detail}"
        row = await self.tx.fetchrow(
            f"""UPDATE actions SET status = $1, reason = NULL, detail = $2, updated_at = $3,
                      reconfigure_seconds = $6
               WHERE action_id = $4 AND status = {_IN_PROGRESS} AND reason = $5
               RETURNING *""",
            status.value,
            detail,
            now,
            action_id,
            RECONFIGURING,
            reconfigure_seconds,
        )
        if row is None:
            return False
        if status is ActionStatus.SUCCEEDED:
            act = f"{row.get('kind') or UPGRADE}.confirmed"  # upgrade.confirmed, resize_disk.confirmed
            what = (
                {"plan": row["plan"], "price": action_price(row)}
                if not row.get("kind")
                else {"extra_disk": row["extra_disk_to"]}
            )
            await self.audit(
                AuditEntry(
                    f"{act}:{action_id}",
                    now,
                    AUTOPILOT,
                    "automatic",
                    act,
                    row["instance_id"],
                    {
                        "action_id": action_id,
                        **what,
                        "reconfigure_seconds": reconfigure_seconds,
                        "detail": detail,
                    },
                )
            )
        event = await self.tx.fetchrow(
            "SELECT event_id, received_at, body, alarm_type, instance_id FROM events WHERE event_id = $1",
            row["event_id"],
        )
        notice = action_notice(row, _event_alarm_data(event) if event else {"event_id": row["event_id"]})
        if notice is not None:
            await outbox.insert(self.tx, notice, float(row["updated_at"]))
        return True

    async def _upgrade_reason(self, action_id: str) -> str | None:
        """The reason the upgrade audit entry of ``action_id`` carries (``cause.reason``),
        written with the accepted call; None where there is none (a row from before)."""
        action = await self.tx.fetchrow("SELECT instance_id FROM actions WHERE action_id = $1", action_id)
        if action is None:
            return None
        # The instance's latest upgrades: the one of this action is among them (a plan change
        # in progress keeps later upgrades of the instance off by its claim).
        rows = await self.tx.fetch(
            f"""SELECT detail FROM audit WHERE act IN ('{UPGRADE}', '{RESIZE_DISK}') AND target = $1
               ORDER BY at DESC LIMIT 20""",
            action["instance_id"],
        )
        for row in rows:
            detail = json.loads(row["detail"]) if row["detail"] else {}
            if isinstance(detail, dict) and detail.get("action_id") == action_id:
                cause = detail.get("cause")
                reason = cause.get("reason") if isinstance(cause, dict) else None
                return reason if isinstance(reason, str) and reason else None
        return None


def _action_values(r: ActionRecord) -> tuple[Any, ...]:
    """An action row's values in ``_ACTION_COLUMNS_IN`` order."""
    verification = json.dumps(r.verification) if r.verification is not None else None
    return (
        r.alarm.event_id,
        r.alarm.event_key,
        r.incident_id,
        r.instance_id,
        r.alarm.alarm_type,
        r.status.value,
        r.reason,
        r.detail,
        r.plan,
        r.attempts,
        r.now,
        r.from_plan,
        verification,
        r.from_price,
        r.to_price,
        r.kind,
        r.extra_disk_from,
        r.extra_disk_to,
    )


def asked_of(row: Row, reason: str = "reason", plan: str = "plan") -> Asked | None:
    """The change an action row's call asked for and never heard the answer to, if any
    (``shared.statuses.unanswered``); ``reason`` and ``plan`` name the row's columns."""
    if not unanswered(row["status"], row[reason], row["asked_at"]):
        return None
    return Asked(
        float(row["asked_at"]), row[plan], row["from_plan"], row["extra_disk_from"], row["extra_disk_to"]
    )


def change_of(row: Row) -> str:
    """The change an action under way asks CloudAMQP for: its plan, or ``extra disk 50 GB``."""
    if row.get("kind") == RESIZE_DISK:
        return f"extra disk {row.get('extra_disk_to')} GB"
    return str(row["plan"])


def _event_alarm_data(event: Row) -> dict[str, Any]:
    """``alarm_data`` of a recorded event."""
    body = json.loads(event["body"]) if isinstance(event["body"], str) else event["body"]
    alarm = Alarm(event["event_id"], float(event["received_at"]), body, "")
    data = alarm_data(alarm)
    # What the worker read when it recorded the event (through a [fields] map, if any).
    for name in ("alarm_type", "instance_id"):
        if data.get(name) is None and event.get(name) is not None:
            data[name] = event[name]
    return data
