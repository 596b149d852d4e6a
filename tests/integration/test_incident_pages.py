"""Bounded reads of one incident: ``GET /incidents/{id}`` and the console's incident page show a
page of its events (newest first, with the total), its first and last event and its newest
actions, however many alarms it grouped — and after its events were pruned, its count and its
first and last event still. The receiver in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from receiver.keys import STORE
from shared.alarm import Alarm, event_key, new_id
from shared.incidents import plan_incident
from shared.retention import DAY, Kind
from shared.settings import Settings
from shared.snapshot import Arrival
from shared.store import ActionRecord, ActionStatus, Store
from tests.integration.test_console import OPERATOR_TOKEN, login, page
from worker.retention import Pruner

Client = TestClient[web.Request, web.Application]
T0 = 1_767_000_000.0
# The bound the issue sets for one page of an incident of 10,000 events. The median of a few
# requests is held to it: a single request on a shared 2-core machine can be descheduled for
# longer; before pages, the same request read and sent all 10,000 events (0.5–0.9 s here).
PAGE_BOUND_S = 0.100


@pytest.fixture
async def receiver(vhost: str, database_url: str, aiohttp_client: AiohttpClient) -> Client:
    settings = Settings.from_env(
        {"RABBITMQ_URL": vhost, "DATABASE_URL": database_url, "OPERATOR_TOKEN": OPERATOR_TOKEN}
    )
    return await aiohttp_client(create_app(settings))


async def group(
    store: Store, key: str, count: int, start: float, step: float = 1.0
) -> tuple[str, list[Alarm]]:
    """``count`` alarms grouped into one incident, as a worker records them, batches of 500
    together (one recorded time each; received one ``step`` apart): events, incident and a
    skipped action each; the incident and the alarms, oldest first."""
    alarms: list[Alarm] = []
    incident = ""
    for first in range(0, count, 500):
        batch = []
        for n in range(first, min(first + 500, count)):
            body = {"message": key, "alarm_type": "memory", "value": n % 100, "instance_id": "i1", "n": n}
            batch.append(Alarm(new_id(), start + n * step, body, event_key(body)))
        async with store.unit() as unit:
            arrivals = [Arrival(a, "i1", plan_incident(a, "i1")) for a in batch]
            recorded = await unit.record_events(arrivals, batch[-1].received_at)
            incident = recorded[0].incident_id or incident
            await unit.write_actions(
                [
                    ActionRecord(a, ActionStatus.SKIPPED, a.received_at, incident, "i1", "below_threshold")
                    for a in batch
                ]
            )
        alarms += batch
    return incident, alarms


async def get_json(client: Client, path: str) -> Any:
    async with client.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_an_incident_of_10000_events_answers_with_a_page_well_within_100_ms(receiver: Client) -> None:
    incident, alarms = await group(receiver.app[STORE], "a long alarm", 10_000, T0)
    # Analysed, as any store's tables are (autovacuum) long before one incident holds 10,000
    # events. Without statistics PostgreSQL guesses 89 rows an incident and plans each page as
    # a sort of all 10,000 (10 ms a statement here, against 0.6 ms analysed) until a generic
    # plan replaces it at the sixth run; the servers tests run on may have autovacuum off.
    async with receiver.app[STORE].db.transaction() as tx:
        await tx.execute("ANALYZE events")
        await tx.execute("ANALYZE actions")
    await get_json(receiver, f"/incidents/{incident}")  # warm-up: the first request opens things

    took = []
    for _ in range(5):
        started = time.perf_counter()
        body = await get_json(receiver, f"/incidents/{incident}")
        took.append(time.perf_counter() - started)

    assert statistics.median(took) < PAGE_BOUND_S, took
    assert (body["count"], body["events_total"], body["actions_total"]) == (10_000, 10_000, 10_000)
    assert len(body["events"]) == 100 and len(body["actions"]) == 100
    assert [e["id"] for e in body["events"][:3]] == [a.event_id for a in alarms[:-4:-1]]
    assert body["first_event"]["id"] == alarms[0].event_id and body["last_event"]["id"] == alarms[-1].event_id


async def test_an_incidents_events_page_newest_first_through_limit_and_offset(receiver: Client) -> None:
    incident, alarms = await group(receiver.app[STORE], "paged", 25, T0)
    newest_first = [a.event_id for a in reversed(alarms)]

    pages = [await get_json(receiver, f"/incidents/{incident}?limit=10&offset={o}") for o in (0, 10, 20, 30)]

    assert [[e["id"] for e in p["events"]] for p in pages] == [
        newest_first[:10],
        newest_first[10:20],
        newest_first[20:],
        [],
    ]
    assert {(p["limit"], p["offset"], p["events_total"]) for p in pages} == {
        (10, o, 25) for o in (0, 10, 20, 30)
    }
    async with receiver.get(f"/incidents/{incident}?limit=501") as resp:
        assert resp.status == 400 and (await resp.json())["error"] == "bad_query"


async def test_an_incidents_actions_beyond_the_newest_are_under_its_actions(receiver: Client) -> None:
    incident, alarms = await group(receiver.app[STORE], "many actions", 130, T0)
    await group(receiver.app[STORE], "another", 3, T0)

    body = await get_json(receiver, f"/incidents/{incident}")
    rest = await get_json(receiver, f"/actions?incident={incident}&limit=500")

    assert len(body["actions"]) == 100 and body["actions_total"] == 130
    assert [a["id"] for a in body["actions"]] == [a.event_id for a in reversed(alarms)][:100]
    assert len(rest["actions"]) == 130 and {a["incident_id"] for a in rest["actions"]} == {incident}


async def test_given_an_incident_whose_events_were_pruned_then_it_shows_its_count_first_and_last_event(
    receiver: Client,
) -> None:
    store = receiver.app[STORE]
    incident, alarms = await group(store, "quiet since", 12, T0, step=3600.0)
    now = T0 + 40 * DAY
    run = await Pruner(Settings(), store, worker_id="test", clock=lambda: now).prune()

    body = await get_json(receiver, f"/incidents/{incident}")

    assert run.pruned[Kind.EVENTS] == 12
    assert (body["count"], body["events_total"], body["events"]) == (12, 0, [])
    assert body["first_event"]["id"] == alarms[0].event_id and body["first_event"]["change"] == "opened"
    assert body["last_event"]["id"] == alarms[-1].event_id and body["last_event"]["body"]["n"] == 11
    assert body["actions_total"] == 12  # actions are kept longer (RETENTION_AUDIT_DAYS)


async def test_the_console_pages_an_incidents_events_and_shows_its_first_and_last(receiver: Client) -> None:
    incident, _ = await group(receiver.app[STORE], "console paged", 60, T0)
    other, _ = await group(receiver.app[STORE], "other incident", 1, T0 + 100)
    await login(receiver, OPERATOR_TOKEN)

    _, first, _ = await page(receiver, f"/ui/incidents/{incident}")
    _, second, _ = await page(receiver, f"/ui/incidents/{incident}?offset=50")

    assert "60 kept of the 60 it grouped" in first and "older →" in first
    assert first.count("&#34;n&#34;: ") == 50 + 2  # the page's events, and the first and last event
    assert second.count("&#34;n&#34;: ") == 10 + 2 and "older →" not in second and "← newer" in second
    assert "The newest 20 of 60" in first and f"/ui/actions?incident={incident}" in first
    _, actions, _ = await page(receiver, f"/ui/actions?incident={incident}")
    _, everything, _ = await page(receiver, "/ui/actions")
    assert actions.count(f'href="/ui/incidents/{incident}"') == 50 + 1  # a full page, and the filter's
    assert other[:8] not in actions and other[:8] in everything
