"""The store's read side: the lists and details the API and the console show, and the
console's overview. Read-only transactions; nothing here writes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shared import outbox
from shared.controls import GLOBAL, Pause
from shared.db import Database, Row, lit
from shared.retention import first_and_last
from shared.statuses import ActionStatus, IncidentStatus
from shared.store.actions import ACTION_COLUMNS, APPROVAL_JOIN
from shared.store.controls import pause_of

# An event as the reads show it.
_EVENT_COLUMNS = "event_id, received_at, recorded_at, instance_id, alarm_type, incident_change, body"


@dataclass(frozen=True)
class IncidentPage:
    """One incident as ``Reads.get_incident`` reads it: bounded however many events it had."""

    incident: Row
    events: list[Row]  # the page asked for, newest first
    events_total: int  # events kept (``incident["event_count"]``: every event it grouped)
    first_event: Row | None
    last_event: Row | None
    actions: list[Row]  # the newest
    actions_total: int


class Reads:
    """What ``Store`` answers about what it holds."""

    db: Database
    outbox: outbox.Outbox

    async def list_notifications(self, *, limit: int = 100, offset: int = 0) -> list[tuple[Row, list[Row]]]:
        return await self.outbox.list(limit=limit, offset=offset)

    async def list_actions(
        self,
        *,
        instance: str | None = None,
        status: str | None = None,
        alarm_type: str | None = None,
        incident: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = filters(
            (
                ("a.instance_id", instance),
                ("a.status", status),
                ("a.alarm_type", alarm_type),
                ("a.incident_id", incident),
            ),
            2,
        )
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT {ACTION_COLUMNS} FROM actions a {APPROVAL_JOIN} {where}
                    ORDER BY a.created_at DESC, a.action_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
                *args,
            )

    async def session_revoked(self, session_id: str) -> bool:
        async with self.db.transaction(write=False) as tx:
            row = await tx.fetchrow("SELECT 1 AS one FROM console_revoked WHERE session_id = $1", session_id)
        return row is not None

    async def list_pauses(self, now: float) -> list[Pause]:
        """Pauses still running, the global one first."""
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                "SELECT * FROM pauses WHERE until_at > $1 ORDER BY scope = $2 DESC, scope", now, GLOBAL
            )
        return [pause_of(r) for r in rows]

    async def list_audit(
        self,
        *,
        act: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = filters((("act", act), ("actor", actor), ("target", target)), 2)
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"SELECT * FROM audit {where} ORDER BY at DESC, audit_id DESC LIMIT $1 OFFSET $2",
                limit,
                offset,
                *args,
            )

    async def get_action(self, action_id: str) -> Row | None:
        async with self.db.transaction(write=False) as tx:
            return await tx.fetchrow(
                f"SELECT {ACTION_COLUMNS} FROM actions a {APPROVAL_JOIN} WHERE a.action_id = $1",
                action_id,
            )

    async def list_incidents(
        self,
        *,
        status: str | None = None,
        instance: str | None = None,
        alarm_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = filters((("status", status), ("instance_id", instance), ("alarm_type", alarm_type)), 2)
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT * FROM incidents {where}
                    ORDER BY last_seen DESC, incident_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
                *args,
            )

    async def get_incident(
        self, incident_id: str, *, limit: int = 100, offset: int = 0, actions: int = 100
    ) -> IncidentPage | None:
        """The incident with a page of its kept events (newest first) and its newest actions,
        the counts of both, and its first and last event (kept, or the copies it took when
        they were pruned); None when there is no such incident. Bounded reads, each served
        by an index (``events_incident_recorded``, ``actions_incident``)."""
        async with self.db.transaction(write=False) as tx:
            incident = await tx.fetchrow("SELECT * FROM incidents WHERE incident_id = $1", incident_id)
            if incident is None:
                return None
            events = await tx.fetch(
                f"""SELECT {_EVENT_COLUMNS} FROM events WHERE incident_id = $1
                    ORDER BY recorded_at DESC, received_at DESC, event_id DESC LIMIT $2 OFFSET $3""",
                incident_id,
                limit,
                offset,
            )
            ends = [
                await tx.fetchrow(
                    f"""SELECT {_EVENT_COLUMNS} FROM events WHERE incident_id = $1
                        ORDER BY recorded_at {way}, received_at {way}, event_id {way} LIMIT 1""",
                    incident_id,
                )
                for way in ("ASC", "DESC")
            ]
            events_total = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM events WHERE incident_id = $1", incident_id
            )
            newest = await tx.fetch(
                f"""SELECT {ACTION_COLUMNS} FROM actions a {APPROVAL_JOIN} WHERE a.incident_id = $1
                    ORDER BY a.created_at DESC, a.action_id DESC LIMIT $2""",
                incident_id,
                actions,
            )
            actions_total = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM actions WHERE incident_id = $1", incident_id
            )
        first_copy = json.loads(incident["first_event"]) if incident.get("first_event") else None
        last_copy = json.loads(incident["last_event"]) if incident.get("last_event") else None
        first, last = first_and_last(first_copy, last_copy, ends[0], ends[1])
        return IncidentPage(
            incident,
            events,
            int(events_total["n"]) if events_total else 0,
            first,
            last,
            newest,
            int(actions_total["n"]) if actions_total else 0,
        )

    async def list_events(self, *, limit: int = 100, offset: int = 0) -> list[Row]:
        """Recorded events, newest first, with the incident change each made (or why none):
        a resolve with nothing open, ``metadata.resolved``, or nothing to group by."""
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                """SELECT event_id, received_at, recorded_at, instance_id, alarm_type, incident_key,
                          incident_id, incident_change, ungroupable, body
                   FROM events ORDER BY recorded_at DESC, event_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
            )


def filters(pairs: tuple[tuple[str, str | None], ...], taken: int) -> tuple[str, list[Any]]:
    """``WHERE column = $n AND …`` for the pairs whose value is given, numbered after the
    ``taken`` placeholders the query already uses, and their arguments."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in pairs:
        if value:
            args.append(value)
            clauses.append(f"{column} = ${taken + len(args)}")
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


# The console's reads (``receiver/console_data.py`` shapes them for its pages): the overview's
# counts, the upgrades in the audit trail, an instance's claims, the instances the store names.


async def overview_counts(db: Database, since: float, upgrade_statuses: Iterable[str]) -> dict[str, Row]:
    """Open incidents; actions since ``since`` (and the newest); those awaiting approval; the
    status of the newest action among ``upgrade_statuses``."""
    statuses = sorted(upgrade_statuses)
    marks = ", ".join(f"${n}" for n in range(1, len(statuses) + 1))
    async with db.transaction(write=False) as tx:
        incidents = await tx.fetchrow(
            f"SELECT COUNT(*) AS n FROM incidents WHERE status = {lit(IncidentStatus.OPEN)}"
        )
        today = await tx.fetchrow(
            "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM actions WHERE created_at >= $1", since
        )
        awaiting = await tx.fetchrow(
            "SELECT COUNT(*) AS n FROM actions WHERE status = $1", ActionStatus.AWAITING_APPROVAL.value
        )
        last = await tx.fetchrow("SELECT MAX(created_at) AS last FROM actions")
        decision = await tx.fetchrow(
            f"SELECT status FROM actions WHERE status IN ({marks}) ORDER BY created_at DESC LIMIT 1",
            *statuses,
        )
    assert incidents is not None and today is not None and awaiting is not None and last is not None
    return {
        "incidents": incidents,
        "today": today,
        "awaiting": awaiting,
        "last": last,
        "decision": decision or {},
    }


async def upgrade_audit(db: Database, instance: str | None, limit: int) -> list[Row]:
    """The newest automatic upgrades in the audit trail, of one instance or of all."""
    where, args = ("AND target = $2", [instance]) if instance else ("", [])
    async with db.transaction(write=False) as tx:
        return await tx.fetch(
            f"SELECT * FROM audit WHERE act = 'upgrade' {where} ORDER BY at DESC, audit_id DESC LIMIT $1",
            limit,
            *args,
        )


async def claims_of(db: Database, instance: str) -> list[Row]:
    """The cooldown claims of one instance (one per alarm type that upgraded it)."""
    async with db.transaction(write=False) as tx:
        return await tx.fetch("SELECT * FROM claims WHERE instance_id = $1 ORDER BY scope", instance)


async def instances_named(db: Database) -> set[str]:
    """Every instance a claim or a pause names."""
    async with db.transaction(write=False) as tx:
        rows = await tx.fetch(
            "SELECT instance_id AS id FROM claims UNION SELECT scope AS id FROM pauses WHERE scope <> '*'"
        )
    return {r["id"] for r in rows}


async def disk_history(db: Database, instance: str, limit: int) -> list[Row]:
    """The instance's disk history, newest first: each resize the autopilot made (with its
    action's status and approver) or saw, and the size first read."""
    async with db.transaction(write=False) as tx:
        return await tx.fetch(
            """SELECT d.*, a.status, p.decided_by AS approved_by FROM disk_history d
               LEFT JOIN actions a ON a.action_id = d.action_id
               LEFT JOIN approvals p ON p.action_id = d.action_id
               WHERE d.instance_id = $1 ORDER BY d.at DESC, d.mark_id DESC LIMIT $2""",
            instance,
            limit,
        )


async def latest_forecast(db: Database, instance: str) -> Row | None:
    """The newest forecast alarm the watchdog raised for ``instance`` (its event)."""
    async with db.transaction(write=False) as tx:
        return await tx.fetchrow(
            """SELECT event_id, received_at, alarm_type, body FROM events
               WHERE instance_id = $1 AND event_id LIKE 'forecast-%'
               ORDER BY received_at DESC LIMIT 1""",
            instance,
        )
