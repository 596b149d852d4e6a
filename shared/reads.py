"""The console's reads of the store (``receiver/console_data.py`` shapes them for its pages):
the overview's counts, the upgrades in the audit trail, an instance's claims, the instances
the store names. SQL lives here, with the store, never in the receiver."""

from __future__ import annotations

from collections.abc import Iterable

from shared.db import Database, Row
from shared.statuses import ActionStatus


async def overview_counts(db: Database, since: float, upgrade_statuses: Iterable[str]) -> dict[str, Row]:
    """Open incidents; actions since ``since`` (and the newest); those awaiting approval; the
    status of the newest action among ``upgrade_statuses``."""
    statuses = sorted(upgrade_statuses)
    marks = ", ".join(f"${n}" for n in range(1, len(statuses) + 1))
    async with db.transaction(write=False) as tx:
        incidents = await tx.fetchrow("SELECT COUNT(*) AS n FROM incidents WHERE status = 'open'")
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


async def latest_forecast(db: Database, instance: str) -> Row | None:
    """The newest forecast alarm the watchdog raised for ``instance`` (its event)."""
    async with db.transaction(write=False) as tx:
        return await tx.fetchrow(
            """SELECT event_id, received_at, alarm_type, body FROM events
               WHERE instance_id = $1 AND event_id LIKE 'forecast-%'
               ORDER BY received_at DESC LIMIT 1""",
            instance,
        )
