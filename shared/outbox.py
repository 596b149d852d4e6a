"""The notification outbox and delivery records: the store's side of ``worker.notify``.

A notification row is written in the same transaction as the state change that causes it
(``Unit.notify``), keyed by its deterministic id, so it exists exactly when the change does
and a redelivered alarm cannot add a second one. The relay claims unpublished rows with a
lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; an SQLite write transaction is exclusive
anyway), publishes them and marks them published; the deliverer records each endpoint's
outcome in ``deliveries`` and endpoints that answered 410 in ``notify_endpoints``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shared.db import Database, Row, Tx, rows_cte
from shared.notifications import Notice

# Schema of this module, appended to ``shared.store.MIGRATIONS`` as one migration of its own.
MIGRATION: list[str] = [
    """CREATE TABLE notifications (
        notification_id TEXT PRIMARY KEY,
        event_type TEXT NOT NULL,
        subject TEXT NOT NULL,
        instance_id TEXT,
        data TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        published_at DOUBLE PRECISION,
        lease_until DOUBLE PRECISION
    )""",
    "CREATE INDEX notifications_unpublished ON notifications (created_at) WHERE published_at IS NULL",
    "CREATE INDEX notifications_created ON notifications (created_at)",
    """CREATE TABLE deliveries (
        notification_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        channel TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT,
        latency_ms DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        delivered_at DOUBLE PRECISION,
        PRIMARY KEY (notification_id, endpoint)
    )""",
    """CREATE TABLE notify_endpoints (
        endpoint TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        disabled_at DOUBLE PRECISION NOT NULL,
        reason TEXT NOT NULL
    )""",
    # The plan an upgrade started from, where it was read (action.succeeded says from → to).
    "ALTER TABLE actions ADD COLUMN from_plan TEXT",
]

# Delivery statuses, as GET /notifications shows them.
QUEUED, DELIVERED, RETRYING, PARKED, DISABLED = "queued", "delivered", "retrying", "parked", "disabled"


async def insert(tx: Tx, notice: Notice, now: float) -> bool:
    """Write the notification unless one with its id exists; True when written."""
    row = await tx.fetchrow(
        """INSERT INTO notifications (notification_id, event_type, subject, instance_id, data, created_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (notification_id) DO NOTHING RETURNING notification_id""",
        notice.id,
        notice.type.value,
        notice.key,
        notice.instance_id,
        json.dumps(notice.data, ensure_ascii=False, default=str),
        now,
    )
    return row is not None


_DELIVERY_COLUMNS = (("notification_id", "text"), ("endpoint", "text"), ("channel", "text"))
_NOTICE_COLUMNS = (
    ("notification_id", "text"),
    ("event_type", "text"),
    ("subject", "text"),
    ("instance_id", "text"),
    ("data", "text"),
    ("created_at", "float8"),
)


async def insert_many(tx: Tx, notices: Sequence[tuple[Notice, float]]) -> None:
    """``insert`` of several notifications (each with its time) in one statement."""
    if not notices:
        return
    cte, args = rows_cte(
        tx.dialect,
        "v",
        _NOTICE_COLUMNS,
        [
            (
                n.id,
                n.type.value,
                n.key,
                n.instance_id,
                json.dumps(n.data, ensure_ascii=False, default=str),
                at,
            )
            for n, at in notices
        ],
    )
    await tx.execute(
        f"""WITH {cte}
           INSERT INTO notifications (notification_id, event_type, subject, instance_id, data, created_at)
           SELECT notification_id, event_type, subject, instance_id, data, created_at FROM v WHERE true
           ON CONFLICT (notification_id) DO NOTHING""",
        *args,
    )


class Outbox:
    """The relay's and the deliverer's operations, each in a transaction of its own."""

    def __init__(self, db: Database):
        self.db = db

    async def pending(self) -> bool:
        """Is any notification still to be published? (A read: cheap to poll.)"""
        async with self.db.transaction(write=False) as tx:
            row = await tx.fetchrow("SELECT 1 AS hit FROM notifications WHERE published_at IS NULL LIMIT 1")
        return row is not None

    async def claim(self, now: float, lease: float, limit: int) -> list[Row]:
        """Unpublished notifications nobody holds, leased to the caller for ``lease`` seconds;
        oldest first. A relay that dies leaves them to another after the lease."""
        lock = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"""UPDATE notifications SET lease_until = $1
                    WHERE notification_id IN (
                        SELECT notification_id FROM notifications
                        WHERE published_at IS NULL AND COALESCE(lease_until, 0) <= $2
                        ORDER BY created_at LIMIT $3{lock})
                    RETURNING *""",
                now + lease,
                now,
                limit,
            )
        return sorted(rows, key=lambda r: (r["created_at"], r["notification_id"]))

    async def published(self, done: Sequence[tuple[str, list[tuple[str, str]]]], now: float) -> None:
        """The broker confirmed, for each notification, one message per endpoint (``(endpoint
        id, channel)``): one transaction for all of them."""
        async with self.db.transaction() as tx:
            cte, args = rows_cte(
                tx.dialect, "v", [("notification_id", "text")], [(n,) for n, _ in done], first=2
            )
            await tx.execute(
                f"""WITH {cte} UPDATE notifications SET published_at = CAST($1 AS DOUBLE PRECISION)
                    WHERE notification_id IN (SELECT notification_id FROM v)""",
                now,
                *args,
            )
            deliveries = [(n, endpoint, channel) for n, targets in done for endpoint, channel in targets]
            if deliveries:
                cte, args = rows_cte(tx.dialect, "v", _DELIVERY_COLUMNS, deliveries, first=3)
                await tx.execute(
                    f"""WITH {cte}
                        INSERT INTO deliveries (notification_id, endpoint, channel, status, attempts,
                            updated_at)
                        SELECT notification_id, endpoint, channel, $1, 0, CAST($2 AS DOUBLE PRECISION)
                        FROM v WHERE true ON CONFLICT (notification_id, endpoint) DO NOTHING""",
                    QUEUED,
                    now,
                    *args,
                )

    async def delivered(self, notification_id: str, endpoint: str) -> bool:
        """Has this endpoint had this notification already (a redelivered copy)?"""
        async with self.db.transaction(write=False) as tx:
            row = await tx.fetchrow(
                "SELECT status FROM deliveries WHERE notification_id = $1 AND endpoint = $2",
                notification_id,
                endpoint,
            )
        return row is not None and row["status"] == DELIVERED

    async def record(
        self,
        notification_id: str,
        endpoint: str,
        channel: str,
        status: str,
        *,
        attempts: int,
        now: float,
        error: str | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """One endpoint's outcome; ``delivered`` is final (a late copy's failure cannot undo it)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                """INSERT INTO deliveries (notification_id, endpoint, channel, status, attempts,
                       last_error, latency_ms, updated_at, delivered_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (notification_id, endpoint) DO UPDATE SET
                       status = excluded.status, attempts = excluded.attempts,
                       last_error = excluded.last_error,
                       latency_ms = COALESCE(excluded.latency_ms, deliveries.latency_ms),
                       updated_at = excluded.updated_at,
                       delivered_at = COALESCE(excluded.delivered_at, deliveries.delivered_at)
                   WHERE deliveries.status <> 'delivered'""",
                notification_id,
                endpoint,
                channel,
                status,
                attempts,
                error,
                latency_ms,
                now,
                now if status == DELIVERED else None,
            )

    async def disable(self, endpoint: str, channel: str, reason: str, now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                """INSERT INTO notify_endpoints (endpoint, channel, disabled_at, reason)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (endpoint) DO NOTHING""",
                endpoint,
                channel,
                now,
                reason,
            )

    async def disabled(self) -> set[str]:
        """Endpoints that answered 410 Gone (until an operator removes the row)."""
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch("SELECT endpoint FROM notify_endpoints")
        return {r["endpoint"] for r in rows}

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[tuple[Row, list[Row]]]:
        """Recent notifications, newest first, each with its deliveries."""
        async with self.db.transaction(write=False) as tx:
            rows = await tx.fetch(
                """SELECT * FROM notifications ORDER BY created_at DESC, notification_id DESC
                   LIMIT $1 OFFSET $2""",
                limit,
                offset,
            )
            out: list[tuple[Row, list[Row]]] = []
            for row in rows:
                deliveries = await tx.fetch(
                    "SELECT * FROM deliveries WHERE notification_id = $1 ORDER BY endpoint",
                    row["notification_id"],
                )
                out.append((row, deliveries))
        return out


def loads(row: Row) -> dict[str, Any]:
    """A notification row's data."""
    data = row["data"]
    parsed = json.loads(data) if isinstance(data, str) else data
    return parsed if isinstance(parsed, dict) else {}
