"""The store's side of looking at the broker (``worker.watchdog``) and of the periodic jobs
(``worker.schedule``): the slot that one worker at a time wins, each condition's watch state,
the sampled usage (a ring of ``SAMPLE_HISTORY`` slots per node), the quiet window behind
downgrade advice, the advice, and the upgrades whose confirmation checks stopped coming back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared import outbox
from shared.alarm import iso
from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.db import Database, Row, Tx, lit
from shared.notifications import EventType, Notice
from shared.statuses import ActionStatus

# Schema of this module, appended to ``shared.store.MIGRATIONS`` as one migration of its own.
MIGRATION: list[str] = [
    # What the broker check saw before an upgrade (JSON): verified, cleared, or unverified.
    "ALTER TABLE actions ADD COLUMN verification TEXT",
    # "Any alarm for this instance since …" (the watchdog and the quiet window ask it).
    "CREATE INDEX events_instance ON events (instance_id, received_at)",
    # A periodic job that one worker among many runs per interval: whoever moves ``due_at``
    # on, in one conditional statement, has the slot.
    """CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        taken_at DOUBLE PRECISION NOT NULL,
        runs INTEGER NOT NULL
    )""",
    """CREATE TABLE watch_state (
        instance_id TEXT NOT NULL,
        alarm_type TEXT NOT NULL,
        holding_since DOUBLE PRECISION,
        raised_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (instance_id, alarm_type)
    )""",
    """CREATE TABLE node_samples (
        instance_id TEXT NOT NULL,
        node TEXT NOT NULL,
        slot INTEGER NOT NULL,
        at DOUBLE PRECISION NOT NULL,
        mem_used BIGINT,
        mem_limit BIGINT,
        disk_free BIGINT,
        disk_free_limit BIGINT,
        fd_used BIGINT,
        sockets_used BIGINT,
        PRIMARY KEY (instance_id, node, slot)
    )""",
    """CREATE TABLE usage_windows (
        instance_id TEXT PRIMARY KEY,
        upgrade_id TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        peak_mem_used BIGINT NOT NULL,
        mem_limit BIGINT NOT NULL,
        samples INTEGER NOT NULL
    )""",
    """CREATE TABLE advice (
        advice_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        instance_id TEXT NOT NULL,
        from_plan TEXT NOT NULL,
        to_plan TEXT NOT NULL,
        upgrade_id TEXT NOT NULL,
        evidence TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX advice_created ON advice (created_at)",
    # The last look at an upgrade awaiting confirmation, so that the confirmation sweep
    # (worker.sweep) finds one whose check message stopped coming back.
    "ALTER TABLE actions ADD COLUMN checked_at DOUBLE PRECISION",
    "CREATE INDEX actions_awaiting ON actions (updated_at) WHERE reason = 'awaiting_confirmation'",
]


@dataclass(frozen=True)
class Sample:
    node: str
    mem_used: int | None
    mem_limit: int | None
    disk_free: int | None
    disk_free_limit: int | None
    fd_used: int | None
    sockets_used: int | None


@dataclass(frozen=True)
class LastUpgrade:
    """Our most recent upgrade of an instance, from the audit trail."""

    upgrade_id: str  # the audit entry's id: one per claim
    at: float
    plan: str | None


async def take_slot(db: Database, name: str, owner: str, now: float, interval: float) -> int | None:
    """Take this interval's run of ``name`` if it is due; the run number when taken, None
    when another worker has it. One statement, so two workers never both take a slot."""
    async with db.transaction() as tx:
        row = await tx.fetchrow(
            """INSERT INTO schedules (name, owner, due_at, taken_at, runs) VALUES ($1, $2, $3, $4, 1)
               ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, due_at = excluded.due_at,
                   taken_at = excluded.taken_at, runs = schedules.runs + 1
               WHERE schedules.due_at <= excluded.taken_at
               RETURNING runs""",
            name,
            owner,
            now + interval,
            now,
        )
    return int(row["runs"]) if row is not None else None


async def watch_state(tx: Tx, instance_id: str, alarm_type: str) -> Row | None:
    return await tx.fetchrow(
        "SELECT * FROM watch_state WHERE instance_id = $1 AND alarm_type = $2", instance_id, alarm_type
    )


async def save_watch_state(
    tx: Tx, instance_id: str, alarm_type: str, since: float | None, raised_at: float | None, now: float
) -> None:
    await tx.execute(
        """INSERT INTO watch_state (instance_id, alarm_type, holding_since, raised_at, updated_at)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (instance_id, alarm_type) DO UPDATE SET holding_since = excluded.holding_since,
               raised_at = excluded.raised_at, updated_at = excluded.updated_at""",
        instance_id,
        alarm_type,
        since,
        raised_at,
        now,
    )


async def alarmed_since(tx: Tx, instance_id: str, since: float, alarm_type: str | None = None) -> bool:
    """Has an alarm for the instance (of ``alarm_type``, not one of the watchdog's own alarms
    or forecasts when a type is given) been received since ``since``?"""
    if alarm_type is None:
        row = await tx.fetchrow(
            "SELECT 1 AS hit FROM events WHERE instance_id = $1 AND received_at >= $2 LIMIT 1",
            instance_id,
            since,
        )
    else:
        row = await tx.fetchrow(
            """SELECT 1 AS hit FROM events WHERE instance_id = $1 AND received_at >= $2
               AND alarm_type = $3 AND event_id NOT LIKE 'watchdog-%'
               AND event_id NOT LIKE 'forecast-%' LIMIT 1""",
            instance_id,
            since,
            alarm_type,
        )
    return row is not None


async def upgrade_busy(tx: Tx, scope: str, now: float) -> bool:
    """Would an alarm for ``scope`` meet a cooldown, an upgrade in flight or an approval?"""
    row = await tx.fetchrow("SELECT * FROM claims WHERE scope = $1", scope)
    if row is None:
        return False
    claim = ClaimRow(
        row["scope"],
        ClaimStatus(row["status"]),
        row["owner"],
        float(row["lease_until"]),
        float(row["cooldown_until"]),
    )
    return claim_verdict(claim, now) not in (ClaimVerdict.GRANTED, ClaimVerdict.NOTICED)


async def record_samples(tx: Tx, instance_id: str, samples: list[Sample], slot: int, now: float) -> None:
    """One poll's figures into ring slot ``slot`` of each node (older ones are overwritten)."""
    for s in samples:
        await tx.execute(
            """INSERT INTO node_samples (instance_id, node, slot, at, mem_used, mem_limit, disk_free,
                   disk_free_limit, fd_used, sockets_used)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (instance_id, node, slot) DO UPDATE SET at = excluded.at,
                   mem_used = excluded.mem_used, mem_limit = excluded.mem_limit,
                   disk_free = excluded.disk_free, disk_free_limit = excluded.disk_free_limit,
                   fd_used = excluded.fd_used, sockets_used = excluded.sockets_used""",
            instance_id,
            s.node,
            slot,
            now,
            s.mem_used,
            s.mem_limit,
            s.disk_free,
            s.disk_free_limit,
            s.fd_used,
            s.sockets_used,
        )


async def samples_since(tx: Tx, instance_id: str, since: float) -> list[Row]:
    """The instance's sampled figures taken at ``since`` or later (every node), oldest first."""
    return await tx.fetch(
        """SELECT node, at, mem_used, mem_limit, disk_free, disk_free_limit FROM node_samples
           WHERE instance_id = $1 AND at >= $2 ORDER BY at, node""",
        instance_id,
        since,
    )


# Past plan changes the forecast's lead time is the median of: the latest ones, fleet-wide.
RECONFIGURATIONS = 200


async def reconfigure_durations(tx: Tx, limit: int = RECONFIGURATIONS) -> list[tuple[str, float]]:
    """``(instance, seconds)`` of the latest plan changes CloudAMQP finished, as the
    asynchronous follow-up measured them (``actions.reconfigure_seconds``; disk resizes, whose
    ``kind`` is set, aside)."""
    rows = await tx.fetch(
        """SELECT instance_id, reconfigure_seconds FROM actions
           WHERE reconfigure_seconds IS NOT NULL AND instance_id IS NOT NULL AND kind IS NULL
           ORDER BY updated_at DESC LIMIT $1""",
        limit,
    )
    return [(str(row["instance_id"]), float(row["reconfigure_seconds"])) for row in rows]


async def last_upgrade(tx: Tx, instance_id: str) -> LastUpgrade | None:
    row = await tx.fetchrow(
        """SELECT audit_id, at, detail FROM audit WHERE act = 'upgrade' AND target = $1
           ORDER BY at DESC LIMIT 1""",
        instance_id,
    )
    if row is None:
        return None
    detail = json.loads(row["detail"]) if row["detail"] else {}
    plan = detail.get("plan_to") if isinstance(detail, dict) else None
    return LastUpgrade(str(row["audit_id"]), float(row["at"]), plan if isinstance(plan, str) else None)


async def usage_window(tx: Tx, instance_id: str) -> Row | None:
    return await tx.fetchrow("SELECT * FROM usage_windows WHERE instance_id = $1", instance_id)


async def save_usage_window(
    tx: Tx, instance_id: str, upgrade_id: str, started_at: float, peak: int, mem_limit: int, samples: int
) -> None:
    await tx.execute(
        """INSERT INTO usage_windows (instance_id, upgrade_id, started_at, peak_mem_used, mem_limit, samples)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (instance_id) DO UPDATE SET upgrade_id = excluded.upgrade_id,
               started_at = excluded.started_at, peak_mem_used = excluded.peak_mem_used,
               mem_limit = excluded.mem_limit, samples = excluded.samples""",
        instance_id,
        upgrade_id,
        started_at,
        peak,
        mem_limit,
        samples,
    )


async def record_advice(tx: Tx, advice_id: str, upgrade_id: str, advice: Any, now: float) -> bool:
    """Write the advice and its notification (``advice.downgrade``) unless it exists."""
    row = await tx.fetchrow(
        """INSERT INTO advice (advice_id, kind, instance_id, from_plan, to_plan, upgrade_id, evidence,
               created_at)
           VALUES ($1, 'downgrade', $2, $3, $4, $5, $6, $7)
           ON CONFLICT (advice_id) DO NOTHING RETURNING advice_id""",
        advice_id,
        advice.instance_id,
        advice.from_plan,
        advice.to_plan,
        upgrade_id,
        json.dumps(advice.evidence),
        now,
    )
    if row is None:
        return False
    data = {
        "advice": {
            "id": advice_id,
            "kind": "downgrade",
            "instance_id": advice.instance_id,
            "from_plan": advice.from_plan,
            "to_plan": advice.to_plan,
            "evidence": advice.evidence,
        },
        # Shaped like an action so that every channel says "from → to" (worker.channels).
        "action": {
            "id": advice_id,
            "status": "advice",
            "instance_id": advice.instance_id,
            "from_plan": advice.from_plan,
            "to_plan": advice.to_plan,
            "detail": "a smaller plan would do; nothing was changed",
        },
    }
    await outbox.insert(tx, Notice(EventType.ADVICE_DOWNGRADE, advice_id, data, advice.instance_id), now)
    return True


def advice_view(row: Row) -> dict[str, Any]:
    return {
        "id": row["advice_id"],
        "kind": row["kind"],
        "instance_id": row["instance_id"],
        "from_plan": row["from_plan"],
        "to_plan": row["to_plan"],
        "upgrade_id": row["upgrade_id"],
        "evidence": json.loads(row["evidence"]),
        "created_at": iso(row["created_at"]),
    }


async def checked(db: Database, action_id: str, now: float) -> None:
    """A check looked at this upgrade awaiting confirmation (and will look again)."""
    async with db.transaction() as tx:
        await tx.execute(
            """UPDATE actions SET checked_at = $2
               WHERE action_id = $1 AND reason = 'reconfiguring'""",
            action_id,
            now,
        )


async def unchecked_confirmations(db: Database, before: float, limit: int) -> list[Row]:
    """Upgrades awaiting confirmation that no check has looked at since ``before`` (the
    sweep marks each it sends a check to with ``checked``, so it sends one, not one per sweep)."""
    async with db.transaction(write=False) as tx:
        rows = await tx.fetch(
            f"""SELECT action_id, instance_id, plan, extra_disk_to, updated_at FROM actions
               WHERE reason = 'reconfiguring' AND status = {lit(ActionStatus.IN_PROGRESS)}
               AND COALESCE(checked_at, updated_at) < $1
               ORDER BY updated_at LIMIT $2""",
            before,
            limit,
        )
    return rows


def sample_view(row: Row) -> dict[str, Any]:
    used, limit = row["mem_used"], row["mem_limit"]
    return {
        "at": iso(row["at"]),
        "mem_used": row["mem_used"],
        "mem_limit": limit,
        "mem_percent": round(100.0 * used / limit, 1) if used is not None and limit else None,
        "disk_free": row["disk_free"],
        "disk_free_limit": row["disk_free_limit"],
        "fd_used": row["fd_used"],
        "sockets_used": row["sockets_used"],
    }


async def list_advice(db: Database, *, instance: str | None, limit: int, offset: int) -> list[Row]:
    async with db.transaction(write=False) as tx:
        if instance:
            return await tx.fetch(
                """SELECT * FROM advice WHERE instance_id = $1 ORDER BY created_at DESC, advice_id
                   LIMIT $2 OFFSET $3""",
                instance,
                limit,
                offset,
            )
        return await tx.fetch(
            "SELECT * FROM advice ORDER BY created_at DESC, advice_id LIMIT $1 OFFSET $2", limit, offset
        )


async def samples_by_node(db: Database, instance_id: str) -> dict[str, list[dict[str, Any]]]:
    """The sampled usage of an instance's nodes (``sample_view`` each), per node, oldest first."""
    async with db.transaction(write=False) as tx:
        rows = await tx.fetch(
            "SELECT * FROM node_samples WHERE instance_id = $1 ORDER BY node, at", instance_id
        )
    nodes: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        nodes.setdefault(row["node"], []).append(sample_view(row))
    return nodes
