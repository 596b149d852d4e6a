"""Pruning in the store: one small batch of one kind of record per transaction, and what the
metrics say about the store (the oldest row of each kind, its size). The rules are
``shared.retention``'s; the job that paces the batches is ``worker.retention``.

A batch is a window of the kind's rows in the order of its time index (time, then id): the
next ``limit`` rows after where the last batch stopped, kept ones included, so a batch's work
is bounded however many old rows are kept and however many share a time. Of the window, the
rows no rule protects go, each statement set-based.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from shared import metrics
from shared.db import Database, FileFacts, SqliteDatabase, Tx, lit, lits, rows_cte
from shared.retention import FINAL_DELIVERIES, UNFINISHED, Kind, ends_going
from shared.statuses import DONE_STATUSES, IncidentStatus

log = structlog.get_logger("store.retention")


_RESOLVED = lit(IncidentStatus.RESOLVED)
# The same text as the partial index ``actions_unfinished`` (the retention migration), which a
# query uses only when its condition reads the same.
UNFINISHED_SQL = lits(UNFINISHED)
_DONE_SQL = lits(DONE_STATUSES)
_FINAL = sorted(FINAL_DELIVERIES)

# What keeps a row whatever its age, as conditions on the row (``{t}``: the table's name;
# $3 is the cutoff, $6 and $7 the final delivery statuses).
# An event whose action is unfinished: the approval reads its body, a confirmation quotes it.
EVENT_KEPT = f"""EXISTS (SELECT 1 FROM actions a WHERE a.action_id = {{t}}.event_id
    AND a.status IN ({UNFINISHED_SQL}))"""
# An incident still open, resolved within the limit, or with an unfinished action.
INCIDENT_KEPT = f"""({{t}}.status <> {_RESOLVED} OR {{t}}.resolved_at IS NULL OR {{t}}.resolved_at >= $3
    OR EXISTS (SELECT 1 FROM actions a
               WHERE a.incident_id = {{t}}.incident_id AND a.status IN ({UNFINISHED_SQL})))"""
# A notification not yet published, or one an endpoint has still to receive.
NOTIFICATION_KEPT = """({t}.published_at IS NULL OR EXISTS (SELECT 1 FROM deliveries d
    WHERE d.notification_id = {t}.notification_id AND d.status NOT IN ($6, $7)))"""
# An unfinished action.
ACTION_KEPT = f"{{t}}.status NOT IN ({_DONE_SQL})"
# An instance's latest upgrade.
AUDIT_KEPT = """({t}.act = 'upgrade' AND NOT EXISTS (SELECT 1 FROM audit b
    WHERE b.act = 'upgrade' AND b.target = {t}.target AND b.at > {t}.at))"""


@dataclass(frozen=True)
class Cursor:
    """Where a batch stopped: the last row of its window, by time and id (the next window
    starts after it)."""

    at: float = float("-inf")
    key: str = ""


@dataclass(frozen=True)
class Batch:
    """What one batch did: rows pruned, where the next starts, and whether there may be more
    before the cutoff."""

    pruned: int
    after: Cursor
    more: bool


@dataclass(frozen=True)
class _Table:
    name: str
    column: str  # the time the limit is counted from (its index: the time, then the id)
    key: str  # the id
    kept: str
    extra_args: tuple[Any, ...] = ()
    window: str = ""  # rows the window counts (others are not this kind's: open incidents)


_TABLES = {
    Kind.EVENTS: _Table("events", "recorded_at", "event_id", EVENT_KEPT),
    Kind.NOTIFICATIONS: _Table(
        "notifications", "created_at", "notification_id", NOTIFICATION_KEPT, tuple(_FINAL)
    ),
    Kind.INCIDENTS: _Table(
        "incidents", "last_seen", "incident_id", INCIDENT_KEPT, window=f"AND status = {_RESOLVED}"
    ),
    Kind.ACTIONS: _Table("actions", "created_at", "action_id", ACTION_KEPT),
    Kind.AUDIT: _Table("audit", "at", "audit_id", AUDIT_KEPT),
}


def _after(table: _Table, at: str, key: str) -> str:
    """Rows after the cursor (``at``, ``key``) in the index's order."""
    t, k = f"{table.name}.{table.column}", f"{table.name}.{table.key}"
    return f"{t} >= {at} AND NOT ({t} = {at} AND {k} <= {key})"


def _range(table: _Table) -> str:
    """The batch's rows: after ($1, $2), up to and including ($4, $5), before the cutoff $3."""
    t, k = f"{table.name}.{table.column}", f"{table.name}.{table.key}"
    return f"{_after(table, '$1', '$2')} AND {t} <= $4 AND NOT ({t} = $4 AND {k} > $5) AND {t} < $3"


async def _window_end(tx: Tx, table: _Table, after: Cursor, cutoff: float, limit: int) -> Cursor | None:
    """The ``limit``-th row after ``after`` and before the cutoff (None: there are fewer)."""
    row = await tx.fetchrow(
        f"""SELECT {table.column} AS t, {table.key} AS k FROM {table.name}
            WHERE {_after(table, "$1", "$2")} AND {table.column} < $3 {table.window}
            ORDER BY {table.column}, {table.key} LIMIT 1 OFFSET $4""",
        after.at,
        after.key,
        cutoff,
        max(0, limit - 1),
    )
    return None if row is None else Cursor(float(row["t"]), str(row["k"]))


async def prune_batch(db: Database, kind: Kind, cutoff: float, after: Cursor, limit: int) -> Batch:
    """Prune one batch of ``kind`` (rows older than ``cutoff``, after ``after``), in a write
    transaction of its own."""
    table = _TABLES[kind]
    async with db.transaction() as tx:
        end = await _window_end(tx, table, after, cutoff, limit)
        upto, more = (end, True) if end is not None else (Cursor(cutoff), False)
        args = (after.at, after.key, cutoff, upto.at, upto.key, *table.extra_args)
        if kind is Kind.EVENTS:
            await _keep_ends(tx, table, args)
        elif kind is Kind.NOTIFICATIONS:
            await tx.execute(
                f"""DELETE FROM deliveries WHERE notification_id IN (
                        SELECT notification_id FROM notifications
                        WHERE {_range(table)} AND NOT {table.kept.format(t="notifications")})""",
                *args,
            )
        elif kind is Kind.ACTIONS:
            await tx.execute(
                f"""DELETE FROM approvals WHERE action_id IN (
                        SELECT action_id FROM actions
                        WHERE {_range(table)} AND NOT {table.kept.format(t="actions")})""",
                *args,
            )
        gone = await tx.fetch(
            f"""DELETE FROM {table.name} WHERE {_range(table)} AND NOT {table.kept.format(t=table.name)}
                RETURNING 1 AS gone""",
            *args,
        )
    return Batch(len(gone), upto, more)


async def _keep_ends(tx: Tx, table: _Table, args: tuple[Any, ...]) -> None:
    """Before a batch of events goes: an incident whose first (or latest) kept event — in the
    order its pages show them — is among them keeps a copy of it (``shared.retention.ends_going``)."""
    rows = await tx.fetch(
        f"""WITH w AS (SELECT DISTINCT incident_id FROM events
                       WHERE {_range(table)} AND incident_id IS NOT NULL),
            ends AS (SELECT w.incident_id,
                        (SELECT f.event_id FROM events f WHERE f.incident_id = w.incident_id
                         ORDER BY f.recorded_at, f.received_at, f.event_id LIMIT 1) AS first_id,
                        (SELECT f.event_id FROM events f WHERE f.incident_id = w.incident_id
                         ORDER BY f.recorded_at DESC, f.received_at DESC, f.event_id DESC LIMIT 1) AS last_id
                     FROM w)
            SELECT events.event_id, events.incident_id, events.received_at, events.recorded_at,
                   events.instance_id, events.alarm_type, events.incident_change, events.body,
                   events.event_id = ends.first_id AS is_first, events.event_id = ends.last_id AS is_last,
                   i.first_event AS first_copy, i.last_event AS last_copy
            FROM events JOIN ends ON ends.incident_id = events.incident_id
            JOIN incidents i ON i.incident_id = events.incident_id
            WHERE {_range(table)} AND NOT {table.kept.format(t="events")}
              AND (events.event_id = ends.first_id OR events.event_id = ends.last_id)""",
        *args,
    )
    copies = ends_going(rows)
    if not copies:
        return
    cte, cte_args = rows_cte(
        tx.dialect,
        "v",
        [("incident_id", "text"), ("first_event", "text"), ("last_event", "text")],
        [(incident, first, last) for incident, (first, last) in sorted(copies.items())],
    )
    await tx.execute(
        f"""WITH {cte}
            UPDATE incidents SET first_event = v.first_event, last_event = v.last_event
            FROM v WHERE incidents.incident_id = v.incident_id""",
        *cte_args,
    )


# --- what the metrics say about the store ----------------------------------------------------------

# The time column each kind's age is read from, and which rows count (all of them: kept ones
# too — an open incident's age is its own; resolved incidents only, as only they go).
_OLDEST = {
    Kind.EVENTS: "SELECT MIN(recorded_at) AS t FROM events",
    Kind.NOTIFICATIONS: "SELECT MIN(created_at) AS t FROM notifications",
    Kind.INCIDENTS: f"""SELECT last_seen AS t FROM incidents WHERE status = {_RESOLVED}
                        ORDER BY last_seen LIMIT 1""",
    Kind.ACTIONS: "SELECT MIN(created_at) AS t FROM actions",
    Kind.AUDIT: "SELECT MIN(at) AS t FROM audit",
}


@dataclass(frozen=True)
class Facts:
    """The store as the metrics show it."""

    oldest: dict[Kind, float | None]  # the oldest row's time of each kind (None: no row)
    size: int | None  # bytes: the SQLite file's pages, or the PostgreSQL database
    free: int | None  # SQLite: bytes of free pages in the file (None: PostgreSQL)
    incremental: bool | None  # SQLite: whether freed pages can be handed back


async def facts(db: Database) -> Facts:
    """The oldest row of each kind and the store's size: a handful of indexed reads."""
    async with db.transaction(write=False) as tx:
        oldest: dict[Kind, float | None] = {}
        for kind, query in _OLDEST.items():
            row = await tx.fetchrow(query)
            oldest[kind] = None if row is None or row["t"] is None else float(row["t"])
        size: int | None = None
        if db.dialect == "postgresql":
            row = await tx.fetchrow("SELECT pg_database_size(current_database()) AS size")
            size = int(row["size"]) if row is not None else None
    if isinstance(db, SqliteDatabase):
        file: FileFacts = await db.file_facts()
        return Facts(oldest, file.bytes, file.free_bytes, file.incremental)
    return Facts(oldest, size, None, None)


@dataclass
class Gauges:
    """The store's gauges in this process's ``/metrics``, read from the store when scraped
    (so every process says the same), at most every ``every`` seconds."""

    db: Database
    every: float = 15.0
    clock: Callable[[], float] = time.time
    _read_at: float = field(default=float("-inf"), init=False)

    async def refresh(self) -> None:
        now = self.clock()
        if now - self._read_at < self.every:
            return
        self._read_at = now
        try:
            found = await facts(self.db)
        except Exception as exc:  # a scrape answers with what it had
            log.warning("store.facts_failed", error=f"{type(exc).__name__}: {exc}")
            return
        show(found, now)


def show(found: Facts, now: float) -> None:
    for kind, oldest in found.oldest.items():
        if oldest is None:
            metrics.STORE_OLDEST.labels(kind.value).set(0)
        else:
            metrics.STORE_OLDEST.labels(kind.value).set(max(0.0, now - oldest))
    if found.size is not None:
        metrics.STORE_SIZE.set(found.size)
    if found.free is not None:
        metrics.STORE_FREE.set(found.free)
