"""What the console's pages show, read from the store and the broker — no HTML here.

The store's own read methods (``Store.list_incidents`` …) do the lists; the few questions
only the console asks (counts for the overview, an instance's cooldowns and plan history) are
single read-only statements below, each served by an index of the schema (``incidents_seen``,
``actions_created``, ``audit_at``) or by a table that stays small (claims, pauses). The broker
side — how many workers consume, how deep the queues are — comes from passive queue
declarations on a connection of the console's own; the parking lot goes through
``worker.dlq.ParkingLot``, exactly as the ``autopilot-dlq`` command does.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from shared import topology
from shared.db import Row
from shared.settings import Settings, redact_url
from shared.store import ActionStatus, Store
from worker import dlq
from worker.plans import DEFAULT_LADDER, Ladder, parse_plan

# Statuses of an action that went (or would have gone) to the CloudAMQP API.
UPGRADE_STATUSES = (
    ActionStatus.SUCCEEDED,
    ActionStatus.IN_PROGRESS,
    ActionStatus.UNCONFIRMED,
    ActionStatus.DRY_RUN,
)
PARKED_SHOWN = 200  # parked messages read for one page; the count says how many there are


def start_of_day(now: float) -> float:
    """Midnight UTC of ``now``'s day, in epoch seconds."""
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


@dataclass(frozen=True)
class Counts:
    open_incidents: int
    actions_today: int
    awaiting_approval: int
    last_action_at: float | None
    last_decision_status: str | None  # of the newest action that went (or would go) to the API


async def counts(store: Store, now: float) -> Counts:
    """The overview's numbers, in one read transaction."""
    upgrade_sql = ", ".join(f"'{s.value}'" for s in UPGRADE_STATUSES)
    async with store.db.transaction(write=False) as tx:
        incidents = await tx.fetchrow("SELECT COUNT(*) AS n FROM incidents WHERE status = 'open'")
        today = await tx.fetchrow(
            "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM actions WHERE created_at >= $1",
            start_of_day(now),
        )
        awaiting = await tx.fetchrow("SELECT COUNT(*) AS n FROM actions WHERE status = 'awaiting_approval'")
        last = await tx.fetchrow("SELECT MAX(created_at) AS last FROM actions")
        decision = await tx.fetchrow(
            f"""SELECT status FROM actions WHERE status IN ({upgrade_sql})
                ORDER BY created_at DESC LIMIT 1"""
        )
    assert incidents is not None and today is not None and awaiting is not None and last is not None
    return Counts(
        open_incidents=int(incidents["n"]),
        actions_today=int(today["n"]),
        awaiting_approval=int(awaiting["n"]),
        last_action_at=float(last["last"]) if last["last"] is not None else None,
        last_decision_status=decision["status"] if decision is not None else None,
    )


async def last_upgrades(store: Store, *, instance: str | None = None, limit: int = 10) -> list[Row]:
    """The newest automatic upgrades from the audit trail (plan from and to, cause, approver)."""
    where, args = ("AND target = $2", [instance]) if instance else ("", [])
    async with store.db.transaction(write=False) as tx:
        rows = await tx.fetch(
            f"""SELECT * FROM audit WHERE act = 'upgrade' {where}
                ORDER BY at DESC, audit_id DESC LIMIT $1""",
            limit,
            *args,
        )
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if isinstance(row["detail"], str) else row["detail"]
    return rows


async def claims_of(store: Store, instance: str) -> list[Row]:
    """The cooldown claims of one instance (one per alarm type that upgraded it)."""
    async with store.db.transaction(write=False) as tx:
        return await tx.fetch("SELECT * FROM claims WHERE instance_id = $1 ORDER BY scope", instance)


async def known_instances(store: Store, settings: Settings) -> list[str]:
    """Managed instances first (``CLOUDAMQP_INSTANCE_ID``), then any other one a claim or a
    pause names."""
    async with store.db.transaction(write=False) as tx:
        rows = await tx.fetch(
            "SELECT instance_id AS id FROM claims UNION SELECT scope AS id FROM pauses WHERE scope <> '*'"
        )
    others = sorted({r["id"] for r in rows} - set(settings.instance_ids))
    return [*settings.instance_ids, *others]


@dataclass(frozen=True)
class PlanFacts:
    """What the console knows of an instance's plan: the target of its last upgrade."""

    current: str | None
    rung: int | None  # 0-based position on the default ladder
    ladder: tuple[str, ...]


def plan_facts(upgrades: list[Row]) -> PlanFacts:
    """The plan the last recorded upgrade moved the instance to, and its ladder rung."""
    current = None
    for row in upgrades:
        detail = row["detail"] if isinstance(row["detail"], dict) else {}
        current = detail.get("plan_to") or detail.get("plan_from")
        if current:
            break
    plan = parse_plan(current) if isinstance(current, str) else None
    ladder = Ladder.of(DEFAULT_LADDER)
    rung = ladder.position(plan) if plan is not None else None
    nodes = plan.nodes if plan is not None else 1
    return PlanFacts(current, rung, tuple(f"{family}-{nodes}" for family in ladder.families))


# --- the broker --------------------------------------------------------------------------------


@dataclass
class QueueFacts:
    messages: int | None = None
    consumers: int | None = None
    error: str | None = None


@dataclass
class BrokerFacts:
    work: QueueFacts = field(default_factory=QueueFacts)
    dead: QueueFacts = field(default_factory=QueueFacts)


class BrokerProbe:
    """Passive declarations of the work queue and the parking lot on a connection of the
    console's own (opened on first use, reopened after a failure): how many workers consume
    and how many messages wait, without declaring or changing anything."""

    def __init__(self, url: str, timeout: float = 3.0):
        self._url = url
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def _channel(self) -> AbstractChannel:
        if self._connection is None or self._connection.is_closed:
            self._connection = await aio_pika.connect(self._url, timeout=self._timeout)
        # A channel per probe: a passive declare of a missing queue closes its channel.
        return await self._connection.channel()

    async def facts(self) -> BrokerFacts:
        out = BrokerFacts()
        async with self._lock:
            try:
                channel = await self._channel()
            except Exception as exc:
                problem = f"cannot connect to RabbitMQ at {redact_url(self._url)}: {type(exc).__name__}"
                out.work.error = out.dead.error = problem
                return out
            try:
                for name, facts in ((topology.WORK_QUEUE, out.work), (topology.DEAD_QUEUE, out.dead)):
                    try:
                        result = await asyncio.wait_for(
                            channel.declare_queue(name, passive=True), self._timeout
                        )
                        declared = result.declaration_result
                        facts.messages = int(declared.message_count or 0)
                        facts.consumers = int(declared.consumer_count or 0)
                    except Exception as exc:
                        facts.error = f"{type(exc).__name__}: {exc}"[:200]
                        channel = await self._channel()
            finally:
                if not channel.is_closed:
                    await channel.close()
        return out

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()


# --- the parking lot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Parked:
    ref: str
    row: dlq.Row  # the one-line summary ``autopilot-dlq list`` prints
    view: dict[str, Any]  # what ``autopilot-dlq show`` prints: headers and original body
    body_pretty: str


async def parked(settings: Settings, limit: int = PARKED_SHOWN) -> tuple[int, list[Parked]]:
    """How many messages are parked, and the first ``limit`` of them (every one is handed
    back: reading removes nothing)."""
    out: list[Parked] = []
    async with dlq.open_parking_lot(settings) as lot:
        total = await lot.count()
        if limit <= 0:
            return total, out
        async with lot.scan() as scan:
            async for message in scan:
                headers = message.headers or {}
                ref = dlq.message_ref(message.message_id, headers, message.body)
                view = dlq.describe(ref, message.message_id, headers, message.body)
                body = view.get("body", view.get("body_text"))
                pretty = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
                out.append(Parked(ref, dlq.summary_row(ref, headers, message.body), view, pretty))
                if len(out) >= limit:
                    break
    return max(total, len(out)), out


async def replay(settings: Settings, ids: set[str] | None) -> tuple[list[str], set[str]]:
    """Replay the parked messages named (None: all), as ``autopilot-dlq replay`` does."""
    replayed_at = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
    async with dlq.open_parking_lot(settings) as lot:
        return await lot.replay_matching(ids, replayed_at.replace("+00:00", "Z"))


async def purge(settings: Settings) -> int:
    async with dlq.open_parking_lot(settings) as lot:
        return await lot.purge()
