"""The state store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.claims import ClaimVerdict
from shared.errors import StoreError
from shared.incidents import plan_incident
from shared.store import MIGRATIONS, ActionRecord, ActionStatus, Store
from tests.support import OneByOne


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


def alarm(event_id: str = "e1", **body: Any) -> Alarm:
    body = body or {"alarm_type": "memory", "value": 85, "instance_id": "i1"}
    return Alarm(event_id=event_id, received_at=100.0, body=body, event_key=event_key(body))


async def record(store: Store, a: Alarm) -> Any:
    return await OneByOne(store).record_event(a, "i1", plan_incident(a, "i1"), 100.0)


async def test_opening_twice_migrates_once_and_keeps_data(database_url: str) -> None:
    first = await Store.open(database_url)
    await record(first, alarm())
    await first.close()

    second = await Store.open(database_url)
    rows = await second.list_incidents()
    await second.close()

    assert len(rows) == 1


@pytest.mark.new_store
async def test_given_a_new_store_when_several_open_it_at_once_then_it_is_migrated_once(
    database_url: str,
) -> None:
    """The receiver and the worker start together on a new store, and each migrates it as it
    opens it: one of them does, the others find it done."""
    stores = await asyncio.gather(*(Store.open(database_url) for _ in range(4)))
    try:
        for n, opened in enumerate(stores):
            await record(opened, alarm(f"e{n}"))
        async with stores[0].db.transaction(write=False) as tx:
            versions = [row["version"] for row in await tx.fetch("SELECT version FROM schema_version")]
        [incident] = await stores[-1].list_incidents()
    finally:
        for opened in stores:
            await opened.close()

    assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))
    assert incident["event_count"] == 4


async def test_an_event_is_recorded_once_however_often_it_arrives(store: Store) -> None:
    a = alarm()

    first = await record(store, a)
    again = await record(store, a)

    assert first.new and first.incident_change == "opened"
    assert not again.new and again.incident_id == first.incident_id
    [incident] = await store.list_incidents()
    assert incident["event_count"] == 1


async def test_identical_content_is_a_duplicate_only_once_decided(store: Store) -> None:
    a, b = alarm("e1"), alarm("e2")
    await record(store, a)
    await record(store, b)

    assert not await OneByOne(store).key_already_decided(b.event_key, b.event_id)
    await OneByOne(store).write_action(ActionRecord(a, ActionStatus.IN_PROGRESS, 1.0, None, "i1"))
    assert not await OneByOne(store).key_already_decided(b.event_key, b.event_id)
    await OneByOne(store).write_action(ActionRecord(a, ActionStatus.SUCCEEDED, 2.0, None, "i1"))
    assert await OneByOne(store).key_already_decided(b.event_key, b.event_id)
    assert not await OneByOne(store).key_already_decided(a.event_key, a.event_id)


async def test_the_action_row_is_one_per_event_and_shows_the_latest_status(store: Store) -> None:
    a = alarm()
    await OneByOne(store).write_action(ActionRecord(a, ActionStatus.IN_PROGRESS, 1.0, None, "i1", plan="p"))
    await OneByOne(store).write_action(ActionRecord(a, ActionStatus.RETRYING, 2.0, None, "i1", detail="503"))

    [row] = await store.list_actions()
    assert (row["status"], row["plan"], row["detail"]) == ("retrying", "p", "503")
    assert row["created_at"] == 1.0 and row["updated_at"] == 2.0


async def test_the_first_final_word_about_an_event_wins_unless_replayed(store: Store) -> None:
    a = alarm()
    assert await OneByOne(store).write_action(ActionRecord(a, ActionStatus.SUCCEEDED, 1.0, None, "i1"))

    overwritten = await OneByOne(store).write_action(ActionRecord(a, ActionStatus.SKIPPED, 2.0, None, "i1"))
    replay = Alarm(a.event_id, a.received_at, a.body, a.event_key, replayed=True)
    replayed = await OneByOne(store).write_action(ActionRecord(replay, ActionStatus.SKIPPED, 3.0, None, "i1"))

    assert not overwritten and replayed
    [row] = await store.list_actions()
    assert row["status"] == "skipped" and row["updated_at"] == 3.0


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        # (action, at) steps before the final claim at t=100; owner "w1" takes the first claim at t=0.
        ([], ClaimVerdict.GRANTED),
        ([("claim", 0)], ClaimVerdict.HELD),  # lease 120 still running at 100
        ([("claim", -30)], ClaimVerdict.NOTICED),  # lease ran out at 90: marked stale, not taken
        ([("claim", -300), ("notice", -150)], ClaimVerdict.GRANTED),  # stale, extra lease over at -30
        ([("claim", -200), ("notice", 0)], ClaimVerdict.HELD),  # the holder's extra lease runs
        ([("claim", -300), ("notice", -150), ("done", 0)], ClaimVerdict.COOLING_DOWN),  # it reported
        ([("claim", -300), ("notice", -150), ("renew", -10)], ClaimVerdict.HELD),  # it is alive
        ([("claim", 0), ("done", 0)], ClaimVerdict.COOLING_DOWN),  # cooldown 1800
        ([("claim", -2000), ("done", 0)], ClaimVerdict.GRANTED),  # cooldown over
        ([("claim", 0), ("release", 0)], ClaimVerdict.GRANTED),  # released after a retryable failure
    ],
    ids=[
        "free",
        "held",
        "lease-expired",
        "stale-expired",
        "stale-running",
        "stale-then-reported",
        "stale-then-renewed",
        "cooling-down",
        "cooldown-over",
        "released",
    ],
)
async def test_claim_rules_in_the_store(
    store: Store, steps: list[tuple[str, float]], expected: ClaimVerdict
) -> None:
    for action, at in steps:
        if action == "claim":
            await OneByOne(store).try_claim("i1", "i1", "w1", at, 120, 1800)
        elif action == "notice":
            assert (
                await OneByOne(store).try_claim("i1", "i1", "w0", at, 120, 1800)
            ).verdict is ClaimVerdict.NOTICED
        elif action == "renew":
            assert await store.renew_claim("i1", "w1", at + 120)
        else:
            await store.finish_claim("i1", "w1", succeeded=action == "done")

    result = await OneByOne(store).try_claim("i1", "i1", "w2", 100, 120, 1800)

    assert result.verdict is expected


async def test_only_the_owner_can_finish_a_claim(store: Store) -> None:
    await OneByOne(store).try_claim("i1", "i1", "w1", 0, 120, 1800)
    await store.finish_claim("i1", "intruder", succeeded=False)

    assert (await OneByOne(store).try_claim("i1", "i1", "w2", 1, 120, 1800)).verdict is ClaimVerdict.HELD


async def test_many_connections_racing_for_one_claim_grant_exactly_one(database_url: str) -> None:
    stores = [await Store.open(database_url) for _ in range(8)]
    try:
        results = await asyncio.gather(
            *(
                OneByOne(s).try_claim("race", "i1", f"w{n}", 10.0, 120, 1800)
                for n, s in enumerate(stores)
                for _ in range(3)
            )
        )
    finally:
        for s in stores:
            await s.close()

    verdicts = [r.verdict for r in results]
    assert verdicts.count(ClaimVerdict.GRANTED) == 1
    assert set(verdicts) == {ClaimVerdict.GRANTED, ClaimVerdict.HELD}


async def test_many_connections_grouping_one_new_message_open_one_incident(database_url: str) -> None:
    stores = [await Store.open(database_url) for _ in range(5)]
    body = {"message": "Queue depth high"}
    try:
        await asyncio.gather(
            *(
                OneByOne(s).record_event(a, None, plan_incident(a, None), 100.0)
                for n, s in enumerate(stores)
                for a in [Alarm(f"e{n}-{k}", 100.0, body, event_key(body)) for k in range(10)]
            )
        )
        rows = await stores[0].list_incidents()
    finally:
        for s in stores:
            await s.close()

    assert [(r["status"], r["event_count"]) for r in rows] == [("open", 50)]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mysql://localhost/db", "not supported"),
        ("postgresql://postgres@127.0.0.1:1/test", "cannot connect to PostgreSQL"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_database_here", "cannot connect to PostgreSQL"),
        ("sqlite:///", "names no file"),
        ("sqlite:////proc/no/such/dir/x.db", "cannot open SQLite"),
    ],
)
async def test_a_wrong_database_url_is_one_clear_line(url: str, fragment: str) -> None:
    with pytest.raises(StoreError) as info:
        await Store.open(url)

    assert fragment in str(info.value) and "\n" not in str(info.value)
