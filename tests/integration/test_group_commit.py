"""Group commit (``worker.batch``): alarms delivered together take their first steps in one
transaction, and nothing else changes — the same rows and outcomes as one alarm at a time, one
alarm the store refuses fails alone, and a redelivered batch changes nothing. In-process
workers against the real broker (a vhost per test) and both stores."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared import envelope, metrics, topology
from shared.alarm import Alarm, new_id
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, now_iso
from tests.integration.test_worker_inprocess import parked
from tests.support import Services, queue_depth, store_refuses
from worker import batch
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.process import Processor

DELAYS = (0.2, 0.5)
MANAGED = tuple(f"gc-{i:02d}" for i in range(8))
POISON = "gc-poison"  # an instance id the store is made to refuse (a trigger)

Run = Callable[..., Awaitable[Store]]


def alarm(instance: str, value: float = 85, **changes: Any) -> dict[str, Any]:
    body = {"alarm_type": "memory", "value": value, "instance_id": instance, "triggered_at": now_iso()}
    body.update(changes)
    return body


def storm() -> list[dict[str, Any]]:
    """What a batch meets in a storm, in an order that exercises the batch's own writes: first
    alarms (upgrades), identical re-sends and reminders of them within the same batch, alarms
    below the threshold, an unmanaged instance, a resolve and an alarm after it."""
    firsts = [alarm(i) for i in MANAGED[:4]]
    return [
        firsts[0],
        firsts[0],  # identical: a duplicate of a decision in this very batch
        alarm(MANAGED[0], 91),  # a reminder: the instance is being upgraded
        firsts[1],
        alarm(MANAGED[4], 40),  # below the threshold
        alarm("gc-unmanaged"),
        firsts[2],
        alarm(MANAGED[1], 95),
        alarm(MANAGED[5], 40),
        {"message": "gc queue depth", "resolved": False},
        {"message": "gc queue depth", "resolved": True},
        {"message": "gc queue depth"},  # opens a new incident after the resolve
        firsts[3],
        firsts[1],
        alarm(MANAGED[6], 50, alarm_type="cpu"),
    ]


async def publish(url: str, *bodies: dict[str, Any], ids: list[str] | None = None) -> list[str]:
    """Alarms onto the work queue as the receiver publishes them, with the given event ids."""
    ids = ids or [new_id() for _ in bodies]
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_topology(channel, DELAYS)
        for body, event_id in zip(bodies, ids, strict=True):
            message = aio_pika.Message(
                json.dumps(body).encode(),
                message_id=event_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=envelope.alarm_headers(event_id, time.time()),
            )
            await channel.default_exchange.publish(message, routing_key=topology.WORK_QUEUE, mandatory=True)
    return ids


@pytest.fixture
async def other_url(database_url: str, tmp_path: Path, services: Services) -> AsyncIterator[str]:
    """A second, empty store of the same kind as ``database_url``."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/other.db"
        return
    from tests.conftest import _postgres_database

    async for url in _postgres_database(services):
        yield url


@pytest.fixture
async def run(vhost: str, fake_api: CloudAmqpStandIn) -> AsyncIterator[Run]:
    """One in-process worker, until its queues are empty; returns the store it used."""
    stores: list[Store] = []
    async with aiohttp.ClientSession() as session:

        async def drain(url: str, **overrides: Any) -> Store:
            fields: dict[str, Any] = {
                "rabbitmq_url": vhost,
                "database_url": url,
                "cloudamqp_api_url": fake_api.url,
                "cloudamqp_api_key": API_KEY,
                "instance_ids": MANAGED,
                "retry_delays": DELAYS,
                "max_attempts": 3,
                "quick_retries": 0,
                "claim_lease_seconds": 5,
                "api_timeout_seconds": 4,  # the stand-in shares this loop: a starved one still answers
            }
            settings = Settings(**(fields | overrides))
            store = await Store.open(url)
            stores.append(store)
            client = CloudAmqpClient.from_settings(session, settings, API_KEY)
            processor = Processor(settings, store, client, worker_id="gc")
            await asyncio.wait_for(Consumer(settings, processor).run(asyncio.Event(), burst=True), 60)
            return store

        yield drain
    for store in stores:
        await store.close()


async def snapshot(store: Store) -> dict[str, Any]:
    """Everything the first step writes, without the ids and times that differ between runs."""
    async with store.db.transaction(write=False) as tx:
        events = await tx.fetch(
            """SELECT e.event_id, e.incident_change, e.ungroupable, i.incident_key, i.status
               FROM events e LEFT JOIN incidents i ON i.incident_id = e.incident_id ORDER BY e.event_id"""
        )
        incidents = await tx.fetch(
            """SELECT incident_key, status, event_count, last_value FROM incidents
               ORDER BY incident_key, first_seen"""
        )
        actions = await tx.fetch(
            "SELECT event_id, status, reason, plan, instance_id FROM actions ORDER BY event_id"
        )
        claims = await tx.fetch("SELECT scope, status FROM claims ORDER BY scope")
        outbox = await tx.fetch(
            "SELECT event_type, COUNT(*) AS n FROM notifications GROUP BY event_type ORDER BY event_type"
        )
    return {"events": events, "incidents": incidents, "actions": actions, "claims": claims, "outbox": outbox}


def batches() -> tuple[float, float]:
    """(batches committed, alarms in them) so far in this process."""
    [histogram] = metrics.BATCH_SIZE.collect()
    samples = {s.name: s.value for s in histogram.samples}
    return samples["autopilot_worker_batch_size_count"], samples["autopilot_worker_batch_size_sum"]


def fallbacks() -> float:
    return float(metrics.BATCH_FALLBACKS._value.get())


def upgraded(api: CloudAmqpStandIn) -> list[str]:
    return sorted(r.path.split("/")[3] for r in api.upgrade_requests())


async def test_given_a_storm_when_decided_in_batches_then_rows_and_outcomes_equal_one_at_a_time(
    vhost: str, database_url: str, other_url: str, run: Run, fake_api: CloudAmqpStandIn
) -> None:
    bodies = storm()
    # The same messages (same event ids) twice: once for one worker deciding one alarm at a
    # time, once for one that takes them all in one delivery window.
    ids = [new_id() for _ in bodies]
    await publish(vhost, *bodies, ids=ids)
    one_by_one = await snapshot(await run(database_url, worker_prefetch=1, worker_batch=1))
    calls_one_by_one = upgraded(fake_api)
    fake_api.requests.clear()

    count_before, alarms_before = batches()
    await publish(vhost, *bodies, ids=ids)
    batched = await snapshot(await run(other_url, worker_prefetch=64, worker_batch=64))
    count, alarms = batches()[0] - count_before, batches()[1] - alarms_before

    assert alarms / count > 2, "the alarms were not decided in batches"
    assert batched == one_by_one
    assert upgraded(fake_api) == calls_one_by_one == sorted(MANAGED[:4])
    statuses = {a["event_id"]: (a["status"], a["reason"]) for a in batched["actions"]}
    assert statuses[ids[1]] == ("skipped", "duplicate")
    assert statuses[ids[2]] == ("skipped", "cooling_down")
    assert len(batched["events"]) == len(bodies)


async def test_given_one_alarm_the_store_refuses_in_a_batch_then_only_it_retries_and_is_parked(
    vhost: str, database_url: str, run: Run, fake_api: CloudAmqpStandIn
) -> None:
    store = await Store.open(database_url)
    try:
        await store_refuses(store, "events", "INSERT", "instance_id", POISON)
    finally:
        await store.close()
    neighbours = [alarm(i) for i in MANAGED[:3]] + [alarm(MANAGED[3], 40), alarm(MANAGED[4], 40)]
    bodies = neighbours[:2] + [alarm(POISON)] + neighbours[2:]
    ids = await publish(vhost, *bodies)
    poison_id = ids[2]
    before = fallbacks()

    store = await run(database_url, instance_ids=(*MANAGED, POISON))

    assert fallbacks() > before, "the batch never fell back to one at a time"
    actions = {a["event_id"]: a for a in await store.list_actions()}
    assert poison_id not in actions
    # Each neighbour decided on its first delivery: none went to a delay queue with it.
    decided = [
        (actions[i]["status"], actions[i]["reason"], actions[i]["attempts"]) for i in ids if i != poison_id
    ]
    assert decided == [
        ("succeeded", None, 1),
        ("succeeded", None, 1),
        ("succeeded", None, 1),
        ("skipped", "below_threshold", 0),
        ("skipped", "below_threshold", 0),
    ]
    assert upgraded(fake_api) == sorted(MANAGED[:3])
    [message] = await parked(vhost)
    assert message.message_id == poison_id
    assert (message.headers or {})["x-autopilot-attempts"] == 3
    assert await queue_depth(vhost, "cloudamqp.alarms") == 0


async def test_given_a_batch_redelivered_after_its_commit_then_nothing_changes(
    vhost: str, database_url: str, run: Run, fake_api: CloudAmqpStandIn
) -> None:
    bodies = storm()
    ids = [new_id() for _ in bodies]
    await publish(vhost, *bodies, ids=ids)
    first = await snapshot(await run(database_url))
    calls = upgraded(fake_api)

    # As the broker redelivers a batch whose acks were lost: the same messages, some of them
    # twice within one delivery window.
    await publish(vhost, *bodies, *bodies[:5], ids=ids + ids[:5])
    again = await snapshot(await run(database_url))

    assert again == first
    assert upgraded(fake_api) == calls


async def test_given_nothing_else_in_flight_then_a_lone_alarm_waits_for_no_batch_window(
    database_url: str,
) -> None:
    """At light load nothing else is coming: a lone alarm goes to the store on the next turn of
    the event loop, however long the window a busy worker waits for company."""
    store = await Store.open(database_url)
    in_flight = 0
    try:
        settings = Settings(database_url=database_url, instance_ids=MANAGED, dry_run=True)
        steps = batch.FirstSteps(Processor(settings, store, None, worker_id="gc"), 64, lambda: in_flight)

        def alone(value: float) -> Alarm:
            return Alarm(new_id(), time.time(), alarm(MANAGED[0], value), f"key-{value}")

        async def timed(*values: float) -> float:
            started = time.monotonic()
            thens = await asyncio.gather(*(steps.take(alone(v)) for v in values))
            for then in thens:
                await then()
            return time.monotonic() - started

        steps.window = 0.3
        await timed(40, 41, 42)  # a batch of three, as under load
        # Busy (other messages in flight, the last batch not alone): it waits for company...
        in_flight = 5
        assert await timed(43) >= 0.3
        await timed(44, 45)
        # ...but with nothing else in flight it does not, whatever the window.
        steps.window = 30.0
        in_flight = 1
        assert await asyncio.wait_for(timed(46), 5) < 5
    finally:
        await store.close()
