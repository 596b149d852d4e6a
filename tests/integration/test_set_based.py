"""The store's set-based statements for a batch — many rows in one statement — against what
the same alarms do one at a time, on SQLite and PostgreSQL alike; and the worker's group
commit of upgrades' outcomes (``worker.group_commit``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared import metrics
from shared.alarm import Alarm, event_key, new_id
from shared.controls import Pause
from shared.db import rows_cte
from shared.incidents import plan_incident
from shared.policy import Policy
from shared.records import Asked, Asking
from shared.settings import Settings
from shared.store import ActionRecord, ActionStatus, Arrival, AuditEntry, Finish, Store
from shared.store.actions import ASKING, DECIDED_ROW
from shared.store.schema import MIGRATIONS
from tests.support import store_refuses
from worker.first_step import Context, Skipped, plan_batch
from worker.group_commit import Askings, Finishes


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


def alarm(event_id: str, instance: str = "i1", **body: Any) -> Alarm:
    body = {"alarm_type": "memory", "value": 85, "instance_id": instance, **body}
    return Alarm(event_id, 100.0, body, event_key(body))


def arrival(a: Alarm) -> Arrival:
    instance = a.body.get("instance_id")
    return Arrival(a, instance, plan_incident(a, instance))


@pytest.mark.parametrize("count", [1, 3, 150])
async def test_rows_cte_hands_back_every_row_and_type(store: Store, count: int) -> None:
    columns = [("n", "int"), ("name", "text"), ("at", "float8"), ("note", "text")]
    rows = [(i, f"row-{i}", i + 0.25, None if i % 2 else "é") for i in range(count)]
    async with store.db.transaction() as tx:
        cte, args = rows_cte(tx.dialect, "v", columns, rows, first=2)
        got = await tx.fetch(f"WITH {cte} SELECT n, name, at, note FROM v WHERE n >= $1 ORDER BY n", 0, *args)
    assert [tuple(r.values()) for r in got] == rows


async def test_a_run_of_alarms_groups_into_its_incident_as_one_at_a_time(store: Store) -> None:
    first, second, third = alarm("e1", value=85), alarm("e2", value=90), alarm("e3", value=None)
    other = alarm("e4", "i2")
    async with store.unit() as unit:
        records = await unit.record_events([arrival(a) for a in (first, second, other, third)], 100.0)
    assert [(r.new, r.incident_change) for r in records] == [
        (True, "opened"),
        (True, "grouped"),
        (True, "opened"),
        (True, "grouped"),
    ]
    assert (
        records[0].incident_id == records[1].incident_id == records[3].incident_id != records[2].incident_id
    )
    [incident] = [i for i in await store.list_incidents() if i["incident_id"] == records[0].incident_id]
    # Three alarms counted; the last value any of them carried (the third carried none).
    assert (incident["event_count"], incident["last_value"]) == (3, "90")
    opened = [n for n, _ in await store.list_notifications() if n["event_type"] == "incident.opened"]
    assert len(opened) == 2
    events = {e["event_id"]: e for e in await store.list_events()}
    assert {e: events[e]["incident_change"] for e in ("e1", "e2", "e3", "e4")} == {
        "e1": "opened",
        "e2": "grouped",
        "e3": "grouped",
        "e4": "opened",
    }

    # A later run: into the open incident, and a redelivery of a recorded event changes nothing.
    async with store.unit() as unit:
        later = await unit.record_events([arrival(alarm("e5")), arrival(first)], 200.0)
    assert [(r.new, r.incident_change) for r in later] == [(True, "grouped"), (False, "opened")]
    [incident] = [i for i in await store.list_incidents() if i["incident_id"] == records[0].incident_id]
    assert incident["event_count"] == 4


async def test_a_run_with_a_resolve_changes_its_incidents_in_order(store: Store) -> None:
    opened, resolve, again = (
        alarm("e1", message="A"),
        alarm("e2", message="A", resolved=True),
        alarm("e3", message="A"),
    )
    async with store.unit() as unit:
        records = await unit.record_events([arrival(a) for a in (opened, resolve, again)], 100.0)
    assert [r.incident_change for r in records] == ["opened", "resolved", "opened"]
    assert records[0].incident_id == records[1].incident_id != records[2].incident_id
    statuses = {i["incident_id"]: i["status"] for i in await store.list_incidents()}
    assert statuses == {records[0].incident_id: "resolved", records[2].incident_id: "open"}


async def test_a_skip_decided_in_a_batch_makes_identical_content_a_duplicate(store: Store) -> None:
    first, same = alarm("e1", value=40), alarm("e2", value=40)
    context = Context(Settings(instance_ids=("i1",)), Policy.default(Settings()), False, "w", new_id)
    async with store.unit() as unit:
        snapshot = await unit.load([arrival(first), arrival(same)], {"i1/memory"}, 100.0)
        steps, writes = plan_batch(snapshot, [arrival(first), arrival(same)], 100.0, context)
        await unit.apply(writes, 100.0)
    assert [s.skip.reason.value if isinstance(s, Skipped) else s for s in steps] == [
        "below_threshold",
        "duplicate",
    ]
    async with store.unit() as unit:
        # Written at the end of that batch, and read from the store now.
        later = await unit.load([arrival(alarm("e3", value=40))], (), 200.0)
    assert later.decided == {first.event_key: {"e1", "e2"}}  # the lowest and highest decided
    statuses = {a["event_id"]: (a["status"], a["reason"]) for a in await store.list_actions()}
    assert statuses == {"e1": ("skipped", "below_threshold"), "e2": ("skipped", "duplicate")}


async def test_a_pause_set_in_a_transaction_holds_its_later_upgrades(store: Store) -> None:
    async with store.unit() as unit:
        assert await unit.pauses_for("i1", 100.0) == []
        await unit.set_pause(Pause("i1", 500.0, "ops", None, 100.0))
        assert [p.scope for p in await unit.pauses_for("i1", 100.0)] == ["i1"]
        await unit.clear_pause("i1", 100.0)
        assert await unit.pauses_for("i1", 100.0) == []


async def test_a_claim_read_as_done_cools_down_until_its_cooldown_ends(store: Store) -> None:
    await _claims(store, "a/memory", "b/memory")
    await store.finish_claims([_finish("a/memory")])  # done: cooling down until 100 + 600
    for now, verdict in ((650.0, "cooling_down"), (750.0, "granted")):
        async with store.unit() as unit:
            result = await unit.try_claim("a/memory", "a", f"w/{now}", now, 60.0, 600.0)
            assert result.verdict.value == verdict
            if now < 700:
                # Held, its lease run out (not done): asked of the store, as without the read.
                held = await unit.try_claim("b/memory", "b", "other", now, 60.0, 600.0)
                assert held.verdict.value == "noticed"
    async with store.db.transaction(write=False) as tx:
        row = await tx.fetchrow("SELECT status, owner FROM claims WHERE scope = 'a/memory'")
    assert row == {"status": "held", "owner": "w/750.0"}


async def _claims(store: Store, *scopes: str) -> None:
    async with store.unit() as unit:
        for scope in scopes:
            result = await unit.try_claim(scope, scope.split("/")[0], f"w/{scope}", 100.0, 60.0, 600.0)
            assert result.verdict.value == "granted"
            await unit.write_action(ActionRecord(alarm(scope), ActionStatus.IN_PROGRESS, 100.0, None, "i1"))


def _finish(scope: str, *, succeeded: bool = True, owner: str | None = None) -> Finish:
    record = ActionRecord(
        alarm(scope),
        ActionStatus.SUCCEEDED if succeeded else ActionStatus.RETRYING,
        110.0,
        None,
        "i1",
        plan="hare-1",
    )
    audit = (
        AuditEntry(f"upgrade:{scope}", 110.0, "autopilot", "automatic", "upgrade", scope, {})
        if succeeded
        else None
    )
    return Finish(scope, owner or f"w/{scope}", succeeded, record, audit)


async def test_finishing_several_claims_at_once_is_each_alone(store: Store) -> None:
    await _claims(store, "a/memory", "b/memory", "c/memory")
    written = await store.finish_claims(
        [_finish("b/memory"), _finish("a/memory", succeeded=False), _finish("c/memory", owner="intruder")]
    )
    assert written == [True, True, True]  # the action rows; a claim only its owner ends
    async with store.db.transaction(write=False) as tx:
        claims = {r["scope"]: r["status"] for r in await tx.fetch("SELECT scope, status FROM claims")}
        audit = sorted(r["audit_id"] for r in await tx.fetch("SELECT audit_id FROM audit"))
    assert claims == {"a/memory": "released", "b/memory": "done", "c/memory": "held"}
    assert audit == ["upgrade:b/memory", "upgrade:c/memory"]
    statuses = {a["event_id"]: a["status"] for a in await store.list_actions()}
    assert statuses == {"a/memory": "retrying", "b/memory": "succeeded", "c/memory": "succeeded"}
    succeeded = sorted(
        n["subject"] for n, _ in await store.list_notifications() if n["event_type"] == "action.succeeded"
    )
    assert succeeded == ["b/memory", "c/memory"]
    # Written again (a retried write): the first final word stays, nothing is added.
    assert await store.finish_claims([_finish("b/memory")]) == [False]


async def test_outcomes_that_come_back_together_commit_together_and_one_refused_fails_alone(
    store: Store,
) -> None:
    await _claims(store, "a/memory", "b/memory", "c/memory")
    await store_refuses(store, "actions", "UPDATE", "action_id", "b/memory")
    finishes = Finishes(store)
    before = metrics.BATCH_FALLBACKS._value.get()

    results = await asyncio.gather(
        *(finishes.finish(_finish(scope)) for scope in ("a/memory", "b/memory", "c/memory")),
        return_exceptions=True,
    )

    # Together: the refusal failed their shared transaction, and each was then tried alone.
    assert metrics.BATCH_FALLBACKS._value.get() == before + 1
    assert results[0] is True and results[2] is True
    assert isinstance(results[1], Exception) and "refused by the store" in str(results[1])
    statuses = {a["event_id"]: a["status"] for a in await store.list_actions()}
    assert statuses == {"a/memory": "succeeded", "b/memory": "in_progress", "c/memory": "succeeded"}
    async with store.db.transaction(write=False) as tx:
        claims = {r["scope"]: r["status"] for r in await tx.fetch("SELECT scope, status FROM claims")}
    assert claims == {"a/memory": "done", "b/memory": "held", "c/memory": "done"}

    # One alone is recorded at once, in a transaction of its own: no fallback.
    await _claims(store, "d/memory")
    assert await finishes.finish(_finish("d/memory")) is True
    assert metrics.BATCH_FALLBACKS._value.get() == before + 1


async def test_a_change_asked_and_unanswered_is_read_back_with_the_batch_and_holds_the_instance(
    store: Store,
) -> None:
    # Written before the call (``Unit.ask``); while no answer is known, the batch's read
    # hands it to the alarm's next attempt, and other alarms of the instance see a change that
    # may be under way. CloudAMQP's answer that it did not make it (a 503) ends both.
    first, other = alarm("e1"), alarm("e2")
    async with store.unit() as unit:
        await unit.record_events([arrival(first)], 100.0)
        await unit.write_action(
            ActionRecord(first, ActionStatus.IN_PROGRESS, 100.0, instance_id="i1", plan="next")
        )
        await unit.ask([Asking("e1", Asked(110.0, "hare-1", "bunny-1"), "i1", "bunny-1")])

    async def seen() -> tuple[Asked | None, dict[str, str]]:
        async with store.unit() as unit:
            snapshot = await unit.load([arrival(first), arrival(other)], (), 120.0, quiet_before=quiet)
        return snapshot.events["e1"].asked, snapshot.reconfiguring

    asked = Asked(110.0, "hare-1", "bunny-1")
    quiet = 105.0  # its worker still renewing its claim: the claim holds the others off
    assert await seen() == (asked, {})
    quiet = 115.0  # its worker quiet since before the change was asked
    assert await seen() == (asked, {"i1": "hare-1"})
    for status, reason, expected in [
        (ActionStatus.RETRYING, "unanswered", (asked, {"i1": "hare-1"})),
        (ActionStatus.RETRYING, None, (None, {})),
        (ActionStatus.SUCCEEDED, None, (None, {})),
    ]:
        async with store.unit() as unit:
            await unit.write_action(ActionRecord(first, status, 130.0, instance_id="i1", reason=reason))
        assert await seen() == expected, (status, reason)


async def test_the_changes_of_calls_made_together_are_written_down_in_one_transaction(store: Store) -> None:
    # A plan change and a disk resize asked at once, and two calls of one instance: one
    # transaction writes every asked change and the latest plan read of each instance; what a
    # change does not ask (a resize's plan) keeps what the row had.
    alarms = [alarm("e1", "i1"), alarm("e2", "i2", alarm_type="disk"), alarm("e3", "i1")]
    async with store.unit() as unit:
        await unit.record_events([arrival(a) for a in alarms], 100.0)
        for a, plan in zip(alarms, ["next", "squirrel-1", None], strict=True):
            await unit.write_action(
                ActionRecord(a, ActionStatus.IN_PROGRESS, 100.0, instance_id=a.body["instance_id"], plan=plan)
            )
    askings = Askings(store)
    before = metrics.BATCH_FALLBACKS._value.get()
    batches: list[int] = []
    askings.on_batch = batches.append
    await asyncio.gather(
        askings.ask(Asking("e1", Asked(110.0, "hare-1", "bunny-1"), "i1", "bunny-1")),
        askings.ask(Asking("e2", Asked(111.0, None, "squirrel-1", 0, 25), "i2", "squirrel-1")),
        askings.ask(Asking("e3", Asked(112.0, "rabbit-1", "hare-1"), "i1", "hare-1")),
    )
    assert batches == [3] and metrics.BATCH_FALLBACKS._value.get() == before
    async with store.db.transaction(write=False) as tx:
        rows = await tx.fetch(
            """SELECT action_id, asked_at, plan, from_plan, extra_disk_from, extra_disk_to
               FROM actions ORDER BY action_id"""
        )
        plans = await tx.fetch("SELECT instance_id, plan, read_at FROM instance_plans ORDER BY instance_id")
    assert [tuple(r.values()) for r in rows] == [
        ("e1", 110.0, "hare-1", "bunny-1", None, None),
        ("e2", 111.0, "squirrel-1", "squirrel-1", 0, 25),
        ("e3", 112.0, "rabbit-1", "hare-1", None, None),
    ]
    assert [tuple(r.values()) for r in plans] == [("i1", "hare-1", 112.0), ("i2", "squirrel-1", 111.0)]


async def _found_by_partial_index(store: Store, index: str, condition: str, query: str, *args: Any) -> None:
    """The migration's partial index ``index`` has ``condition`` word for word (a query uses
    it only when its condition reads the same), and on SQLite ``query`` uses it."""
    [created] = [s for step in MIGRATIONS for s in step if f"INDEX {index} " in s]
    assert f"WHERE {' '.join(condition.split())}" in " ".join(created.split())
    if store.db.dialect != "sqlite":
        return  # (PostgreSQL's plan depends on its statistics)
    async with store.db.transaction(write=False) as tx:
        plan = await tx.fetch(f"EXPLAIN QUERY PLAN {query}", *args)
    assert any(index in str(row.get("detail")) for row in plan), plan


async def test_the_instances_with_an_unanswered_change_are_found_by_their_partial_index(store: Store) -> None:
    query = f"SELECT plan FROM actions WHERE {ASKING} AND instance_id = $1"
    await _found_by_partial_index(store, "actions_asking", ASKING, query, "i1")


async def test_identical_content_is_told_apart_by_the_ends_of_its_decided_rows_found_by_index(
    store: Store,
) -> None:
    # Reminders of one alarm (identical content, new event ids): a pause's skips do not make a
    # duplicate, the others do; the batch's read has the lowest and highest of those.
    reminders = [alarm(f"e{n}") for n in range(1, 6)]
    outcomes = [
        (ActionStatus.SKIPPED, "below_threshold"),
        (ActionStatus.SKIPPED, "paused"),
        (ActionStatus.SUCCEEDED, None),
        (ActionStatus.SKIPPED, "cooling_down"),
        (ActionStatus.SKIPPED, "paused"),
    ]
    async with store.unit() as unit:
        await unit.record_events([arrival(a) for a in reminders], 100.0)
        for a, (status, reason) in zip(reminders, outcomes, strict=True):
            await unit.write_action(ActionRecord(a, status, 100.0, instance_id="i1", reason=reason))
        other = alarm("e9", "i2")
        snapshot = await unit.load([arrival(reminders[0]), arrival(other)], (), 120.0)
    assert snapshot.decided == {reminders[0].event_key: {"e1", "e4"}}

    query = f"""SELECT event_id FROM actions WHERE event_key = $1 AND {DECIDED_ROW}
                ORDER BY event_id DESC LIMIT 1"""
    await _found_by_partial_index(store, "actions_decided", DECIDED_ROW, query, reminders[0].event_key)
