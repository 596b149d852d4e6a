"""An alarm that flaps makes one steady incident (flap detection, ``shared.flapping``), end to
end on both stores and the real broker: a worker in-process on a clock the test moves (alarm
consumer, notifier, the quiet-resolve sweep), a receiver in-process for ``GET /incidents`` and
the console, and stand-in webhook, Slack and PagerDuty receivers. The same with the real
processes — a worker killed mid-storm, two workers — is in ``test_flapping_processes.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from prometheus_client import REGISTRY
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from shared import envelope, topology
from shared.alarm import iso
from shared.settings import Settings
from shared.store import Store
from tests.integration.test_console import login
from tests.integration.test_worker_inprocess import publish
from tests.support import FakeChannel, notification_channels, queue_depth, wait_until
from worker import notify_config
from worker.consumer import Consumer
from worker.notify import Notifier
from worker.process import Processor
from worker.quiet import QuietResolves

Json = dict[str, Any]
Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"f" * 32).decode()
ROUTING_KEY = "R0UT1NGKEY-flap-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-flapping-2b7c"
DELAYS = (0.2, 0.5)
MESSAGE = "Queue depth above 10000 on orders"
QUIET, EVERY = 900.0, 60.0  # FLAP_QUIET_SECONDS; the clock's step between alarms
OPENAPI = json.loads((ROOT / "receiver" / "openapi.json").read_text())


def fire(n: int = 0) -> Json:
    return {"message": MESSAGE, "value": 10_000 + n}


def clear() -> Json:
    return {"message": MESSAGE, "resolved": True}


def storm(times: int) -> list[Json]:
    """Fire and clear ``times`` times."""
    return [body for n in range(times) for body in (fire(n), clear())]


def conforms(instance: Any, schema: str) -> None:
    """``instance`` is what the OpenAPI document's component ``schema`` says."""
    Draft202012Validator({"$ref": f"#/components/schemas/{schema}", **OPENAPI}).validate(instance)


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Pilot:
    """What runs, and what the test looks at."""

    url: str
    store: Store
    settings: Settings
    clock: Clock
    sweep: QuietResolves
    receiver: Client
    channels: dict[str, FakeChannel]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def send(self, *bodies: Json) -> list[str]:
        """Each alarm in turn, ``EVERY`` seconds apart on the clock, once its predecessor is
        decided; their event ids."""
        ids = []
        for body in bodies:
            [event_id] = await publish(self.url, body, delays=DELAYS)
            await self.decided(event_id)
            ids.append(event_id)
            self.clock.now += EVERY
        return ids

    async def decided(self, event_id: str) -> None:
        async def done() -> bool:
            rows = await self.store.list_actions(limit=500)
            return any(r["event_id"] == event_id and r["status"] == "skipped" for r in rows)

        await wait_until(done, timeout=20, interval=0.01, what=f"{event_id} decided")

    async def get(self, path: str) -> Any:
        async with self.receiver.get(path) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def incidents(self) -> list[Json]:
        """``GET /incidents``, oldest first, each as the OpenAPI document says."""
        body = await self.get("/incidents")
        for incident in body["incidents"]:
            conforms(incident, "Incident")
        return list(reversed(body["incidents"]))

    async def changes(self) -> list[str]:
        body = await self.get("/events?limit=500")
        return [e["change"] for e in reversed(body["events"])]

    async def settled(self) -> None:
        """Nothing left to publish or deliver (twice in a row, a relay poll apart)."""

        async def idle() -> bool:
            if await self.store.outbox.pending():
                return False
            names = [topology.NOTIFY_QUEUE, *(topology.NOTIFICATIONS.retry_queue(d) for d in DELAYS)]
            return sum([await queue_depth(self.url, n) for n in names]) == 0

        await wait_until(idle, timeout=30, what="the notifications to settle")
        await asyncio.sleep(0.3)
        await wait_until(idle, timeout=30, what="the notifications to settle")

    def told(self) -> dict[str, int]:
        """Webhook deliveries by type, each notification once (by ``webhook-id``)."""
        seen: dict[str, set[str]] = {}
        for delivery in self.channels["webhook"].accepted():
            conforms(delivery.body, "NotificationBody")
            seen.setdefault(delivery.body["type"], set()).add(delivery.webhook_id)
        return {t: len(ids) for t, ids in sorted(seen.items())}

    def paged(self) -> list[tuple[str, str]]:
        """PagerDuty's (event_action, dedup_key) as received."""
        return [(d.body["event_action"], d.body["dedup_key"]) for d in self.channels["pagerduty"].accepted()]


Start = Callable[..., Awaitable[Pilot]]


@pytest.fixture
async def channels() -> AsyncIterator[dict[str, FakeChannel]]:
    async with notification_channels(SECRET, ROUTING_KEY) as fakes:
        yield fakes


@pytest.fixture
async def start(
    vhost: str, database_url: str, channels: dict[str, FakeChannel], aiohttp_client: AiohttpClient
) -> AsyncIterator[Start]:
    running: list[tuple[Pilot, asyncio.Event]] = []
    async with aiohttp.ClientSession() as session:

        async def run(**overrides: Any) -> Pilot:
            settings = Settings(
                rabbitmq_url=vhost,
                database_url=database_url,
                retry_delays=DELAYS,
                notify_retry_delays=DELAYS,
                notify_timeout_seconds=2,
                notify_webhook_urls=(f"{channels['webhook'].url}/hook",),
                notify_webhook_secret=SECRET,
                notify_slack_url=f"{channels['slack'].url}/services/T0/B0/FLAPSLACK",
                notify_pagerduty_routing_key=ROUTING_KEY,
                notify_pagerduty_url=channels["pagerduty"].url,
                operator_token=OPERATOR_TOKEN,
                flap_quiet_seconds=QUIET,
                **overrides,
            )
            store = await Store.open(database_url)
            clock = Clock(1_800_000_000.0)
            consumer = Consumer(
                settings, Processor(settings, store, None, worker_id="in-process", clock=clock)
            )
            notifier = Notifier(settings, store, notify_config.endpoints(settings), session)
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(consumer.run(stop)), asyncio.ensure_future(notifier.run(stop))]
            receiver = await aiohttp_client(create_app(settings))
            sweep = QuietResolves(settings, store, worker_id="in-process", clock=clock)
            pilot = Pilot(vhost, store, settings, clock, sweep, receiver, channels, tasks)
            running.append((pilot, stop))
            await wait_until(lambda: consumer.consuming, what="the consumer to start")
            return pilot

        yield run
        for pilot, stop in running:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*pilot.tasks), 30)
            await pilot.store.close()


async def test_given_fire_and_clear_ten_times_in_a_window_then_four_incidents_one_flapping_no_pages_between(
    start: Start,
) -> None:
    pilot = await start()

    await pilot.send(*storm(10))
    await pilot.settled()

    # At most FLAP_OPENINGS incidents: the fifth fire re-opened the fourth, which flaps on.
    assert (
        await pilot.changes()
        == ["opened", "resolved"] * 4
        + ["reopened", "resolving"]
        + [
            "refired",
            "resolving",
        ]
        * 5
    )
    *below, flapping = await pilot.incidents()
    assert [(i["status"], i["count"], i["flapping"]) for i in below] == [("resolved", 1, False)] * 3
    last_clear = pilot.clock.now - EVERY
    assert (flapping["status"], flapping["count"], flapping["flapping"]) == ("open", 7, True)
    assert flapping["resolves_at"] == iso(last_clear + QUIET) and flapping["resolved_at"] is None
    assert flapping["flap"] == {
        "since": iso(pilot.clock.now - 12 * EVERY),
        "transitions": 20,
        "window_seconds": 3600.0,
        "quiet_seconds": QUIET,
        "episodes": 1,
    }
    # Told: the openings below the threshold and their resolves, then once that it flaps.
    assert pilot.told() == {"incident.flapping": 1, "incident.opened": 4, "incident.resolved": 4}
    incident_ids = [i["id"] for i in below] + [flapping["id"]]
    pages = [(a, k) for k in incident_ids for a in ("trigger", "resolve")] + [("trigger", flapping["id"])]
    assert sorted(pilot.paged()) == sorted(pages)  # nothing paged while it flapped

    # Quiet since the last clear: resolved once, when the quiet period ended.
    pilot.clock.now = last_clear + QUIET
    assert await pilot.sweep.sweep() == 1
    assert await pilot.sweep.sweep() == 0
    await pilot.settled()

    *_, resolved = await pilot.incidents()
    assert (resolved["status"], resolved["resolved_at"], resolved["resolves_at"]) == (
        "resolved",
        iso(last_clear + QUIET),
        None,
    )
    assert resolved["flapping"] is True and resolved["flap"]["transitions"] == 20
    assert pilot.told() == {"incident.flapping": 1, "incident.opened": 4, "incident.resolved": 5}
    [final] = [
        d.body for d in pilot.channels["webhook"].of_type("incident.resolved")
        if d.body["data"]["incident"]["flapping"]
    ]  # fmt: skip
    assert final["data"]["alarm"] is None and final["data"]["incident"]["at"] == iso(last_clear + QUIET)
    assert sorted(pilot.paged()) == sorted([*pages, ("resolve", flapping["id"])])
    assert all(d.problem is None for fake in pilot.channels.values() for d in fake.received)


async def test_given_a_flapping_incident_then_it_resolves_only_once_quiet_a_fire_in_the_quiet_keeps_it_open(
    start: Start,
) -> None:
    pilot = await start()
    await pilot.send(*storm(5))
    await pilot.settled()
    *_, flapping = await pilot.incidents()
    told = pilot.told()
    resolves_at = pilot.clock.now - EVERY + QUIET
    assert flapping["resolves_at"] == iso(resolves_at)

    # Not yet quiet long enough: nothing happens.
    pilot.clock.now = resolves_at - 1
    assert await pilot.sweep.sweep() == 0
    # A fire within the quiet period: still open, the pending resolve called off, nobody told.
    await pilot.send(fire(99))
    await pilot.settled()
    *_, again = await pilot.incidents()
    assert (again["id"], again["status"], again["resolves_at"], again["count"]) == (
        flapping["id"],
        "open",
        None,
        flapping["count"] + 1,
    )
    assert (await pilot.changes())[-1] == "refired"
    pilot.clock.now = resolves_at + 10 * QUIET
    assert await pilot.sweep.sweep() == 0
    assert pilot.told() == told

    # Its next clear sets the resolve afresh; quiet for FLAP_QUIET_SECONDS: resolved, once.
    await pilot.send(clear())
    *_, pending = await pilot.incidents()
    cleared_at = pilot.clock.now - EVERY
    assert pending["resolves_at"] == iso(cleared_at + QUIET)
    page = await console(pilot, f"/ui/incidents/{pending['id']}")
    assert "pending resolve" in page and f"resolves at {when(cleared_at + QUIET)}, if quiet" in page
    listing = await console(pilot, "/ui/incidents")
    assert 'class="status s-flapping"' in listing and "if quiet" in listing
    pilot.clock.now = cleared_at + QUIET
    assert await pilot.sweep.sweep() == 1
    await pilot.settled()

    *_, resolved = await pilot.incidents()
    assert (resolved["status"], resolved["resolved_at"]) == ("resolved", iso(cleared_at + QUIET))
    assert pilot.told() == {**told, "incident.resolved": told["incident.resolved"] + 1}
    assert "flapped" in await console(pilot, "/ui/incidents")


async def test_given_flap_openings_zero_then_every_fire_opens_and_every_clear_resolves_as_today(
    start: Start,
) -> None:
    pilot = await start(flap_openings=0)

    await pilot.send(*storm(10))
    await pilot.settled()

    assert await pilot.changes() == ["opened", "resolved"] * 10
    incidents = await pilot.incidents()
    assert len(incidents) == 10 and len({i["id"] for i in incidents}) == 10
    for incident in incidents:
        assert (incident["status"], incident["count"], incident["flapping"]) == ("resolved", 1, False)
        assert incident["flap"] is None and incident["resolves_at"] is None
    assert pilot.told() == {"incident.opened": 10, "incident.resolved": 10}
    assert sorted(pilot.paged()) == sorted((a, i["id"]) for i in incidents for a in ("trigger", "resolve"))
    pilot.clock.now += 100 * QUIET
    assert await pilot.sweep.sweep() == 0


async def test_given_the_storm_redelivered_then_nothing_counts_twice_and_nothing_is_told_twice(
    start: Start,
) -> None:
    """Every alarm of a storm delivered again after it was decided (as the broker redelivers
    what a worker did not acknowledge): the same incidents, transitions and notifications."""
    pilot = await start()
    ids = await pilot.send(*storm(6))
    await pilot.settled()
    first, told, changes = await pilot.incidents(), pilot.told(), await pilot.changes()

    before = already_processed()

    connection = await aio_pika.connect(pilot.url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for event_id, body in zip(ids, storm(6), strict=True):
            await redeliver(channel, event_id, body)
    await wait_until(lambda: already_processed() >= before + len(ids), what="the redeliveries taken")
    await pilot.settled()

    assert await pilot.incidents() == first
    assert first[-1]["flap"]["transitions"] == 12
    assert pilot.told() == told and await pilot.changes() == changes


# --- helpers -------------------------------------------------------------------------------------


def when(ts: float) -> str:
    """A time as the console shows it."""
    text = iso(ts)
    assert text is not None
    return text.replace("T", " ")[:19] + "Z"


async def console(pilot: Pilot, path: str) -> str:
    await login(pilot.receiver, OPERATOR_TOKEN)
    async with pilot.receiver.get(path) as resp:
        assert resp.status == 200
        return await resp.text()


async def redeliver(channel: aio_pika.abc.AbstractChannel, event_id: str, body: Json) -> None:
    """The alarm's message again, with its event id: what a redelivery brings."""
    message = aio_pika.Message(
        json.dumps(body).encode(),
        message_id=event_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers=envelope.alarm_headers(event_id, time.time()),
    )
    await channel.default_exchange.publish(message, routing_key=topology.WORK_QUEUE, mandatory=True)


def already_processed() -> float:
    """Alarms this process found already decided (``alarm.already_processed``)."""
    value = REGISTRY.get_sample_value("autopilot_worker_messages_total", {"outcome": "already_processed"})
    return value or 0.0
