"""The state store: events, incidents, actions and cooldown claims, behind one interface.

Every operation is written once; ``shared.db`` runs it on SQLite or PostgreSQL. Operations
that must be atomic across processes and hosts are single conditional statements (the
incident upsert, the claim upsert), never a read followed by a write.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared import outbox
from shared.alarm import Alarm, new_id
from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.db import Database, Row, Tx, open_database
from shared.errors import StoreError
from shared.incidents import IncidentChange, IncidentPlan
from shared.notifications import EventType, Notice, action_notice, alarm_data, incident_notice


class ActionStatus(StrEnum):
    """Where an event's one action row stands."""

    IN_PROGRESS = "in_progress"  # claimed and calling (or, with AWAITING_CONFIRMATION, accepted)
    RETRYING = "retrying"  # a retryable failure; the message waits in a delay queue
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    DRY_RUN = "dry_run"
    FAILED = "failed"  # parked
    UNCONFIRMED = "unconfirmed"  # accepted, but the plan did not show before the deadline


# An event whose action reached one of these needs no more work when redelivered.
DONE_STATUSES = frozenset(
    {
        ActionStatus.SUCCEEDED,
        ActionStatus.SKIPPED,
        ActionStatus.DRY_RUN,
        ActionStatus.FAILED,
        ActionStatus.UNCONFIRMED,
    }
)
# An identical re-send of an event whose action reached one of these is a ``duplicate``. Fewer
# than DONE_STATUSES: a failed or unconfirmed upgrade is no decision that stands, so the same
# alarm sent again deserves its own try (the cooldown claim still guards against a repeat).
DECIDED_STATUSES = frozenset({ActionStatus.SUCCEEDED, ActionStatus.SKIPPED, ActionStatus.DRY_RUN})


def _sql_list(statuses: frozenset[ActionStatus]) -> str:
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


_DONE_SQL = _sql_list(DONE_STATUSES)
_DECIDED_SQL = _sql_list(DECIDED_STATUSES)
# An upgrade CloudAMQP accepted and that a check message now follows: "in_progress" with this
# reason. The alarm's own work is done; only the check may change the row.
AWAITING_CONFIRMATION = "awaiting_confirmation"


def _is_done(status: str | None, reason: str | None) -> bool:
    return status in DONE_STATUSES or (status == ActionStatus.IN_PROGRESS and reason == AWAITING_CONFIRMATION)


MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            event_key TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL,
            instance_id TEXT,
            alarm_type TEXT,
            incident_key TEXT,
            incident_id TEXT,
            incident_change TEXT,
            ungroupable TEXT,
            body TEXT NOT NULL
        )""",
        "CREATE INDEX events_key ON events (event_key)",
        "CREATE INDEX events_incident ON events (incident_id)",
        """CREATE TABLE incidents (
            incident_id TEXT PRIMARY KEY,
            incident_key TEXT NOT NULL,
            title TEXT NOT NULL,
            status TEXT NOT NULL,
            instance_id TEXT,
            alarm_type TEXT,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            event_count INTEGER NOT NULL,
            last_value TEXT,
            resolved_at DOUBLE PRECISION
        )""",
        # At most one open incident per key: what makes concurrent grouping safe.
        "CREATE UNIQUE INDEX incidents_open_key ON incidents (incident_key) WHERE status = 'open'",
        "CREATE INDEX incidents_seen ON incidents (last_seen)",
        """CREATE TABLE actions (
            action_id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_key TEXT NOT NULL,
            incident_id TEXT,
            instance_id TEXT,
            alarm_type TEXT,
            status TEXT NOT NULL,
            reason TEXT,
            detail TEXT,
            plan TEXT,
            attempts INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX actions_key ON actions (event_key, status)",
        "CREATE INDEX events_recorded ON events (recorded_at)",
        "CREATE INDEX actions_created ON actions (created_at)",
        """CREATE TABLE claims (
            scope TEXT PRIMARY KEY,
            instance_id TEXT NOT NULL,
            status TEXT NOT NULL,
            owner TEXT NOT NULL,
            claimed_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION NOT NULL,
            cooldown_until DOUBLE PRECISION NOT NULL
        )""",
    ],
    [
        # Nothing looks events up by content (duplicates are found through actions): one
        # index less to maintain on every alarm.
        "DROP INDEX IF EXISTS events_key",
    ],
    # Notifications (issue #14): the outbox, delivery records, disabled endpoints, and the
    # actions' from_plan column. The DDL lives with its queries in shared/outbox.py.
    outbox.MIGRATION,
]


@dataclass(frozen=True)
class EventRecord:
    new: bool
    incident_id: str | None
    incident_change: str | None
    final_status: str | None  # this event's action status when no more work is due
    awaiting_plan: str | None = None  # the plan of an accepted upgrade still to be confirmed
    duplicate: bool = False  # another event with identical content already has a decision


@dataclass(frozen=True)
class ClaimResult:
    verdict: ClaimVerdict
    row: ClaimRow | None


class Store:
    """All reads and writes of the state store."""

    def __init__(self, db: Database):
        self.db = db
        self.outbox = outbox.Outbox(db)

    @classmethod
    async def open(cls, url: str) -> Store:
        """Open and migrate the store; ``StoreError`` with one line when it cannot."""
        db = await open_database(url)
        store = cls(db)
        try:
            await store.migrate()
        except StoreError:
            await db.close()
            raise
        except Exception as exc:
            await db.close()
            raise StoreError(f"cannot prepare the state store schema: {exc}") from exc
        return store

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> None:
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(7461207)")
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await tx.fetchrow("SELECT MAX(version) AS v FROM schema_version")
            current = int(row["v"]) if row and row["v"] is not None else 0
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def ping(self) -> None:
        async with self.db.transaction(write=False) as tx:
            await tx.fetchrow("SELECT 1 AS ok")

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        """One write transaction for several operations: what one step of an alarm writes
        (its event, incident change, claim and decision) commits together, or not at all."""
        async with self.db.transaction() as tx:
            yield Unit(tx)

    # The single operations the worker runs outside an alarm's first step.

    async def renew_claim(self, scope: str, owner: str, lease_until: float) -> bool:
        async with self.unit() as unit:
            return await unit.renew_claim(scope, owner, lease_until)

    async def finish_claim(
        self, scope: str, owner: str, *, succeeded: bool, record: ActionRecord | None = None
    ) -> bool:
        async with self.unit() as unit:
            return await unit.finish_claim(scope, owner, succeeded=succeeded, record=record)

    async def confirm_action(self, action_id: str, status: ActionStatus, detail: str, now: float) -> bool:
        async with self.unit() as unit:
            return await unit.confirm_action(action_id, status, detail, now)

    async def notify(self, notice: Notice, now: float | None = None) -> bool:
        """Write a notification in a transaction of its own (one with no state change to join)."""
        async with self.unit() as unit:
            return await unit.notify(
                notice.type, notice.key, notice.data, instance_id=notice.instance_id, now=now
            )

    async def list_notifications(self, *, limit: int = 100, offset: int = 0) -> list[tuple[Row, list[Row]]]:
        return await self.outbox.list(limit=limit, offset=offset)

    # --- reads ----------------------------------------------------------------------------

    async def list_actions(
        self, *, instance: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[Row]:
        where, args = ("WHERE instance_id = $3", [instance]) if instance else ("", [])
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT * FROM actions {where}
                    ORDER BY created_at DESC, action_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
                *args,
            )

    # --- incidents (read side) -------------------------------------------------------------

    async def list_incidents(
        self,
        *,
        status: str | None = None,
        instance: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        clauses: list[str] = []
        args: list[Any] = [limit, offset]
        for column, value in (("status", status), ("instance_id", instance)):
            if value:
                args.append(value)
                clauses.append(f"{column} = ${len(args)}")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT * FROM incidents {where}
                    ORDER BY last_seen DESC, incident_id DESC LIMIT $1 OFFSET $2""",
                *args,
            )

    async def get_incident(self, incident_id: str) -> tuple[Row, list[Row], list[Row]] | None:
        """The incident with its events and actions, or None."""
        async with self.db.transaction(write=False) as tx:
            incident = await tx.fetchrow("SELECT * FROM incidents WHERE incident_id = $1", incident_id)
            if incident is None:
                return None
            events = await tx.fetch(
                """SELECT event_id, received_at, recorded_at, instance_id, alarm_type,
                          incident_change, body FROM events
                   WHERE incident_id = $1 ORDER BY recorded_at DESC, event_id DESC""",
                incident_id,
            )
            actions = await tx.fetch(
                "SELECT * FROM actions WHERE incident_id = $1 ORDER BY created_at DESC, action_id DESC",
                incident_id,
            )
        return incident, events, actions

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


class Unit:
    """The store's writes inside one open transaction (``Store.unit()``)."""

    def __init__(self, tx: Tx):
        self.tx = tx

    # --- notifications ----------------------------------------------------------------------

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

    async def _notify_action(self, action: Row, alarm: dict[str, Any]) -> None:
        notice = action_notice(action, alarm)
        if notice is not None:
            await outbox.insert(self.tx, notice, float(action["updated_at"]))

    # --- events and incidents -------------------------------------------------------------

    async def record_event(
        self, alarm: Alarm, instance_id: str | None, plan: IncidentPlan, now: float
    ) -> EventRecord:
        """Record the event once (by event id) and apply its incident change in the same
        transaction, so a redelivery neither double-counts nor loses the incident update
        (an opened or resolved incident writes its notification here too).
        When the event still needs a decision, also say whether identical content already
        has one (``duplicate``)."""
        inserted = await self.tx.fetchrow(
            """INSERT INTO events (event_id, event_key, received_at, recorded_at,
                   instance_id, alarm_type, incident_key, ungroupable, body)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
            alarm.event_id,
            alarm.event_key,
            alarm.received_at,
            now,
            instance_id,
            alarm.alarm_type,
            plan.key,
            plan.reason if plan.change is IncidentChange.UNGROUPABLE else None,
            json.dumps(alarm.body, ensure_ascii=False),
        )
        if inserted is None:
            row = await self.tx.fetchrow(
                """SELECT e.incident_id, e.incident_change, a.status, a.reason, a.plan
                   FROM events e LEFT JOIN actions a ON a.action_id = e.event_id
                   WHERE e.event_id = $1""",
                alarm.event_id,
            )
            assert row is not None
            done = row["status"] if _is_done(row["status"], row["reason"]) else None
            awaiting = row["plan"] if row["reason"] == AWAITING_CONFIRMATION else None
            duplicate = done is None and awaiting is None and await self._duplicate(alarm)
            return EventRecord(False, row["incident_id"], row["incident_change"], done, awaiting, duplicate)
        incident_id, change = await self._apply_incident(alarm, instance_id, plan, now)
        notice = incident_notice(change, incident_id, plan.key, alarm, instance_id, now)
        if notice is not None:
            await outbox.insert(self.tx, notice, now)
        await self.tx.execute(
            "UPDATE events SET incident_id = $1, incident_change = $2 WHERE event_id = $3",
            incident_id,
            change,
            alarm.event_id,
        )
        return EventRecord(True, incident_id, change, None, duplicate=await self._duplicate(alarm))

    async def _duplicate(self, alarm: Alarm) -> bool:
        # A replay is decided afresh, whatever identical alarms were.
        return not alarm.replayed and await self.key_already_decided(alarm.event_key, alarm.event_id)

    async def _apply_incident(
        self, alarm: Alarm, instance_id: str | None, plan: IncidentPlan, now: float
    ) -> tuple[str | None, str]:
        if plan.change is IncidentChange.UPSERT:
            value = None if alarm.body.get("value") is None else json.dumps(alarm.body["value"])
            row = await self.tx.fetchrow(
                """INSERT INTO incidents (incident_id, incident_key, title, status, instance_id,
                       alarm_type, first_seen, last_seen, event_count, last_value)
                   VALUES ($1, $2, $2, 'open', $3, $4, $5, $5, 1, $6)
                   ON CONFLICT (incident_key) WHERE status = 'open' DO UPDATE SET
                       event_count = incidents.event_count + 1,
                       last_seen = excluded.last_seen,
                       last_value = COALESCE(excluded.last_value, incidents.last_value)
                   RETURNING incident_id, event_count""",
                new_id(),
                plan.key,
                instance_id,
                alarm.alarm_type,
                now,
                value,
            )
            assert row is not None
            return row["incident_id"], "opened" if row["event_count"] == 1 else "grouped"
        if plan.change is IncidentChange.RESOLVE:
            row = await self.tx.fetchrow(
                """UPDATE incidents SET status = 'resolved', resolved_at = $1, last_seen = $1
                   WHERE incident_key = $2 AND status = 'open' RETURNING incident_id""",
                now,
                plan.key,
            )
            return (row["incident_id"], "resolved") if row else (None, "none")
        return None, plan.change.value

    async def key_already_decided(self, event_key: str, event_id: str) -> bool:
        """Has another event with identical content already been decided?"""
        row = await self.tx.fetchrow(
            f"""SELECT 1 AS hit FROM actions WHERE event_key = $1 AND event_id <> $2
               AND status IN ({_DECIDED_SQL}) LIMIT 1""",
            event_key,
            event_id,
        )
        return row is not None

    # --- actions ----------------------------------------------------------------------------

    async def write_action(self, record: ActionRecord) -> bool:
        """Create or update the one action row of this event (its id is the event id).

        Returns False, changing nothing, when the row already holds a final status and this
        is not a replay: the first final word about an event wins, so a second delivery of
        the same event racing the first cannot overwrite "succeeded" with a skip.
        """
        row = await self.tx.fetchrow(
            f"""INSERT INTO actions (action_id, event_id, event_key, incident_id, instance_id,
                   alarm_type, status, reason, detail, plan, attempts, created_at, updated_at, from_plan)
               VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $13)
               ON CONFLICT (action_id) DO UPDATE SET
                   status = excluded.status, reason = excluded.reason,
                   detail = excluded.detail, plan = COALESCE(excluded.plan, actions.plan),
                   attempts = excluded.attempts, updated_at = excluded.updated_at,
                   from_plan = COALESCE(excluded.from_plan, actions.from_plan)
               WHERE (actions.status NOT IN ({_DONE_SQL})
                      AND COALESCE(actions.reason, '') <> '{AWAITING_CONFIRMATION}') OR $12
               RETURNING *""",
            record.alarm.event_id,
            record.alarm.event_key,
            record.incident_id,
            record.instance_id,
            record.alarm.alarm_type,
            record.status.value,
            record.reason,
            record.detail,
            record.plan,
            record.attempts,
            record.now,
            record.alarm.replayed,
            record.from_plan,
        )
        if row is None:
            return False
        await self._notify_action(row, alarm_data(record.alarm))
        return True

    async def confirm_action(self, action_id: str, status: ActionStatus, detail: str, now: float) -> bool:
        """Close an upgrade that was awaiting confirmation (``succeeded`` / ``unconfirmed``)."""
        row = await self.tx.fetchrow(
            """UPDATE actions SET status = $1, reason = NULL, detail = $2, updated_at = $3
               WHERE action_id = $4 AND status = 'in_progress' AND reason = $5
               RETURNING *""",
            status.value,
            detail,
            now,
            action_id,
            AWAITING_CONFIRMATION,
        )
        if row is None:
            return False
        event = await self.tx.fetchrow(
            "SELECT event_id, received_at, body FROM events WHERE event_id = $1", row["event_id"]
        )
        await self._notify_action(row, _event_alarm_data(event) if event else {"event_id": row["event_id"]})
        return True

    # --- cooldown claims -------------------------------------------------------------------

    async def try_claim(
        self, scope: str, instance_id: str, owner: str, now: float, lease: float, cooldown: float
    ) -> ClaimResult:
        """Take the claim on ``scope`` in one conditional upsert (see ``claim_verdict``).

        A held lease that ran out is not taken: the same statement marks it ``stale`` and
        gives its holder (still the owner) one more lease from now, and says ``NOTICED``."""
        row = await self.tx.fetchrow(
            """INSERT INTO claims (scope, instance_id, status, owner, claimed_at,
                   lease_until, cooldown_until)
               VALUES ($1, $2, 'held', $3, $4, $5, $6)
               ON CONFLICT (scope) DO UPDATE SET
                   status = CASE WHEN claims.status = 'held' THEN 'stale' ELSE 'held' END,
                   owner = CASE WHEN claims.status = 'held' THEN claims.owner ELSE excluded.owner END,
                   claimed_at = CASE WHEN claims.status = 'held'
                                THEN claims.claimed_at ELSE excluded.claimed_at END,
                   lease_until = excluded.lease_until,
                   cooldown_until = CASE WHEN claims.status = 'held'
                                    THEN claims.cooldown_until ELSE excluded.cooldown_until END
               WHERE claims.status = 'released'
                  OR (claims.status IN ('held', 'stale') AND claims.lease_until <= excluded.claimed_at)
                  OR (claims.status = 'done' AND claims.cooldown_until <= excluded.claimed_at)
               RETURNING scope, status, owner, lease_until, cooldown_until""",
            scope,
            instance_id,
            owner,
            now,
            now + lease,
            now + cooldown,
        )
        if row is not None:
            if row["owner"] == owner:
                return ClaimResult(ClaimVerdict.GRANTED, None)
            return ClaimResult(ClaimVerdict.NOTICED, _claim_row(row))
        current = await self.tx.fetchrow("SELECT * FROM claims WHERE scope = $1", scope)
        claim = _claim_row(current) if current else None
        verdict = claim_verdict(claim, now)
        # The upsert refused, so the rules cannot say "granted" (or "noticed") for this row.
        if verdict in (ClaimVerdict.GRANTED, ClaimVerdict.NOTICED):
            verdict = ClaimVerdict.HELD
        return ClaimResult(verdict, claim)

    async def renew_claim(self, scope: str, owner: str, lease_until: float) -> bool:
        """The holder is still at work: extend its lease (and end a takeover notice)."""
        row = await self.tx.fetchrow(
            """UPDATE claims SET status = 'held', lease_until = $3
               WHERE scope = $1 AND owner = $2 AND status IN ('held', 'stale')
               RETURNING scope""",
            scope,
            owner,
            lease_until,
        )
        return row is not None

    async def finish_claim(
        self, scope: str, owner: str, *, succeeded: bool, record: ActionRecord | None = None
    ) -> bool:
        """``done`` (cooldown runs from the claim) or ``released``, only by its owner, and the
        action's outcome in the same transaction: no one sees the cooldown without the outcome.
        Returns what ``write_action`` would (True when there is no record)."""
        status = ClaimStatus.DONE if succeeded else ClaimStatus.RELEASED
        await self.tx.execute(
            "UPDATE claims SET status = $1 WHERE scope = $2 AND owner = $3",
            status.value,
            scope,
            owner,
        )
        return await self.write_action(record) if record is not None else True


@dataclass(frozen=True)
class ActionRecord:
    """One write of an event's action row."""

    alarm: Alarm
    status: ActionStatus
    now: float
    incident_id: str | None = None
    instance_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    plan: str | None = None
    attempts: int = 0
    from_plan: str | None = None  # the plan read before the upgrade, where it was


def _event_alarm_data(event: Row) -> dict[str, Any]:
    """``alarm_data`` of a recorded event."""
    body = json.loads(event["body"]) if isinstance(event["body"], str) else event["body"]
    alarm = Alarm(event["event_id"], float(event["received_at"]), body, "")
    return alarm_data(alarm)


def _claim_row(row: Row) -> ClaimRow:
    return ClaimRow(
        scope=row["scope"],
        status=ClaimStatus(row["status"]),
        owner=row["owner"],
        lease_until=float(row["lease_until"]),
        cooldown_until=float(row["cooldown_until"]),
    )
