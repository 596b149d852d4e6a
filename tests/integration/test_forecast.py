"""Upgrading before the alarm, at accelerated time: the watchdog, the processor and the consumer
run in-process against the real broker (a vhost per test) and both stores, on one clock the
test moves a minute per step; the CloudAMQP API is the shared stand-in, whose management API
of the instance answers ``/api/nodes`` with the figures of a scripted load curve (a real
node's memory cannot be made to follow a curve at sixty times real time).

- a ramp from 50 % at 1 %/min with a 10 min lead time: one forecast and one upgrade when the
  crossing of 80 % is 9 min away (at minute 21), none before, with two workers polling;
- noise around 60 %, a spike to 79 % and back, a ramp that flattens at 75 %: nothing;
- a forecast during a pause or a cooldown: recorded, no call; with approval: a request that
  carries the projection;
- the console's instance page (the receiver's app on the same store) says why, and draws the
  forecast's line, the threshold and the upgrade.
"""

from __future__ import annotations

import asyncio
import html
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from shared.alarm import iso
from shared.operations import Operations
from shared.policy import Policy, Rule
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import BUNNY_MEM_LIMIT, CloudAmqpStandIn, Instance
from tests.integration.conftest import API_KEY, SEED_INSTANCE, seed_instance
from tests.integration.test_console import OPERATOR_TOKEN, login, page
from tests.support import wait_until
from worker import schedule
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.management import ManagementApi
from worker.process import Processor
from worker.watchdog import SCHEDULE, Watchdog

MIN = 60.0
LIMIT = BUNNY_MEM_LIMIT  # a bunny-1 node's mem_limit; a plan up has twice as much
TICKS = 4  # looks per worker per minute at the watchdog's slot, as schedule.every does


class Clock:
    """The one clock of every part under test, moved by the test."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Worker:
    store: Store
    processor: Processor
    watchdog: Watchdog
    settings: Settings


@dataclass
class Fleet:
    clock: Clock
    instance: Instance  # the managed instance, as the stand-in keeps it (plan, nodes' figures)
    api: CloudAmqpStandIn
    workers: list[Worker]
    upgraded_at: list[int] = field(default_factory=list)  # the minute of each upgrade call

    @property
    def store(self) -> Store:
        return self.workers[0].store

    @property
    def reads(self) -> int:
        """Reads of the instance's ``/api/nodes``."""
        return self.api.management_reads[self.instance.name]

    async def minute(self, minute: int, percent: float) -> None:
        """One minute of the curve: each worker looks at the watchdog's slot ``TICKS`` times
        (one of them polls), then each drains its queues."""
        await self.poll(minute, percent)
        before = len(self.api.upgrade_requests())
        await asyncio.gather(*(drain(w) for w in self.workers))
        self.upgraded_at += [minute] * (len(self.api.upgrade_requests()) - before)

    async def poll(self, minute: int, percent: float) -> None:
        start = self.clock.now = T0 + minute * MIN
        # ``percent`` of the plan it is on (a bigger plan's mem_limit is twice as large).
        self.instance.mem_used = round(percent / 100 * self.instance.mem_limit)
        for tick in range(TICKS):
            now = self.clock.now = start + tick * MIN / TICKS
            await asyncio.gather(
                *(
                    schedule.once(
                        w.store, SCHEDULE, f"w{n}", w.settings.watchdog_interval_seconds, w.watchdog.poll, now
                    )
                    for n, w in enumerate(self.workers)
                )
            )

    async def run(self, values: list[float], first: int = 0) -> None:
        for minute, percent in enumerate(values, start=first):
            await self.minute(minute, percent)

    async def events(self) -> list[dict[str, Any]]:
        return [dict(e) for e in await self.store.list_events(limit=500)]

    async def forecasts(self) -> list[dict[str, Any]]:
        return [e for e in await self.events() if str(e["event_id"]).startswith("forecast-")]


T0 = float(int(time.time()))


async def drain(worker: Worker) -> None:
    consumer = Consumer(worker.settings, worker.processor)
    await asyncio.wait_for(consumer.run(asyncio.Event(), burst=True), 60)


@pytest.fixture
async def fleet(
    vhost: str, database_url: str, fake_api: CloudAmqpStandIn
) -> AsyncIterator[Callable[..., Any]]:
    """Make a fleet of ``workers`` in-process workers under ``rule``."""
    seed = seed_instance(fake_api, "bunny-1")
    stores: list[Store] = []
    publishers: list[Publisher] = []
    async with aiohttp.ClientSession() as session:

        async def make(rule: Rule, workers: int = 1) -> Fleet:
            clock = Clock(T0)
            made = []
            for n in range(workers):
                settings = Settings(
                    rabbitmq_url=vhost,
                    database_url=database_url,
                    cloudamqp_api_url=fake_api.url,
                    cloudamqp_api_key=API_KEY,
                    instance_ids=(SEED_INSTANCE,),
                    instance_management=((SEED_INSTANCE, fake_api.management_url(seed)),),
                    retry_delays=(0.2, 0.5),
                    upgrade_poll_seconds=0.2,
                    quick_retries=0,
                    claim_lease_seconds=5,
                    api_timeout_seconds=2,
                    management_timeout_seconds=2,
                    watchdog_interval_seconds=MIN,
                    # The watchdog's own alarm for a condition that holds: not within these tests.
                    watchdog_time_threshold_seconds=24 * 3600,
                )
                store = await Store.open(database_url)
                stores.append(store)
                policy = Policy((rule,))
                client = CloudAmqpClient.from_settings(session, settings, API_KEY)
                management = ManagementApi(session, dict(settings.instance_management), timeout=2.0)
                processor = Processor(
                    settings,
                    store,
                    client,
                    worker_id=f"w{n}",
                    policy=policy,
                    clock=clock,
                    management=management,
                )
                await processor.resolve_instances(force=True)
                publisher = Publisher(vhost, settings.delay_queues)
                publishers.append(publisher)
                watchdog = Watchdog(
                    settings,
                    store,
                    management,
                    publisher,
                    policy,
                    worker_id=f"w{n}",
                    dry_run=False,
                    clock=clock,
                )
                made.append(Worker(store, processor, watchdog, settings))
            return Fleet(clock, seed, fake_api, made)

        yield make
    for publisher in publishers:
        await publisher.close()
    for store in stores:
        await store.close()


FORECAST_80 = Rule("memory-80", "memory", above=80, forecast=True, lead_time=600)


def ramp(minutes: int, *, start: float = 50.0, flat_at: float = 100.0) -> list[float]:
    return [min(start + m, flat_at) for m in range(minutes)]


async def test_given_a_1_percent_a_minute_ramp_then_two_workers_raise_one_forecast_and_upgrade_once_ahead(
    fleet: Callable[..., Any], fake_api: CloudAmqpStandIn
) -> None:
    given: Fleet = await fleet(FORECAST_80, workers=2)

    # 50 % at minute 0, 80 % at minute 30 (were it not for the upgrade), on to minute 40.
    await given.run(ramp(41))

    assert given.reads == 41  # one poll a minute between the two workers
    # 80 % is 9 min away at minute 21: the first poll at which the crossing is within 10 min.
    assert given.upgraded_at == [21]
    [request] = fake_api.upgrade_requests()
    # The call says why, as the action's event and the approval request do.
    assert request.body["reason"] == (
        "Automatic upgrade ahead of a memory forecast: memory 71% rising 1.0%/min, projected to "
        "cross 80% in 9 min; the rule's lead time is 10 min"
    )
    forecasts = await given.forecasts()
    assert len(forecasts) == 1
    body = json.loads(forecasts[0]["body"])
    assert (body["source"], body["alarm_type"], body["value"], body["triggered_at"]) == (
        "forecast",
        "memory",
        71.0,
        iso(T0 + 21 * MIN),
    )
    projection = body["forecast"]
    assert (projection["rule"], projection["crosses_in_seconds"], projection["lead_time_from"]) == (
        "memory-80",
        540.0,
        "rule",
    )
    assert projection["fit"]["samples"] == 22
    actions = [dict(a) for a in await given.store.list_actions()]
    assert [(a["status"], a["event_id"]) for a in actions] == [("succeeded", forecasts[0]["event_id"])]
    assert actions[0]["from_plan"] == "bunny-1" and actions[0]["plan"] == "hare-1"
    # Confirmed, the action still says why: the projection, then the plan it is now on.
    assert actions[0]["detail"].startswith(request.body["reason"] + "; instance is now on hare-1")
    # Ready on the new plan before the crossing (minute 30): CloudAMQP (the stand-in) took
    # no time here; the nodes show the bigger plan from the next poll on.
    assert fake_api.instances[359559].plan == "hare-1"
    assert given.instance.mem_limit == 2 * LIMIT


def noise(level: float, amplitude: float, count: int, seed: int) -> list[float]:
    r = random.Random(seed)
    return [level + r.uniform(-amplitude, amplitude) for _ in range(count)]


QUIET_CURVES = [
    ("noise around 60 % for the whole window", noise(60, 3, 45, seed=30)),
    ("a spike to 79 % and back", [60.0] * 20 + [79.0] + [60.0] * 20),
    # With a 3 min lead: a fit of the whole window alone would see 80 % three minutes away two
    # polls after the climb stopped at 75 %.
    ("a ramp that flattens at 75 %", ramp(45, flat_at=75.0)),
]


@pytest.mark.parametrize(("name", "values"), QUIET_CURVES, ids=[c[0] for c in QUIET_CURVES])
async def test_given_a_curve_that_does_not_climb_to_the_threshold_then_nothing_is_raised(
    fleet: Callable[..., Any], fake_api: CloudAmqpStandIn, name: str, values: list[float]
) -> None:
    rule = Rule("memory-80", "memory", above=80, forecast=True, lead_time=180 if "flattens" in name else 1800)
    given: Fleet = await fleet(rule)

    await given.run(values)

    assert given.reads == len(values)
    assert await given.forecasts() == []
    assert fake_api.upgrade_requests() == []


async def test_given_a_pause_then_the_forecast_is_recorded_and_nothing_is_called(
    fleet: Callable[..., Any], fake_api: CloudAmqpStandIn
) -> None:
    given: Fleet = await fleet(FORECAST_80)
    operations = Operations(given.store, given.workers[0].settings)
    await operations.pause(SEED_INSTANCE, T0 + 3600, operator="ops", reason="release", now=T0)

    await given.run(ramp(25))

    [forecast] = await given.forecasts()
    [action] = [dict(a) for a in await given.store.list_actions()]
    assert (action["event_id"], action["status"], action["reason"]) == (
        forecast["event_id"],
        "skipped",
        "paused",
    )
    assert fake_api.upgrade_requests() == []


async def test_given_a_second_climb_within_the_cooldown_then_its_forecast_is_recorded_and_nothing_is_called(
    fleet: Callable[..., Any], fake_api: CloudAmqpStandIn
) -> None:
    given: Fleet = await fleet(
        Rule("memory-80", "memory", above=80, forecast=True, lead_time=600, cooldown_seconds=7200)
    )

    # The first climb upgrades at minute 21; on the bigger plan the instance sits at 50 %,
    # then climbs again at 1 %/min.
    await given.run(ramp(22) + [50.0] * 15 + ramp(30))

    assert given.upgraded_at == [21]
    forecasts = await given.forecasts()
    assert len(forecasts) == 2
    actions = {a["event_id"]: dict(a) for a in await given.store.list_actions()}
    statuses = sorted((actions[e["event_id"]]["status"], actions[e["event_id"]]["reason"]) for e in forecasts)
    assert statuses == [("skipped", "cooling_down"), ("succeeded", None)]
    assert len(fake_api.upgrade_requests()) == 1


async def test_given_a_rule_with_approval_then_the_forecast_asks_for_it_with_its_projection(
    fleet: Callable[..., Any], fake_api: CloudAmqpStandIn
) -> None:
    given: Fleet = await fleet(
        Rule("memory-80", "memory", above=80, forecast=True, lead_time=600, approve=True)
    )

    await given.run(ramp(21))
    # The forecast's minute: its approval's periodic check keeps a delay queue busy, so this
    # worker consumes until the request is recorded rather than until its queues are empty.
    await given.poll(21, ramp(22)[21])
    worker = given.workers[0]
    stop = asyncio.Event()
    consuming = asyncio.ensure_future(Consumer(worker.settings, worker.processor).run(stop))

    async def requested() -> list[dict[str, Any]]:
        rows = [dict(a) for a in await given.store.list_actions()]
        return rows if rows and rows[0]["status"] == "awaiting_approval" else []

    try:
        [action] = await wait_until(requested, timeout=20, what="the approval request")
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 20)

    [forecast] = await given.forecasts()
    assert (action["event_id"], action["status"]) == (forecast["event_id"], "awaiting_approval")
    assert "memory 71% rising 1.0%/min, projected to cross 80% in 9 min" in action["detail"]
    assert fake_api.upgrade_requests() == []


async def test_given_a_forecast_then_the_consoles_instance_page_says_why_and_draws_its_line(
    fleet: Callable[..., Any], vhost: str, database_url: str, aiohttp_client: AiohttpClient
) -> None:
    given: Fleet = await fleet(FORECAST_80)
    await given.run(ramp(25))  # the forecast and its upgrade at minute 21, then four more samples
    settings = Settings.from_env(
        {
            "RABBITMQ_URL": vhost,
            "DATABASE_URL": database_url,
            "CLOUDAMQP_INSTANCE_ID": SEED_INSTANCE,
            "OPERATOR_TOKEN": OPERATOR_TOKEN,
        }
    )
    console = await aiohttp_client(create_app(settings))
    await login(console, OPERATOR_TOKEN)

    status, body, _ = await page(console, f"/ui/instances/{SEED_INSTANCE}")

    assert status == 200
    why = re.search(r'<p class="forecast" id="forecast-why">(.*?)</p>', body, re.S)
    assert why is not None, body
    made = datetime.fromtimestamp(T0 + 21 * MIN, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert html.unescape(why.group(1)) == (
        f"Forecast ({made}): memory 71% rising 1.0%/min, projected to cross 80% in 9 min; "
        "the rule's lead time is 10 min"
    )
    memory = body[body.index("<h3>Memory per node</h3>") : body.index("<h3>Disk headroom per node</h3>")]
    assert memory.count('<g class="forecast">') == 1  # the projection, to 80 % at minute 30
    assert "threshold 80%" in memory and "→ hare-1" in memory  # the rule, and the upgrade it made
    assert memory.count('<g class="series" data-node="rabbit@seed-instance-01">') == 1
