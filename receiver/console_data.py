"""What the console's pages show, read from the store and the broker — no HTML here.

The store's own read methods (``Store.list_incidents`` …) do the lists; the few questions
only the console asks (counts for the overview, an instance's cooldowns and plan history) are
single read-only statements below, each served by an index of the schema (``incidents_seen``,
``actions_created``, ``audit_at``) or by a table that stays small (claims, pauses). The broker
side — how many workers consume, how deep the queues are — comes from passive queue
declarations on a connection of the console's own; the parking lot goes through
``shared.dlq.ParkingLot`` (on that same connection), exactly as the ``autopilot-dlq``
command does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection

from receiver.chart import Forecast, Marker, usage_chart
from shared import brokers, dlq, topology, watch
from shared.db import Row
from shared.disk import AUTOPILOT, READ, SEEN
from shared.errors import BrokerUnavailable
from shared.plans import DEFAULT_LADDER, Ladder, parse_plan
from shared.policy import Policy
from shared.settings import Settings
from shared.store import ActionStatus, Store, prices, reads

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
    read = await reads.overview_counts(store.db, start_of_day(now), (s.value for s in UPGRADE_STATUSES))
    last = read["last"]["last"]
    return Counts(
        open_incidents=int(read["incidents"]["n"]),
        actions_today=int(read["today"]["n"]),
        awaiting_approval=int(read["awaiting"]["n"]),
        last_action_at=float(last) if last is not None else None,
        last_decision_status=read["decision"].get("status"),
    )


async def last_upgrades(store: Store, *, instance: str | None = None, limit: int = 10) -> list[Row]:
    """The newest automatic upgrades from the audit trail (plan from and to, cause, approver)."""
    rows = await reads.upgrade_audit(store.db, instance, limit)
    for row in rows:
        detail = json.loads(row["detail"]) if isinstance(row["detail"], str) else row["detail"]
        detail = detail if isinstance(detail, dict) else {}
        raw_cause = detail.get("cause")
        cause: dict[str, Any] = raw_cause if isinstance(raw_cause, dict) else {}
        row["detail"] = detail
        row["upgrade"] = {
            "plan_from": detail.get("plan_from"),
            "plan_to": detail.get("plan_to"),
            "price": price.get("text") if isinstance(price := detail.get("price"), dict) else None,
            "rule": detail.get("rule"),
            "approved_by": detail.get("approved_by"),
            "cause": " ".join(str(cause[k]) for k in ("alarm_type", "value") if cause.get(k) is not None),
        }
    return rows


# How each disk history mark came about (``shared.disk``).
DISK_SOURCES = {
    AUTOPILOT: "resized by the autopilot",
    SEEN: "resized outside the autopilot (seen)",
    READ: "first read",
}


async def disk_history_of(store: Store, instance: str, limit: int = 50) -> list[Row]:
    """The instance's disk history (resizes made or seen, the size first read), newest first."""
    rows = await reads.disk_history(store.db, instance, limit)
    for row in rows:
        row["how"] = DISK_SOURCES.get(str(row["source"]), str(row["source"]))
    return rows


async def claims_of(store: Store, instance: str) -> list[Row]:
    """The cooldown claims of one instance (one per alarm type that upgraded it)."""
    return await reads.claims_of(store.db, instance)


async def known_instances(store: Store, settings: Settings) -> list[str]:
    """Managed instances first (``CLOUDAMQP_INSTANCE_ID``), then any other one a claim or a
    pause names."""
    others = sorted(await reads.instances_named(store.db) - set(settings.instance_ids))
    return [*settings.instance_ids, *others]


@dataclass(frozen=True)
class PlanFacts:
    """What the console knows of an instance's plan: as last read, or its last upgrade's."""

    current: str | None
    rung: int | None  # 0-based position on the default ladder
    ladder: tuple[str, ...]


@dataclass(frozen=True)
class NodeUsage:
    """One node's sampled usage for the instance page: the latest figures, the memory
    high-water mark of the kept samples, and an SVG polyline of memory percent over them."""

    node: str
    samples: int
    latest: dict[str, Any]
    peak_percent: float | None
    points: str  # "x,y x,y …" in a 0..SPARK_W × 0..SPARK_H box, newest on the right


SPARK_W, SPARK_H = 240, 40


async def usage_of(store: Store, instance: str) -> list[NodeUsage]:
    """The watchdog's samples of the instance's nodes (``shared.watch``), shaped per node."""
    out = []
    for node, samples in sorted((await watch.samples_by_node(store.db, instance)).items()):
        percents = [s["mem_percent"] for s in samples if s["mem_percent"] is not None]
        top = max(max(percents, default=0.0), 100.0)  # the limit line stays in view
        step = SPARK_W / max(len(percents) - 1, 1)
        points = " ".join(f"{i * step:.1f},{SPARK_H - SPARK_H * p / top:.1f}" for i, p in enumerate(percents))
        out.append(NodeUsage(node, len(samples), samples[-1], max(percents, default=None), points))
    return out


@dataclass(frozen=True)
class Charts:
    """The instance page's picture: memory and disk headroom per node (SVG, or a sentence
    where there is no sample), and the newest forecast's explanation."""

    memory: str
    disk: str
    forecast: str | None  # "memory 71% rising 0.9%/min, projected to cross 80% in 10 min; …"
    forecast_at: float | None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _threshold(policy: Policy, instance: str, alarm_type: str) -> float | None:
    """The first upgrading rule for ``alarm_type`` that applies to ``instance``: memory's
    ``above``; for disk the rules' margin is the settings' (``DISK_FREE_MARGIN``)."""
    for rule in policy.rules:
        if rule.alarm_type != alarm_type or rule.action != "upgrade":
            continue
        if rule.instances and instance not in rule.instances:
            continue
        return rule.above if alarm_type == "memory" else None
    return None


async def charts_of(
    store: Store,
    instance: str,
    policy: Policy,
    settings: Settings,
    upgrades: list[Row],
    disks: list[Row] | None = None,
) -> Charts:
    """The samples of the instance's nodes drawn against the rule's threshold, the upgrades
    of its plan history (``last_upgrades``) as markers — and on the disk chart the resizes of
    its disk history (``disk_history_of``) —, and the newest forecast's line."""
    memory: dict[str, list[tuple[float, float]]] = {}
    disk: dict[str, list[tuple[float, float]]] = {}
    for node, samples in (await watch.samples_by_node(store.db, instance)).items():
        for s in samples:
            at = _epoch(s["at"])
            if s["mem_percent"] is not None:
                memory.setdefault(node, []).append((at, float(s["mem_percent"])))
            if s["disk_free"] is not None and s["disk_free_limit"]:
                disk.setdefault(node, []).append((at, s["disk_free"] / s["disk_free_limit"]))
    markers = [Marker(float(u["at"]), f"→ {u['upgrade']['plan_to'] or '?'}") for u in upgrades]
    resizes = [
        Marker(float(d["at"]), f"→ +{d['extra_disk_to']} GB") for d in disks or [] if d["source"] != READ
    ]
    lines: dict[str, Forecast] = {}
    said, said_at = None, None
    row = await reads.latest_forecast(store.db, instance)
    if row is not None:
        body = json.loads(row["body"]) if isinstance(row["body"], str) else row["body"]
        found = body.get("forecast") if isinstance(body, dict) else None
        if isinstance(found, dict):
            said, said_at = found.get("explanation"), float(row["received_at"])
            line = _forecast_line(found, float(row["received_at"]))
            if line is not None:
                lines[str(row["alarm_type"])] = line
    memory_threshold = _threshold(policy, instance, "memory")
    return Charts(
        memory=usage_chart(
            memory,
            title="memory, % of mem_limit",
            unit="%",
            threshold=memory_threshold,
            markers=markers,
            forecast=lines.get("memory"),
            ceiling=100.0,
        ),
        disk=usage_chart(
            disk,
            title="disk headroom, × disk_free_limit",
            unit="×",
            threshold=settings.disk_free_margin,
            markers=sorted(markers + resizes, key=lambda m: m.at),
            forecast=lines.get("disk"),
        ),
        forecast=said if isinstance(said, str) else None,
        forecast_at=said_at,
    )


def _forecast_line(found: dict[str, Any], made_at: float) -> Forecast | None:
    """From the fitted figure when the forecast was made to the threshold at the projected
    crossing (``worker.forecast.evidence``)."""
    fit, threshold, crosses_in = found.get("fit"), found.get("threshold"), found.get("crosses_in_seconds")
    value_now = fit.get("value_now") if isinstance(fit, dict) else None
    if not all(isinstance(v, int | float) for v in (value_now, threshold, crosses_in)):
        return None
    assert value_now is not None and threshold is not None and crosses_in is not None
    return Forecast((made_at, float(value_now)), (made_at + float(crosses_in), float(threshold)))


async def plan_of(store: Store, instance: str, upgrades: list[Row]) -> PlanFacts:
    """``plan_facts`` of the instance, with its plan as the worker last read it."""
    return plan_facts(upgrades, (await prices.instance_plans(store.db)).get(instance))


async def advice_of(store: Store, instance: str) -> list[dict[str, Any]]:
    rows = await watch.list_advice(store.db, instance=instance, limit=5, offset=0)
    return [watch.advice_view(r) for r in rows]


def plan_facts(upgrades: list[Row], last_read: tuple[str, float] | None = None) -> PlanFacts:
    """The instance's plan — as CloudAMQP last showed it (``last_read``: plan, when), unless the
    last recorded upgrade is newer — and its ladder rung."""
    current, upgraded_at = None, 0.0
    for row in upgrades:
        detail = row["detail"] if isinstance(row["detail"], dict) else {}
        current = detail.get("plan_to") or detail.get("plan_from")
        if current:
            upgraded_at = float(row.get("at") or 0.0)
            break
    if last_read is not None and last_read[1] >= upgraded_at:
        current = last_read[0]
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
    fast: QueueFacts = field(default_factory=QueueFacts)  # the fast lane (FAST_LANE)


class BrokerProbe:
    """The console's own broker connection (opened on first use, reopened after a failure).

    ``facts``: passive declarations of the work queue, the fast lane and the parking lot — how many workers
    consume and how many messages wait, declaring or changing nothing. ``parking_lot``: a
    confirming channel of it wrapped in ``shared.dlq.ParkingLot``, for one page or act."""

    def __init__(self, url: str, timeout: float = 3.0):
        self._nodes = brokers.Nodes(url)
        self._where = brokers.redact_urls(url)
        self._timeout = timeout
        self._connection: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> AbstractConnection:
        async with self._lock:
            if self._connection is None or self._connection.is_closed:
                try:
                    self._connection = await self._nodes.connect(self._timeout)
                except Exception as exc:
                    where, why = self._where, str(exc) or type(exc).__name__
                    raise BrokerUnavailable(f"cannot connect to RabbitMQ at {where}: {why}") from exc
            return self._connection

    async def facts(self) -> BrokerFacts:
        out = BrokerFacts()
        try:
            connection = await self._connected()
        except BrokerUnavailable as exc:
            out.work.error = out.dead.error = out.fast.error = str(exc)
            return out
        queues = (
            (topology.WORK_QUEUE, out.work),
            (topology.DEAD_QUEUE, out.dead),
            (topology.FAST_QUEUE, out.fast),
        )
        for name, facts in queues:
            await self._declare_passively(connection, name, facts)
        return out

    async def _declare_passively(self, connection: AbstractConnection, name: str, facts: QueueFacts) -> None:
        # A channel per queue: a passive declaration of a missing queue closes its channel.
        try:
            channel = await connection.channel()
            try:
                result = await asyncio.wait_for(channel.declare_queue(name, passive=True), self._timeout)
                facts.messages = int(result.declaration_result.message_count or 0)
                facts.consumers = int(result.declaration_result.consumer_count or 0)
            finally:
                if not channel.is_closed:
                    await channel.close()
        except Exception as exc:
            facts.error = f"{type(exc).__name__}: {exc}"[:200]

    @asynccontextmanager
    async def parking_lot(self) -> AsyncIterator[dlq.ParkingLot]:
        connection = await self._connected()
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except Exception as exc:
            raise BrokerUnavailable(f"cannot open a channel: {type(exc).__name__}: {exc}") from exc
        try:
            yield await dlq.parking_lot_on(channel)
        finally:
            # Closing the channel hands back whatever a scan still held.
            if not channel.is_closed:
                await channel.close()

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


async def parked(broker: BrokerProbe, limit: int = PARKED_SHOWN) -> tuple[int, list[Parked]]:
    """How many messages are parked, and the first ``limit`` of them (every one is handed
    back: reading removes nothing)."""
    out: list[Parked] = []
    async with broker.parking_lot() as lot:
        total = await lot.count()
        if limit <= 0:
            return total, out
        async with lot.scan() as scan:
            async for message in scan:
                if len(out) >= limit:
                    # Read on to the end all the same: handing back only a prefix would move
                    # it behind the rest of the queue (see ``ParkingLot.scan``).
                    continue
                headers = message.headers or {}
                ref = dlq.message_ref(message.message_id, headers, message.body)
                view = dlq.describe(ref, message.message_id, headers, message.body)
                body = view.get("body", view.get("body_text"))
                pretty = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
                out.append(Parked(ref, dlq.summary_row(ref, headers, message.body), view, pretty))
    return max(total, len(out)), out


async def replay(broker: BrokerProbe, ids: set[str] | None) -> tuple[list[str], set[str]]:
    """Replay the parked messages named (None: all), as ``autopilot-dlq replay`` does."""
    replayed_at = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds")
    async with broker.parking_lot() as lot:
        return await lot.replay_matching(ids, replayed_at.replace("+00:00", "Z"))


async def purge(broker: BrokerProbe) -> int:
    async with broker.parking_lot() as lot:
        return await lot.purge()
