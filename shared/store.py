"""The state store: events, incidents, actions and cooldown claims, behind one interface.

Every operation is written once; ``shared.db`` runs it on SQLite or PostgreSQL. Operations
that must be atomic across processes and hosts are single conditional statements (the
incident upsert, the claim upsert), never a read followed by a write.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from shared import outbox, watch
from shared.alarm import Alarm, new_id
from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.controls import GLOBAL, ControlError, Pause
from shared.db import Database, Row, Tx, lit, open_database, rows_cte
from shared.errors import StoreError
from shared.incidents import IncidentChange, IncidentPlan
from shared.notifications import EventType, Notice, action_notice, alarm_data
from shared.snapshot import Arrival as Arrival
from shared.snapshot import EventState, Snapshot, Writes, record_arrival
from shared.statuses import ActionStatus as ActionStatus

# An event whose action reached one of these needs no more work when redelivered.
DONE_STATUSES = frozenset(
    {
        ActionStatus.SUCCEEDED,
        ActionStatus.SKIPPED,
        ActionStatus.DRY_RUN,
        ActionStatus.FAILED,
        ActionStatus.UNCONFIRMED,
        ActionStatus.DENIED,
        ActionStatus.EXPIRED,
    }
)
# The alarm's own work is done, and the approval (not a redelivery) decides what follows.
HANDED_OFF = frozenset({ActionStatus.AWAITING_APPROVAL, ActionStatus.APPROVED})
# An identical re-send of an event whose action reached one of these is a ``duplicate``. Fewer
# than DONE_STATUSES: a failed or unconfirmed upgrade is no decision that stands, so the same
# alarm sent again deserves its own try (the cooldown claim still guards against a repeat).
DECIDED_STATUSES = frozenset({ActionStatus.SUCCEEDED, ActionStatus.SKIPPED, ActionStatus.DRY_RUN})
# Skips that say "not now" rather than "no": an identical alarm after a pause ended or an
# approval was denied is decided afresh (level-triggered), not a duplicate.
# A cleared condition too: the next identical alarm is checked against the broker afresh.
# And one that met a plan change still being applied: the alarm after it is looked at afresh.
PASSING_SKIPS = ("paused", "awaiting_approval", "condition_cleared", "reconfiguring")


# Statuses as SQL literals, for the statements below: spelled once, in the enums above.
_APPROVED = lit(ActionStatus.APPROVED)
_AWAITING = lit(ClaimStatus.AWAITING)
_AWAITING_APPROVAL = lit(ActionStatus.AWAITING_APPROVAL)
_DONE = lit(ClaimStatus.DONE)
_EXPIRED = lit(ActionStatus.EXPIRED)
_HELD = lit(ClaimStatus.HELD)
_IN_PROGRESS = lit(ActionStatus.IN_PROGRESS)
_RELEASED = lit(ClaimStatus.RELEASED)
_RETRYING = lit(ActionStatus.RETRYING)
_SKIPPED = lit(ActionStatus.SKIPPED)
_STALE = lit(ClaimStatus.STALE)


def _sql_list(statuses: frozenset[ActionStatus]) -> str:
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


_DONE_SQL = _sql_list(DONE_STATUSES)
_SETTLED_SQL = _sql_list(DONE_STATUSES | HANDED_OFF)
_PASSING_SQL = ", ".join(f"'{reason}'" for reason in PASSING_SKIPS)
_DECIDED_SQL = _sql_list(DECIDED_STATUSES)
# An action row that makes identical content a duplicate (``DECIDED_STATUSES``, not passing).
_DECIDED_ROW = f"""status IN ({_DECIDED_SQL})
    AND NOT (status = {_SKIPPED} AND COALESCE(reason, '') IN ({_PASSING_SQL}))"""


def is_decided(status: ActionStatus, reason: str | None) -> bool:
    """``_DECIDED_ROW`` for a row about to be written."""
    return status in DECIDED_STATUSES and not (status is ActionStatus.SKIPPED and reason in PASSING_SKIPS)


# An upgrade CloudAMQP accepted, which it applies asynchronously while a check message follows
# it: "in_progress" with this reason. The alarm's own work is done; only the check may change
# the row (and no other plan change of the instance starts meanwhile).
RECONFIGURING = "reconfiguring"


# The columns ``Unit.flush`` writes actions from (``rows_cte``).
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
)

# An action row as the views show it: with its approval, when it has one.
_ACTION_COLUMNS = """a.*, p.deadline AS approval_deadline, p.decided_by AS approval_decided_by,
    p.decided_at AS approval_decided_at, p.decision_reason AS approval_reason"""
_APPROVAL_JOIN = "LEFT JOIN approvals p ON p.action_id = a.action_id"


def is_done(status: str | None, reason: str | None) -> bool:
    return (
        status in DONE_STATUSES
        or status in HANDED_OFF
        or (status == ActionStatus.IN_PROGRESS and reason == RECONFIGURING)
    )


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
    [
        # The operator's controls: pauses (maintenance windows), approvals, and the audit trail.
        """CREATE TABLE pauses (
            scope TEXT PRIMARY KEY,
            until_at DOUBLE PRECISION NOT NULL,
            operator TEXT NOT NULL,
            reason TEXT,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE approvals (
            action_id TEXT PRIMARY KEY,
            scope TEXT NOT NULL,
            owner TEXT NOT NULL,
            instance_id TEXT NOT NULL,
            plan TEXT NOT NULL,
            reason TEXT NOT NULL,
            rule TEXT NOT NULL,
            cooldown_seconds DOUBLE PRECISION NOT NULL,
            requested_at DOUBLE PRECISION NOT NULL,
            deadline DOUBLE PRECISION NOT NULL,
            decided_by TEXT,
            decided_at DOUBLE PRECISION,
            decision_reason TEXT
        )""",
        # Append-only: rows are inserted (with ids that make a repeated write a no-op), never
        # updated or deleted, and nothing in the API can change them.
        """CREATE TABLE audit (
            audit_id TEXT PRIMARY KEY,
            at DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            kind TEXT NOT NULL,
            act TEXT NOT NULL,
            target TEXT,
            detail TEXT
        )""",
        "CREATE INDEX audit_at ON audit (at)",
    ],
    # Notifications (issue #14): the outbox, delivery records, disabled endpoints, and the
    # actions' from_plan column. The DDL lives with its queries in shared/outbox.py.
    outbox.MIGRATION,
    # Looking at the broker (issue #17): verification, watchdog, samples, advice (shared/watch.py).
    watch.MIGRATION,
    # CloudAMQP's asynchronous plan change (issue #23): the reason's name, and how long the
    # reconfiguration took once CloudAMQP said it was done.
    [
        "UPDATE actions SET reason = 'reconfiguring' WHERE reason = 'awaiting_confirmation'",
        "DROP INDEX actions_awaiting",
        "CREATE INDEX actions_reconfiguring ON actions (updated_at) WHERE reason = 'reconfiguring'",
        "CREATE INDEX actions_reconfiguring_instance ON actions (instance_id) WHERE reason = 'reconfiguring'",
        "ALTER TABLE actions ADD COLUMN reconfigure_seconds DOUBLE PRECISION",
    ],
    # Console sessions ended by a logout (issue 24): every copy of such a cookie is refused
    # until it would have expired anyway.
    [
        """CREATE TABLE console_revoked (
            session_id TEXT PRIMARY KEY,
            until_at DOUBLE PRECISION NOT NULL
        )""",
    ],
]


@dataclass(frozen=True)
class EventRecord:
    """What recording one event did (``Unit.record_event``)."""

    new: bool
    incident_id: str | None
    incident_change: str | None


# Lock names (``Unit._lock``): one namespace per kind of row.
_INCIDENT, _CLAIM = "incident:", "claim:"

_EVENT_COLUMNS = (
    ("event_id", "text"),
    ("event_key", "text"),
    ("received_at", "float8"),
    ("instance_id", "text"),
    ("alarm_type", "text"),
    ("incident_key", "text"),
    ("ungroupable", "text"),
    ("body", "text"),
)
_INCIDENT_COLUMNS = (
    ("incident_id", "text"),
    ("incident_key", "text"),
    ("instance_id", "text"),
    ("alarm_type", "text"),
    ("n", "int"),
    ("last_value", "text"),
)


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
        self,
        scope: str,
        owner: str,
        *,
        succeeded: bool,
        record: ActionRecord | None = None,
        audit: AuditEntry | None = None,
    ) -> bool:
        [written] = await self.finish_claims([Finish(scope, owner, succeeded, record, audit)])
        return written

    async def finish_claims(self, finishes: Sequence[Finish]) -> list[bool]:
        """``Unit.finish_claims`` in a transaction of its own."""
        async with self.unit() as unit:
            return await unit.finish_claims(finishes)

    async def confirm_action(
        self,
        action_id: str,
        status: ActionStatus,
        detail: str,
        now: float,
        reconfigure_seconds: float | None = None,
    ) -> bool:
        async with self.unit() as unit:
            return await unit.confirm_action(action_id, status, detail, now, reconfigure_seconds)

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
        self,
        *,
        instance: str | None = None,
        status: str | None = None,
        alarm_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = _filters(
            (("a.instance_id", instance), ("a.status", status), ("a.alarm_type", alarm_type)), 2
        )
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT {_ACTION_COLUMNS} FROM actions a {_APPROVAL_JOIN} {where}
                    ORDER BY a.created_at DESC, a.action_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
                *args,
            )

    async def revoke_session(self, session_id: str, until: float, now: float) -> None:
        """End a console session for every copy of its cookie (and forget expired ones)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM console_revoked WHERE until_at < $1", now)
            await tx.execute(
                """INSERT INTO console_revoked (session_id, until_at) VALUES ($1, $2)
                   ON CONFLICT (session_id) DO NOTHING""",
                session_id,
                until,
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
        return [_pause(r) for r in rows]

    async def list_audit(
        self,
        *,
        act: str | None = None,
        actor: str | None = None,
        target: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = _filters((("act", act), ("actor", actor), ("target", target)), 2)
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
                f"SELECT {_ACTION_COLUMNS} FROM actions a {_APPROVAL_JOIN} WHERE a.action_id = $1",
                action_id,
            )

    # --- incidents (read side) -------------------------------------------------------------

    async def list_incidents(
        self,
        *,
        status: str | None = None,
        instance: str | None = None,
        alarm_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Row]:
        where, args = _filters((("status", status), ("instance_id", instance), ("alarm_type", alarm_type)), 2)
        async with self.db.transaction(write=False) as tx:
            return await tx.fetch(
                f"""SELECT * FROM incidents {where}
                    ORDER BY last_seen DESC, incident_id DESC LIMIT $1 OFFSET $2""",
                limit,
                offset,
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
                f"""SELECT {_ACTION_COLUMNS} FROM actions a {_APPROVAL_JOIN} WHERE a.incident_id = $1
                    ORDER BY a.created_at DESC, a.action_id DESC""",
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

    # --- an alarm batch's first step: one read, one write (worker.first_step folds between) ---

    async def load(self, arrivals: Sequence[Arrival], scopes: Iterable[str], now: float) -> Snapshot:
        """Everything a batch's first step needs, read once: its events recorded (those
        recorded first by this call are ``new``; what the others have — incident, action,
        approval), the open incidents of its keys and the claim rows of its scopes (locked,
        in key and then scope order, as every batch locks them), the decided contents, the
        running pauses and the plan changes under way of its instances."""
        snapshot = Snapshot(scopes=set(scopes))
        if not arrivals:
            return snapshot
        keys = sorted({a.plan.key for a in arrivals if a.plan.key is not None})
        # Nobody else opens an incident of these keys or takes a claim of these scopes until
        # this transaction ends (a row that exists is also locked by the reads below).
        await self._lock([_INCIDENT + k for k in keys] + [_CLAIM + sc for sc in snapshot.scopes])
        snapshot.new = await self._insert_events(arrivals, now)
        earlier = await self._recorded(sorted({a.alarm.event_id for a in arrivals} - snapshot.new))
        for event_id, row in earlier.items():
            snapshot.events[event_id] = EventState(
                row["incident_id"],
                row["incident_change"],
                row["status"],
                row["reason"],
                row["plan"],
                float(row["deadline"])
                if row["status"] in HANDED_OFF and row["deadline"] is not None
                else None,
            )
        snapshot.open_incidents = await self._open_incidents(keys)
        snapshot.decided = await self._decided_events(sorted({a.alarm.event_key for a in arrivals}))
        snapshot.claims = await self._locked_claims(sorted(snapshot.scopes))
        rows = await self.tx.fetch("SELECT * FROM pauses WHERE until_at > $1", now)
        snapshot.pauses = [_pause(r) for r in rows]
        instances = sorted({a.instance_id for a in arrivals if a.instance_id is not None})
        snapshot.reconfiguring = await self._reconfiguring(instances)
        return snapshot

    async def _lock(self, names: Sequence[str]) -> None:
        """PostgreSQL: transaction locks on these names (an incident key, a claim scope), taken
        in one order by every transaction, so that the first step's read, fold and write of a
        key or a scope is never interleaved with another's. (SQLite: a write transaction holds
        the whole file already.)"""
        if self.tx.dialect != "postgresql" or not names:
            return
        await self.tx.execute(
            """SELECT pg_advisory_xact_lock(hashtextextended(name, 7461207))
               FROM (SELECT name FROM unnest(CAST($1 AS text[])) AS name ORDER BY name) AS ordered""",
            sorted(set(names)),
        )

    async def _insert_events(self, arrivals: Sequence[Arrival], now: float) -> set[str]:
        """Record each event once (by event id), in event id order (the order every batch
        takes their index entries in); the ids this call recorded."""
        first: dict[str, Arrival] = {}
        for a in arrivals:
            first.setdefault(a.alarm.event_id, a)
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            _EVENT_COLUMNS,
            [
                (
                    a.alarm.event_id,
                    a.alarm.event_key,
                    a.alarm.received_at,
                    a.instance_id,
                    a.alarm.alarm_type,
                    a.plan.key,
                    a.plan.reason if a.plan.change is IncidentChange.UNGROUPABLE else None,
                    json.dumps(a.alarm.body, ensure_ascii=False),
                )
                for _, a in sorted(first.items())
            ],
            first=2,
        )
        inserted = await self.tx.fetch(
            f"""WITH {cte}
               INSERT INTO events (event_id, event_key, received_at, recorded_at, instance_id,
                   alarm_type, incident_key, ungroupable, body)
               SELECT event_id, event_key, received_at, CAST($1 AS DOUBLE PRECISION), instance_id,
                   alarm_type, incident_key, ungroupable, body FROM v WHERE true
               ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
            now,
            *args,
        )
        return {row["event_id"] for row in inserted}

    async def _open_incidents(self, keys: Sequence[str]) -> dict[str, str]:
        if not keys:
            return {}
        cte, args = rows_cte(self.tx.dialect, "v", [("incident_key", "text")], [(k,) for k in keys])
        lock = " FOR UPDATE OF i" if self.tx.dialect == "postgresql" else ""
        rows = await self.tx.fetch(
            f"""WITH {cte} SELECT i.incident_id, i.incident_key FROM incidents i
               WHERE i.status = 'open' AND i.incident_key IN (SELECT incident_key FROM v)
               ORDER BY i.incident_key{lock}""",
            *args,
        )
        return {row["incident_key"]: row["incident_id"] for row in rows}

    async def _decided_events(self, event_keys: Sequence[str]) -> dict[str, set[str]]:
        """For each content, the lowest and highest event id among its events whose action is a
        decision that stands: enough to tell whether another event than a given one has one."""
        if not event_keys:
            return {}
        cte, args = rows_cte(self.tx.dialect, "v", [("event_key", "text")], [(k,) for k in event_keys])
        rows = await self.tx.fetch(
            f"""WITH {cte}
               SELECT event_key, MIN(event_id) AS lo, MAX(event_id) AS hi FROM actions
               WHERE event_key IN (SELECT event_key FROM v) AND {_DECIDED_ROW}
               GROUP BY event_key""",
            *args,
        )
        return {row["event_key"]: {row["lo"], row["hi"]} for row in rows}

    async def _locked_claims(self, scopes: Sequence[str]) -> dict[str, ClaimRow]:
        if not scopes:
            return {}
        cte, args = rows_cte(self.tx.dialect, "v", [("scope", "text")], [(sc,) for sc in scopes])
        lock = " FOR UPDATE OF c" if self.tx.dialect == "postgresql" else ""
        rows = await self.tx.fetch(
            f"""WITH {cte} SELECT c.* FROM claims c WHERE c.scope IN (SELECT scope FROM v)
               ORDER BY c.scope{lock}""",
            *args,
        )
        return {row["scope"]: _claim_row(row) for row in rows}

    async def _reconfiguring(self, instances: Sequence[str]) -> dict[str, str]:
        if not instances:
            return {}
        cte, args = rows_cte(self.tx.dialect, "v", [("instance_id", "text")], [(i,) for i in instances])
        rows = await self.tx.fetch(
            f"""WITH {cte} SELECT instance_id, plan FROM actions
               WHERE reason = '{RECONFIGURING}' AND status = '{ActionStatus.IN_PROGRESS.value}'
               AND instance_id IN (SELECT instance_id FROM v)""",
            *args,
        )
        return {row["instance_id"]: row["plan"] for row in rows}

    async def apply(self, writes: Writes, now: float) -> list[bool]:
        """Write what a batch's first step changed, in a handful of set-based statements;
        for each action row (in ``writes.actions`` order) whether it was written (False:
        another delivery of the event had the final word first)."""
        await self._apply_incidents_of(writes, now)
        if writes.notices:
            await outbox.insert_many(self.tx, [(notice, now) for notice in writes.notices])
        written = await self.write_actions(writes.actions) if writes.actions else []
        if writes.claims:
            await self._put_claims(sorted(writes.claims.values(), key=lambda c: c.scope))
        for request in writes.approvals:
            await self._put_approval(request)
        if writes.audits:
            await self.audit_many(writes.audits)
        return written

    async def _apply_incidents_of(self, writes: Writes, now: float) -> None:
        dialect = self.tx.dialect
        if writes.grouped:
            cte, args = rows_cte(
                dialect,
                "v",
                [("incident_id", "text"), ("n", "int"), ("last_value", "text")],
                [
                    (iid, g.count, None if g.last_value is None else json.dumps(g.last_value))
                    for iid, g in sorted(writes.grouped.items())
                ],
                first=2,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE incidents SET event_count = incidents.event_count + v.n,
                       last_seen = CAST($1 AS DOUBLE PRECISION),
                       last_value = COALESCE(v.last_value, incidents.last_value)
                   FROM v WHERE incidents.incident_id = v.incident_id""",
                now,
                *args,
            )
        if writes.resolved:
            cte, args = rows_cte(dialect, "v", [("incident_id", "text")], [(i,) for i in writes.resolved], 2)
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE incidents SET status = 'resolved', resolved_at = CAST($1 AS DOUBLE PRECISION),
                       last_seen = CAST($1 AS DOUBLE PRECISION)
                   WHERE incident_id IN (SELECT incident_id FROM v)""",
                now,
                *args,
            )
        if writes.new_incidents:
            cte, args = rows_cte(
                dialect,
                "v",
                (*_INCIDENT_COLUMNS, ("status", "text")),
                [
                    (
                        n.incident_id,
                        n.key,
                        n.instance_id,
                        n.alarm_type,
                        n.count,
                        None if n.last_value is None else json.dumps(n.last_value),
                        "resolved" if n.resolved else "open",
                    )
                    for n in writes.new_incidents.values()
                ],
                first=2,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   INSERT INTO incidents (incident_id, incident_key, title, status, instance_id,
                       alarm_type, first_seen, last_seen, event_count, last_value, resolved_at)
                   SELECT incident_id, incident_key, incident_key, status, instance_id, alarm_type,
                       CAST($1 AS DOUBLE PRECISION), CAST($1 AS DOUBLE PRECISION), n, last_value,
                       CASE WHEN status = 'resolved' THEN CAST($1 AS DOUBLE PRECISION) END
                   FROM v WHERE true""",
                now,
                *args,
            )
        if writes.event_incidents:
            cte, args = rows_cte(
                dialect,
                "v",
                [("event_id", "text"), ("incident_id", "text"), ("incident_change", "text")],
                writes.event_incidents,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE events SET incident_id = v.incident_id, incident_change = v.incident_change
                   FROM v WHERE events.event_id = v.event_id""",
                *args,
            )

    async def _put_claims(self, rows: Sequence[ClaimRow]) -> None:
        """The claim rows as the fold left them (their rows locked by ``load``)."""
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [
                ("scope", "text"),
                ("instance_id", "text"),
                ("status", "text"),
                ("owner", "text"),
                ("claimed_at", "float8"),
                ("lease_until", "float8"),
                ("cooldown_until", "float8"),
            ],
            [
                (
                    r.scope,
                    r.instance_id,
                    r.status.value,
                    r.owner,
                    r.claimed_at,
                    r.lease_until,
                    r.cooldown_until,
                )
                for r in rows
            ],
        )
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO claims (scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until)
               SELECT scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until
               FROM v WHERE true
               ON CONFLICT (scope) DO UPDATE SET instance_id = excluded.instance_id,
                   status = excluded.status, owner = excluded.owner, claimed_at = excluded.claimed_at,
                   lease_until = excluded.lease_until, cooldown_until = excluded.cooldown_until""",
            *args,
        )

    # --- events and incidents -------------------------------------------------------------

    async def record_event(
        self, alarm: Alarm, instance_id: str | None, plan: IncidentPlan, now: float
    ) -> EventRecord:
        """``record_events`` of one alarm."""
        [record] = await self.record_events([Arrival(alarm, instance_id, plan)], now)
        return record

    async def record_events(self, arrivals: Sequence[Arrival], now: float) -> list[EventRecord]:
        """Record events (each once, by event id) and their incident changes, in order: the
        first step's read and write (``load``, ``apply``) with nothing decided in between."""
        snapshot = await self.load(arrivals, (), now)
        writes = Writes()
        records = []
        for arrival in arrivals:
            new, state = record_arrival(snapshot, writes, arrival, now, new_id)
            records.append(EventRecord(new, state.incident_id, state.incident_change))
        await self.apply(writes, now)
        return records

    async def _recorded(self, event_ids: Sequence[str]) -> dict[str, Row]:
        """What the store holds about events recorded before: incident, action, approval."""
        if not event_ids:
            return {}
        cte, args = rows_cte(self.tx.dialect, "v", [("event_id", "text")], [(i,) for i in event_ids])
        rows = await self.tx.fetch(
            f"""WITH {cte}
               SELECT e.event_id, e.incident_id, e.incident_change, a.status, a.reason, a.plan, p.deadline
               FROM v JOIN events e ON e.event_id = v.event_id
               LEFT JOIN actions a ON a.action_id = e.event_id
               LEFT JOIN approvals p ON p.action_id = e.event_id""",
            *args,
        )
        return {row["event_id"]: row for row in rows}

    async def key_already_decided(self, event_key: str, event_id: str) -> bool:
        """Has another event with identical content already been decided?"""
        row = await self.tx.fetchrow(
            f"""SELECT 1 AS hit FROM actions WHERE event_key = $1 AND event_id <> $2
               AND {_DECIDED_ROW} LIMIT 1""",
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
                       from_plan, verification)
                   SELECT action_id, action_id, event_key, incident_id, instance_id, alarm_type, status,
                       reason, detail, plan, attempts, at, at, from_plan, verification FROM v WHERE true
                   ON CONFLICT (action_id) DO UPDATE SET
                       status = excluded.status, reason = excluded.reason,
                       detail = excluded.detail, plan = COALESCE(excluded.plan, actions.plan),
                       attempts = excluded.attempts, updated_at = excluded.updated_at,
                       from_plan = COALESCE(excluded.from_plan, actions.from_plan),
                       verification = COALESCE(excluded.verification, actions.verification)
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
            await self.audit(
                AuditEntry(
                    f"upgrade.confirmed:{action_id}",
                    now,
                    AUTOPILOT,
                    "automatic",
                    "upgrade.confirmed",
                    row["instance_id"],
                    {
                        "action_id": action_id,
                        "plan": row["plan"],
                        "reconfigure_seconds": reconfigure_seconds,
                        "detail": detail,
                    },
                )
            )
        event = await self.tx.fetchrow(
            "SELECT event_id, received_at, body FROM events WHERE event_id = $1", row["event_id"]
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
            """SELECT detail FROM audit WHERE act = 'upgrade' AND target = $1
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

    # --- cooldown claims -------------------------------------------------------------------

    async def try_claim(
        self, scope: str, instance_id: str, owner: str, now: float, lease: float, cooldown: float
    ) -> ClaimResult:
        """Take the claim on ``scope`` in one conditional upsert (see ``claim_verdict``).

        A held lease that ran out is not taken: the same statement marks it ``stale`` and
        gives its holder (still the owner) one more lease from now, and says ``NOTICED``."""
        await self._lock([_CLAIM + scope])
        row = await self.tx.fetchrow(
            f"""INSERT INTO claims (scope, instance_id, status, owner, claimed_at,
                   lease_until, cooldown_until)
               VALUES ($1, $2, {_HELD}, $3, $4, $5, $6)
               ON CONFLICT (scope) DO UPDATE SET
                   status = CASE WHEN claims.status = {_HELD} THEN {_STALE} ELSE {_HELD} END,
                   owner = CASE WHEN claims.status = {_HELD} THEN claims.owner ELSE excluded.owner END,
                   claimed_at = CASE WHEN claims.status = {_HELD}
                                THEN claims.claimed_at ELSE excluded.claimed_at END,
                   lease_until = excluded.lease_until,
                   cooldown_until = CASE WHEN claims.status = {_HELD}
                                    THEN claims.cooldown_until ELSE excluded.cooldown_until END
               WHERE claims.status = {_RELEASED}
                  OR (claims.status IN ({_HELD}, {_STALE}, {_AWAITING})
                      AND claims.lease_until <= excluded.claimed_at)
                  OR (claims.status = {_DONE} AND claims.cooldown_until <= excluded.claimed_at)
               RETURNING scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until""",
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
            f"""UPDATE claims SET status = {_HELD}, lease_until = $3
               WHERE scope = $1 AND owner = $2 AND status IN ({_HELD}, {_STALE})
               RETURNING scope""",
            scope,
            owner,
            lease_until,
        )
        return row is not None

    async def finish_claim(
        self, scope: str, owner: str, *, succeeded: bool, record: ActionRecord | None = None
    ) -> bool:
        """``finish_claims`` of one claim."""
        [written] = await self.finish_claims([Finish(scope, owner, succeeded, record)])
        return written

    async def finish_claims(self, finishes: Sequence[Finish]) -> list[bool]:
        """Each claim ``done`` (cooldown runs from the claim) or ``released``, only by its
        owner, with the action's outcome and the audit entry in the same transaction: no one
        sees the cooldown without the outcome. A handful of statements for any number of
        claims. Returns, for each, what ``write_action`` would (True without a record)."""
        audits = [f.audit for f in finishes if f.audit is not None]
        if audits:
            await self.audit_many(audits)
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [("scope", "text"), ("owner", "text"), ("status", "text")],
            sorted(
                (f.scope, f.owner, (ClaimStatus.DONE if f.succeeded else ClaimStatus.RELEASED).value)
                for f in finishes
            ),
        )
        if self.tx.dialect == "postgresql":
            # Rows locked in scope order, as alarms' claims are taken (an UPDATE ... FROM
            # locks them in whatever order its join reads them: a deadlock with a batch).
            await self.tx.execute(
                f"""WITH {cte} SELECT c.scope FROM claims c
                    WHERE c.scope IN (SELECT scope FROM v) ORDER BY c.scope FOR UPDATE OF c""",
                *args,
            )
        await self.tx.execute(
            f"""WITH {cte}
               UPDATE claims SET status = v.status FROM v
               WHERE claims.scope = v.scope AND claims.owner = v.owner""",
            *args,
        )
        records = [f.record for f in finishes if f.record is not None]
        written = iter(await self.write_actions(records))
        return [next(written) if f.record is not None else True for f in finishes]

    # --- the operator's controls: pauses, approvals, audit --------------------------------

    async def pauses_for(self, instance: str, now: float) -> list[Pause]:
        """Pauses holding ``instance`` at ``now`` (its own and the global one)."""
        rows = await self.tx.fetch(
            "SELECT * FROM pauses WHERE until_at > $1 AND scope IN ($2, $3)", now, instance, GLOBAL
        )
        return [_pause(r) for r in rows]

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
        return _pause(row) if row is not None and row["until_at"] > now else None

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
        """An action with its approval and the alarm that caused it (None: no such action)."""
        return await self.tx.fetchrow(
            """SELECT a.action_id, a.status, a.incident_id, a.attempts, p.scope, p.owner,
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
    verification: dict[str, Any] | None = None  # what the broker check saw (shared.verify)


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
    )


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
        instance_id=row.get("instance_id") or "",
        claimed_at=float(row.get("claimed_at") or 0.0),
    )


AUTOPILOT = "autopilot"  # the actor of automatic entries in the audit trail


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail: an operator's act, or an automatic one (an upgrade)."""

    audit_id: str
    at: float
    actor: str
    kind: str  # "operator" or "automatic"
    act: str  # e.g. "pause", "resume", "approve", "deny", "upgrade", "approval.requested"
    target: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class Finish:
    """An upgrade's end in the store: its claim completed (``succeeded``: the cooldown runs)
    or released by its owner, with the action's outcome and, for an upgrade, its audit entry."""

    scope: str
    owner: str
    succeeded: bool
    record: ActionRecord | None = None
    audit: AuditEntry | None = None


_AUDIT_COLUMNS = (
    ("audit_id", "text"),
    ("at", "float8"),
    ("actor", "text"),
    ("kind", "text"),
    ("act", "text"),
    ("target", "text"),
    ("detail", "text"),
)


@dataclass(frozen=True)
class ApprovalRequest:
    action_id: str
    scope: str
    owner: str
    instance_id: str
    plan: str
    reason: str
    rule: str
    cooldown_seconds: float
    requested_at: float
    deadline: float


@dataclass(frozen=True)
class ApprovalDecision:
    action_id: str
    status: ActionStatus  # APPROVED or DENIED
    operator: str
    reason: str | None
    now: float
    lease: float  # the claim's lease once approved (a worker is then about to call)


def _filters(pairs: tuple[tuple[str, str | None], ...], taken: int) -> tuple[str, list[Any]]:
    """``WHERE column = $n AND …`` for the pairs whose value is given, numbered after the
    ``taken`` placeholders the query already uses, and their arguments."""
    clauses: list[str] = []
    args: list[Any] = []
    for column, value in pairs:
        if value:
            args.append(value)
            clauses.append(f"{column} = ${taken + len(args)}")
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _pause(row: Row) -> Pause:
    return Pause(
        row["scope"], float(row["until_at"]), row["operator"], row["reason"], float(row["created_at"])
    )
