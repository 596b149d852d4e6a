"""The set-up checks' results (``autopilot check``, and the worker's own at start), kept for
the console's overview; and the last alarms received, with what became of each, for
``autopilot check --last-alarms`` and the console's page of them."""

from __future__ import annotations

import json
from typing import Any

from shared.db import Database, Row

KEPT_RUNS = 50  # the newest results kept; older ones are forgotten as new ones come

MIGRATION = [
    """CREATE TABLE check_runs (
        run_id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        source TEXT NOT NULL,
        failed INTEGER NOT NULL,
        warned INTEGER NOT NULL,
        report TEXT NOT NULL
    )""",
    "CREATE INDEX check_runs_at ON check_runs (at)",
]


async def save_check_run(
    db: Database, run_id: str, at: float, source: str, failed: int, warned: int, report: dict[str, Any]
) -> None:
    async with db.transaction() as tx:
        await tx.execute(
            """INSERT INTO check_runs (run_id, at, source, failed, warned, report)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (run_id) DO NOTHING""",
            run_id,
            at,
            source,
            failed,
            warned,
            json.dumps(report, ensure_ascii=False),
        )
        await tx.execute(
            f"""DELETE FROM check_runs WHERE run_id NOT IN
               (SELECT run_id FROM check_runs ORDER BY at DESC, run_id DESC LIMIT {KEPT_RUNS})"""
        )


async def last_check_run(db: Database) -> Row | None:
    """The newest result, with its report decoded."""
    async with db.transaction(write=False) as tx:
        row = await tx.fetchrow("SELECT * FROM check_runs ORDER BY at DESC, run_id DESC LIMIT 1")
    if row is not None:
        row["report"] = json.loads(row["report"])
    return row


async def last_alarms(db: Database, limit: int) -> list[Row]:
    """The newest events recorded, with their bodies as received and their action rows."""
    async with db.transaction(write=False) as tx:
        return await tx.fetch(
            """SELECT e.event_id, e.received_at, e.recorded_at, e.instance_id, e.alarm_type,
                      e.incident_id, e.incident_change, e.ungroupable, e.body,
                      a.status, a.reason, a.detail, a.plan
               FROM events e LEFT JOIN actions a ON a.action_id = e.event_id
               ORDER BY e.recorded_at DESC, e.event_id DESC LIMIT $1""",
            limit,
        )
