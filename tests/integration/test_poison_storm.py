"""The poison storm (issue 24): 500 hostile messages published straight onto every queue the
worker consumes — the work queue, the fast lane, check messages, notifications — interleaved
with 200 valid alarms. Every valid alarm is recorded and decided, every hostile one is parked
with a reason, none stays unacknowledged, and the worker goes on consuming; then the parking
lot is read whole by ``worker.dlq`` and the console. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from receiver.console_data import PARKED_SHOWN
from shared import envelope, topology
from shared.alarm import new_id
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, seed_alarm
from tests.integration.test_console import login
from tests.integration.test_dead_letters import run_dlq
from tests.support import queue_depth, wait_until
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.notify import Notifier
from worker.process import Processor

DELAYS = (0.2, 0.5)
VALID, HOSTILE = 200, 500
FINAL = {"succeeded", "skipped", "dry_run", "failed"}


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


HOSTILE_BODIES: list[bytes] = [
    f'{{"alarm_type": "memory", "x": {_nested(1000)}}}'.encode(),
    f'{{"alarm_type": {_nested(300, "{}")}, "value": 85}}'.encode(),
    b'{"alarm_type": "memory", "value": ' + b"9" * 5000 + b"}",
    b'{"alarm_type": "memory", "value": 1e400}',
    b'{"alarm_type": "memory", "value": NaN}',
    b'{"alarm_type": "memory", "value": -Infinity}',
    b'{"alarm_type": "memory", "message": "\\ud800 lone"}',
    b'{"alarm_type": "memory", "message": "nul \\u0000 inside"}',
    b'{"alarm_type": "memory", "value": 9223372036854775808}',
    b'{"a\\u0001key": 1}',
    ('{"message": "' + "m" * 5000 + '"}').encode(),
    b"\xff\xfe not UTF-8",
    b"garbage",
    b"",
    b"[1, 2, 3]",
    b'"a string"',
    b"null",
    b'{"alarm_type": "memory"',
]
HOSTILE_HEADERS: list[dict[str, Any]] = [
    {},
    {envelope.H_EVENT_ID: "id\u0000with-nul"},
    {envelope.H_EVENT_ID: "e" * 5000},
    {envelope.H_RECEIVED_AT: "9999-12-31T23:59:59Z"},
    {envelope.H_RECEIVED_AT: "+275760-09-13T00:00:00Z"},
    {envelope.H_ATTEMPTS: "NaN"},
    {envelope.H_ATTEMPTS: 2**63 - 1},
    {envelope.H_ATTEMPTS: -5},
    {envelope.H_ATTEMPTS: Decimal("-12.5")},
    {envelope.H_REPLAYED: bytearray(b"\xff\xfe")},
    {"x-nested": {"a": [1, None, bytearray(b"\xff")], "b": {"c": {"d": "e"}}}},
    {"x-when": datetime(9999, 12, 31, tzinfo=UTC), envelope.H_RECEIVED_AT: 10**18},
]


def hostile(i: int) -> tuple[str, aio_pika.Message]:
    """The i-th hostile message and its queue: the four consumed queues in turn."""
    body = HOSTILE_BODIES[i % len(HOSTILE_BODIES)]
    headers = dict(HOSTILE_HEADERS[i % len(HOSTILE_HEADERS)])
    kind = i % 4
    if kind == 0:
        queue = topology.WORK_QUEUE
    elif kind == 1:
        queue = topology.FAST_QUEUE
    elif kind == 2:
        queue, headers[envelope.H_CHECK] = topology.WORK_QUEUE, ("plan", "approval")[i % 2]
    else:
        queue = topology.NOTIFY_QUEUE
        if i % 3:
            headers.update({envelope.H_NOTIFICATION: f"n-{i}", envelope.H_ENDPOINT: "nowhere"})
    message_id = None if i % 5 == 0 else f"hostile-{i}"
    return queue, aio_pika.Message(
        body, headers=headers, message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )


def valid(i: int) -> tuple[str, aio_pika.Message, str]:
    event_id = new_id()
    instance = SEED_INSTANCE if i % 10 == 0 else f"other-{i}"
    body = json.dumps(seed_alarm(instance_id=instance, value=50 + i % 50)).encode()
    queue = topology.FAST_QUEUE if i % 7 == 0 else topology.WORK_QUEUE
    message = aio_pika.Message(
        body,
        message_id=event_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=envelope.alarm_headers(event_id, time.time()),
    )
    return queue, message, event_id


async def publish_storm(url: str, settings: Settings) -> list[str]:
    """200 valid alarms interleaved with 500 hostile messages, confirmed; the valid ids."""
    ids: list[str] = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_topology(channel, settings.retry_delays, settings.notify_retry_delays)
        pending = []
        for i in range(HOSTILE + VALID):
            if i % 7 in (2, 5) and len(ids) < VALID:
                queue, message, event_id = valid(i)
                ids.append(event_id)
            else:
                queue, message = hostile(i)
            pending.append(channel.default_exchange.publish(message, routing_key=queue, mandatory=True))
        await asyncio.gather(*pending)
        while len(ids) < VALID:  # the rest of the valid ones, if the interleaving came short
            queue, message, event_id = valid(len(ids))
            ids.append(event_id)
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
    return ids


async def decided(store: Store, ids: list[str]) -> bool:
    async with store.db.transaction(write=False) as tx:
        rows = await tx.fetch("SELECT event_id, status FROM actions")
    statuses = {row["event_id"]: row["status"] for row in rows}
    return all(statuses.get(i) in FINAL for i in ids)


@pytest.mark.early
async def test_given_a_poison_storm_on_every_queue_then_valid_alarms_are_decided_and_poison_is_parked(
    vhost: str, database_url: str, fake_api: CloudAmqpStandIn, aiohttp_client: AiohttpClient
) -> None:
    settings = Settings(
        rabbitmq_url=vhost,
        database_url=database_url,
        cloudamqp_api_url=fake_api.url,
        cloudamqp_api_key=API_KEY,
        instance_ids=(SEED_INSTANCE,),
        retry_delays=DELAYS,
        notify_retry_delays=DELAYS,
        max_attempts=3,
        quick_retries=0,
        claim_lease_seconds=5,
        api_timeout_seconds=2,
    )
    store = await Store.open(database_url)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        client = CloudAmqpClient.from_settings(session, settings, API_KEY)
        consumer = Consumer(settings, Processor(settings, store, client, worker_id="storm"))
        notifier = Notifier(settings, store, [], session)
        worker = asyncio.ensure_future(asyncio.gather(consumer.run(stop), notifier.run(stop)))
        try:
            await wait_until(lambda: consumer.consuming, what="the worker consuming")
            started = time.monotonic()
            ids = await publish_storm(vhost, settings)
            published = time.monotonic() - started

            await wait_until(lambda: decided(store, ids), timeout=60, what="200 valid alarms decided")

            async def all_parked() -> int:
                dead = await queue_depth(vhost, topology.DEAD_QUEUE)
                notify_dead = await queue_depth(vhost, topology.NOTIFY_DEAD_QUEUE)
                return dead + notify_dead if dead + notify_dead >= HOSTILE else 0

            assert await wait_until(all_parked, timeout=60, what="500 parked") == HOSTILE
            settled = time.monotonic() - started
            # Still consuming: one more alarm after the storm is recorded.
            [after] = await _publish_one(vhost)
            await wait_until(lambda: decided(store, [after]), timeout=20, what="an alarm after the storm")
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
    events = await store.list_events(limit=500)
    assert {e["event_id"] for e in events} == {*ids, after}
    await store.close()
    # Nothing unacknowledged: the worker's connections are closed, so anything it held would
    # be back in its queue now.
    consumed = [topology.WORK_QUEUE, topology.FAST_QUEUE, topology.NOTIFY_QUEUE]
    consumed += [topology.ALARMS.retry_queue(d) for d in DELAYS]
    consumed += [topology.NOTIFICATIONS.retry_queue(d) for d in DELAYS]
    assert {q: await queue_depth(vhost, q) for q in consumed} == dict.fromkeys(consumed, 0)
    alarms_parked = await queue_depth(vhost, topology.DEAD_QUEUE)
    print(
        f"\npoison storm ({database_url.split(':')[0]}): {VALID} valid + {HOSTILE} hostile published "
        f"in {published:.2f} s, all settled after {settled:.2f} s"
    )

    await _dlq_and_console_show_every_parked_message(vhost, database_url, alarms_parked, aiohttp_client)


async def _publish_one(url: str) -> list[str]:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue, message, event_id = valid(1)
        await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
    return [event_id]


async def _dlq_and_console_show_every_parked_message(
    vhost: str, database_url: str, count: int, aiohttp_client: AiohttpClient
) -> None:
    env = {"RABBITMQ_URL": vhost, "DATABASE_URL": database_url}
    listed = await run_dlq(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == count
    assert all(row["status"] != "-" and row["error"] != "-" for row in rows), rows[:3]
    table = await run_dlq(env, "list")
    assert table.returncode == 0 and f"{count} parked message(s)" in table.stdout, table.stderr
    for row in rows[:: max(1, count // 3)]:
        shown = await run_dlq(env, "show", row["ref"])
        assert shown.returncode == 0, (row, shown.stderr)
        assert json.loads(shown.stdout)["headers"][envelope.H_STATUS] == row["status"]

    app = create_app(Settings.from_env(env))
    client = await aiohttp_client(app)
    await login(client, "")
    async with client.get("/ui/parked") as resp:
        html = await resp.text()
        assert resp.status == 200, html[:500]
    assert f"{count}" in html
    on_page = [row["ref"] for row in rows if row["ref"] in html]
    assert len(on_page) >= min(count, PARKED_SHOWN), (len(on_page), count)
