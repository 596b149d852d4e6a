"""Retention on both stores: rows past their limit are pruned, in batches; what an open
incident, a pending approval, a held claim, an unfinished plan change or an undelivered
notification needs stays however old; an incident whose events went keeps its count and
its first and last event. Everything is written and pruned through the store's own code
(``Unit``, the outbox) and the worker's job (``worker.retention.Pruner``), with a fixed clock."""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared import metrics
from shared.alarm import Alarm, event_key, new_id
from shared.claims import ClaimRow, ClaimStatus
from shared.db import SqliteDatabase
from shared.incidents import plan_incident
from shared.notifications import EventType, Notice
from shared.retention import DAY, Kind, Pace, action_prunable, notification_prunable
from shared.settings import Settings
from shared.snapshot import Arrival, Writes
from shared.store import ActionRecord, ActionStatus, ApprovalRequest, AuditEntry, Store
from shared.store.retention import UNFINISHED_SQL
from shared.store.schema import MIGRATIONS
from tests.integration.conftest import MakeStack
from tests.integration.test_cli import autopilot
from tests.support import free_port, prometheus_samples
from worker.retention import Pruner, Run

NOW = 1_800_000_000.0
# No pause between batches: the pacing has its own tests (tests/unit/test_retention.py).
QUICK = Pace(least_pause=0.0, rest=0.0)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


def pruner(store: Store, *, pace: Pace = QUICK, env: dict[str, str] | None = None) -> Pruner:
    settings = Settings.from_env(env or {})
    return Pruner(settings, store, worker_id="test-worker", pace=pace, clock=lambda: NOW)


async def alarm(
    store: Store,
    at: float,
    body: dict[str, Any] | None = None,
    *,
    instance: str = "i1",
    status: ActionStatus = ActionStatus.SKIPPED,
    reason: str | None = "below_threshold",
    writes: Callable[[Alarm, str | None], Writes] | None = None,
) -> tuple[Alarm, str | None]:
    """What a worker writes for one alarm at ``at``: its event, its incident change and its
    action (and any further ``writes`` of its first step); the alarm and its incident."""
    body = body if body is not None else {"alarm_type": "memory", "value": 50, "instance_id": instance}
    a = Alarm(new_id(), at - 0.5, body, event_key(body))
    async with store.unit() as unit:
        recorded = await unit.record_event(a, instance, plan_incident(a, instance), at)
        await unit.write_action(ActionRecord(a, status, at, recorded.incident_id, instance, reason, "test"))
        if writes is not None:
            await unit.apply(writes(a, recorded.incident_id), at)
    return a, recorded.incident_id


async def count(store: Store, sql: str, *args: Any) -> int:
    async with store.db.transaction(write=False) as tx:
        row = await tx.fetchrow(sql, *args)
    assert row is not None
    return int(row["n"])


async def event_kept(store: Store, a: Alarm) -> bool:
    return await count(store, "SELECT COUNT(*) AS n FROM events WHERE event_id = $1", a.event_id) == 1


async def action_kept(store: Store, a: Alarm) -> bool:
    return await store.get_action(a.event_id) is not None


# --- what goes and what stays: one case a row, on both stores -----------------------------------


@dataclass(frozen=True)
class Case:
    """Something written ``days`` before now; whether a run with the default limits keeps it."""

    name: str
    days: float
    seed: Callable[[Store, float], Awaitable[Callable[[], Awaitable[bool]]]]
    kept: bool


async def ungroupable_event(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    a, _ = await alarm(store, at, {"value": 1})
    return lambda: event_kept(store, a)


async def pending_approval(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    def approval(a: Alarm, _: str | None) -> Writes:
        scope = "i1/memory"
        return Writes(
            claims={scope: ClaimRow(scope, ClaimStatus.AWAITING, "w/1", at + 3600, at + 1800, "i1", at)},
            approvals=[
                ApprovalRequest(
                    a.event_id, scope, "w/1", "i1", "bunny-2", "memory 91", "memory", 1800, at, at + 3600
                )
            ],
        )

    a, _ = await alarm(store, at, status=ActionStatus.AWAITING_APPROVAL, reason=None, writes=approval)

    async def kept() -> bool:
        async with store.unit() as unit:
            row = await unit.approval(a.event_id)
        # The approval reads the alarm through the event: all three are needed to answer it.
        return row is not None and row["deadline"] is not None and row["body"] is not None

    return kept


async def held_claim(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    def claim(a: Alarm, _: str | None) -> Writes:
        scope = "i1/memory"
        return Writes(
            claims={
                scope: ClaimRow(scope, ClaimStatus.HELD, f"w/{a.event_id}/x", at + 120, at + 1800, "i1", at)
            }
        )

    a, _ = await alarm(store, at, status=ActionStatus.IN_PROGRESS, reason=None, writes=claim)

    async def kept() -> bool:
        held = await count(store, "SELECT COUNT(*) AS n FROM claims WHERE status = 'held'")
        return held == 1 and await action_kept(store, a) and await event_kept(store, a)

    return kept


async def plan_change(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    def upgrade(a: Alarm, _: str | None) -> Writes:
        detail = {
            "action_id": a.event_id,
            "plan_from": "bunny-1",
            "plan_to": "bunny-2",
            "cause": {"reason": "memory"},
        }
        return Writes(
            audits=[
                AuditEntry(f"upgrade:{a.event_id}", at, "autopilot", "automatic", "upgrade", "i1", detail)
            ]
        )

    a, _ = await alarm(store, at, status=ActionStatus.IN_PROGRESS, reason="reconfiguring", writes=upgrade)

    async def kept() -> bool:
        # What its confirmation needs: the action, the alarm it quotes and the upgrade's reason.
        reason = await count(store, "SELECT COUNT(*) AS n FROM audit WHERE act = 'upgrade'")
        return reason == 1 and await action_kept(store, a) and await event_kept(store, a)

    return kept


async def open_incident(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    _, incident = await alarm(store, at, {"message": "open for ever", "value": 7})
    assert incident is not None

    async def kept() -> bool:
        page = await store.get_incident(incident)
        return page is not None and page.first_event is not None and page.incident["event_count"] == 1

    return kept


async def resolved_incident(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    _, incident = await alarm(store, at, {"message": "over", "value": 7})
    await alarm(store, at, {"message": "over", "resolved": True})
    assert incident is not None
    return lambda: incident_exists(store, incident)


async def incident_exists(store: Store, incident: str) -> bool:
    return await store.get_incident(incident) is not None


def notification(statuses: tuple[str, ...], *, published: bool = True) -> Case:
    async def seed(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
        notice = Notice(EventType.ALARM_PARKED, new_id(), {"status": "test"}, "i1")
        await store.notify(notice, now=at)
        if published:
            await store.outbox.published(
                [(notice.id, [(f"e{n}", "webhook") for n in range(len(statuses))])], at
            )
        for n, status in enumerate(statuses):
            await store.outbox.record(notice.id, f"e{n}", "webhook", status, attempts=1, now=at)
        return lambda: notification_exists(store, notice.id)

    what = "unpublished" if not published else "+".join(statuses) or "no endpoint"
    return Case(f"a notification ({what})", 800, seed, not notification_prunable(published, list(statuses)))


async def notification_exists(store: Store, notification_id: str) -> bool:
    found = await count(
        store, "SELECT COUNT(*) AS n FROM notifications WHERE notification_id = $1", notification_id
    )
    deliveries = await count(
        store, "SELECT COUNT(*) AS n FROM deliveries WHERE notification_id = $1", notification_id
    )
    assert found or not deliveries, "deliveries left behind their notification"
    return found == 1


async def finished_action(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    a, _ = await alarm(store, at, {"value": 1})
    return lambda: action_kept(store, a)


async def audit_entries(store: Store, at: float) -> Callable[[], Awaitable[bool]]:
    """An old pause, an old upgrade of an instance upgraded again since, and an old upgrade
    that is its instance's latest: only the last stays."""
    async with store.unit() as unit:
        for audit_id, act, target, when in (
            ("pause:1", "pause", "i1", at),
            ("upgrade:i1-old", "upgrade", "i1", at),
            ("upgrade:i1-new", "upgrade", "i1", NOW - DAY),
            ("upgrade:i2", "upgrade", "i2", at),
        ):
            await unit.audit(AuditEntry(audit_id, when, "autopilot", "automatic", act, target, {}))

    async def kept() -> bool:
        rows = await store.list_audit(limit=10)
        left = {r["audit_id"] for r in rows}
        assert "upgrade:i1-new" in left and "upgrade:i2" in left, left
        return bool(left & {"pause:1", "upgrade:i1-old"})

    return kept


CASES = [
    Case("an event past RETENTION_EVENTS_DAYS", 31, ungroupable_event, False),
    Case("an event within RETENTION_EVENTS_DAYS", 29, ungroupable_event, True),
    Case("a pending approval: its action, approval and event", 800, pending_approval, True),
    Case("an upgrade holding its claim: its claim, action and event", 800, held_claim, True),
    Case("a plan change CloudAMQP is applying: action, event, upgrade entry", 800, plan_change, True),
    Case("an open incident", 800, open_incident, True),
    Case("an incident resolved past RETENTION_INCIDENTS_DAYS", 366, resolved_incident, False),
    Case("an incident resolved within RETENTION_INCIDENTS_DAYS", 364, resolved_incident, True),
    Case("a finished action past RETENTION_AUDIT_DAYS", 731, finished_action, False),
    Case("a finished action within RETENTION_AUDIT_DAYS", 729, finished_action, True),
    Case(
        "audit entries past RETENTION_AUDIT_DAYS, bar each instance's latest upgrade",
        731,
        audit_entries,
        False,
    ),
    notification(("delivered",)),
    notification(("delivered", "disabled")),
    notification(()),
    notification(("delivered", "retrying")),
    notification(("queued",)),
    notification(("parked",)),
    notification((), published=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_given_a_row_of_an_age_when_pruned_then_it_goes_or_stays_as_the_limits_say(
    store: Store, case: Case
) -> None:
    probe = await case.seed(store, NOW - case.days * DAY)
    assert await probe(), "seeded"

    await pruner(store).prune()

    assert await probe() is case.kept


@pytest.mark.parametrize("case", [c for c in CASES if not c.kept], ids=[c.name for c in CASES if not c.kept])
async def test_given_a_limit_of_0_then_that_kind_is_kept_for_ever(store: Store, case: Case) -> None:
    probe = await case.seed(store, NOW - case.days * DAY)
    forever = {f"RETENTION_{kind}_DAYS": "0" for kind in ("EVENTS", "NOTIFICATIONS", "INCIDENTS", "AUDIT")}

    run = await pruner(store, env=forever).prune()

    assert await probe() and run.pruned == {}


# --- the statements agree with the rules --------------------------------------------------------


async def test_an_old_action_goes_exactly_when_its_status_is_finished_and_its_event_with_it(
    store: Store,
) -> None:
    """Every status an action can have, old past every limit: the statement keeps exactly the
    rows ``shared.retention.action_prunable`` keeps, and the events of those."""
    at = NOW - 800 * DAY
    seeded = {
        status: (await alarm(store, at, {"value": n}, status=status, reason=None))[0]
        for n, status in enumerate(ActionStatus)
    }

    await pruner(store).prune()

    for status, a in seeded.items():
        assert await action_kept(store, a) is not action_prunable(status), status
        assert await event_kept(store, a) is not action_prunable(status), status


def test_the_partial_index_of_unfinished_actions_names_the_unfinished_statuses() -> None:
    """The index that finds an incident's unfinished actions serves the statements only while
    its condition reads as theirs (a new status means a new migration)."""
    [index] = [s for step in MIGRATIONS for s in step if "INDEX actions_unfinished" in s]
    assert f"WHERE status IN ({UNFINISHED_SQL})" in " ".join(index.split())


# --- an incident whose events go ----------------------------------------------------------------


async def test_given_an_incident_whose_events_are_all_pruned_then_it_keeps_its_count_and_first_and_last_event(
    store: Store,
) -> None:
    first, incident = await alarm(store, NOW - 90 * DAY, {"message": "disk", "value": 1})
    for n in range(2, 40):
        last, _ = await alarm(store, NOW - 90 * DAY + n * 600, {"message": "disk", "value": n})
    assert incident is not None

    run = await pruner(store, pace=Pace(first=7, most=7, least=7, least_pause=0.0, rest=0.0)).prune()

    page = await store.get_incident(incident)
    assert page is not None and run.pruned[Kind.EVENTS] == 39 and run.batches > 5
    assert (page.incident["event_count"], page.events_total, page.events) == (39, 0, [])
    assert page.first_event is not None and page.last_event is not None
    assert (page.first_event["event_id"], page.last_event["event_id"]) == (first.event_id, last.event_id)
    assert page.first_event["incident_change"] == "opened" and '"value": 39' in page.last_event["body"]


async def test_given_an_open_incident_whose_events_went_when_it_groups_again_then_the_new_one_is_its_last(
    store: Store,
) -> None:
    first, incident = await alarm(store, NOW - 40 * DAY, {"message": "memory", "value": 81})
    await alarm(store, NOW - 35 * DAY, {"message": "memory", "value": 82})
    await pruner(store).prune()
    newest, _ = await alarm(store, NOW, {"message": "memory", "value": 83})
    assert incident is not None

    page = await store.get_incident(incident)

    assert page is not None and page.first_event is not None and page.last_event is not None
    assert page.first_event["event_id"] == first.event_id and page.last_event["event_id"] == newest.event_id
    assert (page.incident["event_count"], page.events_total) == (3, 1)


async def test_given_an_older_event_kept_by_its_upgrade_when_it_goes_at_last_then_the_newest_stays_the_last(
    store: Store,
) -> None:
    first, incident = await alarm(store, NOW - 40 * DAY, {"message": "m", "value": 81})
    held, _ = await alarm(
        store, NOW - 39 * DAY, {"message": "m", "value": 91}, status=ActionStatus.IN_PROGRESS, reason=None
    )
    newest, _ = await alarm(store, NOW - 38 * DAY, {"message": "m", "value": 82})
    assert incident is not None
    await pruner(store).prune()
    page = await store.get_incident(incident)
    assert page is not None and page.first_event is not None and page.last_event is not None
    assert [e["event_id"] for e in page.events] == [held.event_id]
    assert (page.first_event["event_id"], page.last_event["event_id"]) == (first.event_id, newest.event_id)

    async with store.unit() as unit:  # the upgrade is done: nothing keeps its event now
        await unit.write_action(ActionRecord(held, ActionStatus.SUCCEEDED, NOW - 39 * DAY, incident, "i1"))
    await pruner(store).prune()

    page = await store.get_incident(incident)
    assert page is not None and page.first_event is not None and page.last_event is not None
    assert (page.events_total, page.incident["event_count"]) == (0, 3)
    assert (page.first_event["event_id"], page.last_event["event_id"]) == (first.event_id, newest.event_id)


# --- batches -------------------------------------------------------------------------------------


async def test_given_old_rows_with_kept_ones_among_them_then_small_batches_prune_every_other_one(
    store: Store,
) -> None:
    """300 old events, every seventh one awaiting approval: batches of at most 16 rows each go
    through them all (the kept ones do not stall them) and count what they pruned."""
    kept: list[Alarm] = []
    gone: list[Alarm] = []
    for n in range(300):
        status = ActionStatus.AWAITING_APPROVAL if n % 7 == 0 else ActionStatus.SKIPPED
        a, _ = await alarm(store, NOW - 60 * DAY + n, {"value": n}, status=status, reason=None)
        (kept if n % 7 == 0 else gone).append(a)
    before = metrics.RETENTION_PRUNED.labels("events")._value.get()

    run = await pruner(store, pace=Pace(first=16, most=16, least=4, least_pause=0.0, rest=0.0)).prune()

    assert run.finished and run.batches >= 300 // 16
    assert run.pruned[Kind.EVENTS] == len(gone)
    assert metrics.RETENTION_PRUNED.labels("events")._value.get() - before == len(gone)
    assert [await event_kept(store, a) for a in kept] == [True] * len(kept)
    assert await count(store, "SELECT COUNT(*) AS n FROM events") == len(kept)


async def test_a_second_run_finds_nothing_more(store: Store) -> None:
    for n in range(20):
        await alarm(store, NOW - 40 * DAY + n, {"value": n})
    first = await pruner(store).prune()

    second = await pruner(store).prune()

    assert first.pruned[Kind.EVENTS] == 20 and second.pruned[Kind.EVENTS] == 0


async def test_every_combination_of_delivery_statuses_agrees_with_the_rule(store: Store) -> None:
    statuses = ("queued", "delivered", "retrying", "parked", "disabled")
    combos = [c for n in range(3) for c in itertools.combinations(statuses, n)]
    probes = []
    for combo in combos:
        case = notification(combo)
        probes.append((combo, case.kept, await case.seed(store, NOW - 800 * DAY)))

    await pruner(store).prune()

    for combo, kept, probe in probes:
        assert await probe() is kept, combo


# --- the SQLite file shrinks --------------------------------------------------------------------


async def old_events(store: Store, count: int, at: float, size: int = 1500) -> None:
    """``count`` events of about ``size`` bytes each, recorded at ``at`` (batches of 250)."""
    for first in range(0, count, 250):
        async with store.unit() as unit:
            alarms = [
                Alarm(new_id(), at, {"value": n, "padding": "x" * size}, "k")
                for n in range(first, min(first + 250, count))
            ]
            await unit.record_events([Arrival(a, None, plan_incident(a, None)) for a in alarms], at)


def sqlite(store: Store) -> SqliteDatabase:
    assert isinstance(store.db, SqliteDatabase)
    return store.db


def file_size(url: str) -> int:
    return Path(url.removeprefix("sqlite:///")).stat().st_size


async def pruned_file(sqlite_url: str, rows: int) -> tuple[Run, int, int]:
    """``rows`` events past their limit pruned from the file: the run, and the file's size
    before and after (each once the WAL is copied back)."""
    store = await Store.open(sqlite_url)
    try:
        await old_events(store, rows, NOW - 40 * DAY)
        await sqlite(store).checkpoint()
        before = file_size(sqlite_url)
        run = await pruner(store).prune()
        await sqlite(store).checkpoint()
        return run, before, file_size(sqlite_url)
    finally:
        await store.close()


async def test_given_a_new_sqlite_file_then_pruning_hands_the_pages_back_and_the_file_shrinks(
    sqlite_url: str,
) -> None:
    run, before, after = await pruned_file(sqlite_url, 3000)

    assert run.pruned[Kind.EVENTS] == 3000 and run.pages > 0
    assert after < before / 4, (before, after)


async def test_given_a_file_from_before_incremental_vacuum_then_autopilot_vacuum_switches_it_once(
    sqlite_url: str,
) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as older:  # a file some earlier release created and wrote
        older.execute("CREATE TABLE earlier (x INTEGER)")
    run, before, kept_size = await pruned_file(sqlite_url, 2000)
    assert run.pruned[Kind.EVENTS] == 2000 and run.pages == 0 and kept_size == before

    status, out, err = await autopilot({"DATABASE_URL": sqlite_url}, "vacuum", "--json")

    assert status == 0, err
    said = json.loads(out)
    assert said["detail"] == "rewritten with incremental vacuum" and said["bytes"] < before / 4
    store = await Store.open(sqlite_url)
    try:
        assert (await sqlite(store).file_facts()).incremental
        await old_events(store, 2000, NOW - 40 * DAY)
        await sqlite(store).checkpoint()
        grown = file_size(sqlite_url)
        run = await pruner(store).prune()
        await sqlite(store).checkpoint()
    finally:
        await store.close()
    assert run.pages > 0 and file_size(sqlite_url) < grown / 2


# --- in the worker, one at a time, and the metrics -------------------------------------------------


async def test_a_worker_prunes_in_its_slot_and_both_processes_show_the_store_in_their_metrics(
    database_url: str, make_stack: MakeStack
) -> None:
    seeded = await Store.open(database_url)
    try:
        now = time.time()
        for n in range(40):
            await alarm(seeded, now - 45 * DAY + n, {"value": n})
        kept, _ = await alarm(seeded, now - 45 * DAY, {"value": 99}, status=ActionStatus.AWAITING_APPROVAL)
        await alarm(seeded, now - 1 * DAY, {"value": 100})
    finally:
        await seeded.close()
    port = free_port()
    stack = make_stack(
        DATABASE_URL=database_url, WORKER_METRICS_PORT=str(port), RETENTION_INTERVAL_SECONDS="30"
    )
    worker = await stack.start_worker()
    await stack.start_receiver()

    [said] = await worker.wait_event("retention.pruned", timeout=60)

    assert said["pruned"]["events"] == 40 and said["finished"] is True
    session = await stack.session()
    async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        from_worker = prometheus_samples(await resp.text())
    async with session.get(f"{stack.base}/metrics") as resp:
        from_receiver = prometheus_samples(await resp.text())
    assert from_worker['autopilot_retention_pruned_total{kind="events"}'] == 40
    for samples in (from_worker, from_receiver):
        # The oldest event left is the one awaiting approval, 45 days old.
        assert 44 * DAY < samples['autopilot_store_oldest_age_seconds{kind="events"}'] < 46 * DAY
        assert samples["autopilot_store_size_bytes"] > 0
    store = await Store.open(database_url)
    try:
        assert await event_kept(store, kept)
        assert await count(store, "SELECT COUNT(*) AS n FROM events") == 2
        async with store.db.transaction(write=False) as tx:
            slot = await tx.fetchrow("SELECT owner, runs FROM schedules WHERE name = 'retention'")
    finally:
        await store.close()
    assert slot is not None and slot["runs"] == 1 and slot["owner"].endswith(f":{worker.popen.pid}")
