"""Benchmark 8, upgrading before the alarm (issue 30): load curves of recorded shapes — steady
climbs, a sawtooth, a plateau below the threshold, a spike — replayed against the CloudAMQP
stand-in's management API of an instance at accelerated time. For each curve: did it upgrade,
how long before the threshold's crossing the new plan was ready, how many upgrades were not
needed.

What runs is the product's own worker: the watchdog (its slot taken through
``worker.schedule.once``, the samples kept in the store, the forecast, the alarm published
with a confirm), the consumer and the processor (the first step, the upgrade call, the
follow-up that measures how long the plan change took), on a real broker (a vhost per run)
and a real store (SQLite, a file per run). They run in this process rather than as ``python -m
worker``, because their clock is injected: one clock, moved by ``STEP`` simulated seconds at a
time, dates the samples, the forecasts, the claims, the plan changes and the stand-in's
reconfiguration (``reconfigure_seconds``, 14 minutes: CloudAMQP's plan change, "up to 10
minutes" by its answer, over an hour for large instances). The follow-up's checks come back
through the delay queue in real time (``UPGRADE_POLL_SECONDS`` 0.05 s); while a plan change is
under way the clock moves on only once a check has looked at it, so the follow-up measures a
change's duration to a step, as it does to ``UPGRADE_POLL_SECONDS`` in real time.

A curve is given in percent of the first plan's ``mem_limit``; the stand-in reports it as
``mem_used`` bytes, so a bigger plan (twice the memory) halves the percent from the moment the
change is done. The crossing is the first second from minute 0 that the curve is above the
rule's threshold (80 %) on the first plan. The run starts ``PRE_ROLL`` before minute 0, on the
same curve (the watchdog has been sampling before the load moves: the climbs' level, the
sawtooth's teeth). In the ``measured`` runs another instance of the fleet has a plan change
made through the pipeline then, so that the lead time is what the follow-up measured; in the
``default`` runs nothing was measured yet (1800 s); the ``forecast off`` runs are the same
pipeline with ``forecast = false``, the baseline: the upgrade waits for the watchdog's own
alarm (the condition held ``WATCHDOG_TIME_THRESHOLD_SECONDS``, 600 s, as CloudAMQP's alarm
would).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.harness import fresh_vhost
from bench.suite import Config
from shared import topology
from shared.alarm import iso
from shared.logs import configure_logging
from shared.policy import Policy, Rule
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn, Instance
from tests.support import wait_until
from worker import schedule
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.management import ManagementApi
from worker.process import Processor
from worker.watchdog import SCHEDULE, Watchdog

API_KEY = "bench-forecast-api-key"
MIN = 60.0
STEP = 15.0  # simulated seconds per step of the clock (UPGRADE_POLL_SECONDS' default)
INTERVAL = 60.0  # the watchdog's (WATCHDOG_INTERVAL_SECONDS' default)
RECONFIGURE = 14 * MIN  # how long the stand-in takes to apply a plan change
THRESHOLD = 80.0
PRE_ROLL = 30 * MIN  # the curve before its minute 0, sampled (and the earlier plan change made)
LEADS = ("measured", "default", "forecast off")
CALLED = {"succeeded", "unconfirmed", "in_progress"}  # an action whose plan change was asked for


@dataclass(frozen=True)
class Curve:
    """A load curve: ``percent(minute)`` of the first plan's ``mem_limit``, for ``minutes``
    (and the ``PRE_ROLL`` before minute 0, the same shape: the sawtooth's teeth, the climbs'
    level before they climb)."""

    name: str
    shape: str  # climb | sawtooth | plateau | levels off | spike
    minutes: int
    percent: Callable[[float], float]

    def crossing(self) -> float | None:
        """Minutes from the start to the first second above the threshold (None: never)."""
        for second in range(self.minutes * 60 + 1):
            if self.percent(second / 60) > THRESHOLD:
                return second / 60
        return None


def _wiggle(minute: float, amplitude: float, seed: int) -> float:
    """A recorded curve's noise: one draw per minute, the same in every run."""
    return random.Random(seed * 100_003 + math.floor(minute)).uniform(-amplitude, amplitude)


def climb(rate: float, *, start: float = 50.0) -> Curve:
    """Flat at ``start`` until minute 0, then ``rate`` %/min on, ±0.3 %."""
    minutes = int((THRESHOLD - start) / rate + 30)
    return Curve(
        f"steady climb {rate:g} %/min",
        "climb",
        minutes,
        lambda m: start + rate * max(m, 0.0) + _wiggle(m, 0.3, 1),
    )


def sawtooth(low: float, high: float, period: float, *, trend: float = 0.0) -> Curve:
    """A backlog that builds for 80 % of ``period`` and drains in the rest, ±0.3 %, on a base
    that moves ``trend`` %/min."""

    def percent(m: float) -> float:
        phase = (m % period) / period
        tooth = phase / 0.8 if phase < 0.8 else (1 - phase) / 0.2
        return low + trend * m + (high - low) * tooth + _wiggle(m, 0.3, 2)

    name = f"sawtooth {low:g}→{high:g} % every {period:g} min"
    return Curve(
        name + (f", base +{trend:g} %/min" if trend else ""), "sawtooth", 150 if trend else 180, percent
    )


def levels_off(at: float) -> Curve:
    """Climbs 0.5 %/min from 50 % at minute 0 and levels off at ``at`` %, ±0.3 %."""
    return Curve(
        f"climb that levels off at {at:g} %",
        "levels off",
        150,
        lambda m: min(50 + 0.5 * max(m, 0.0), at) + _wiggle(m, 0.3, 3),
    )


def plateau(level: float) -> Curve:
    return Curve(f"plateau at {level:g} % ±1", "plateau", 180, lambda m: level + _wiggle(m, 1.0, 4))


def spike(to: float) -> Curve:
    """60 % ±0.5, and ``to`` % for two minutes at minute 90."""
    return Curve(
        f"spike to {to:g} % for 2 min",
        "spike",
        180,
        lambda m: to if 90 <= m < 92 else 60 + _wiggle(m, 0.5, 5),
    )


def curves(quick: bool = False) -> list[Curve]:
    if quick:
        return [climb(0.5), sawtooth(55, 77, 20), plateau(76), spike(79)]
    return [
        climb(0.25),
        climb(0.5),
        climb(1.0),
        sawtooth(55, 77, 20),
        sawtooth(45, 60, 20, trend=0.25),
        plateau(76),
        levels_off(75),
        spike(79),
    ]


# --- the world of one run -------------------------------------------------------------------


class Clock:
    """The one clock of the run, moved by the replay."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


class CountingPublisher(Publisher):
    """The product's publisher, counting what it published (the watchdog's alarms)."""

    published = 0

    async def publish(
        self, body: bytes, event_id: str, received_at: float, queue: str = topology.WORK_QUEUE
    ) -> None:
        await super().publish(body, event_id, received_at, queue)
        self.published += 1


@dataclass
class World:
    clock: Clock
    api: CloudAmqpStandIn
    instance: Instance  # the curve's
    fleet: Instance  # another instance of the fleet (the measured runs' earlier plan change)
    store: Store
    publisher: CountingPublisher
    watchdog: Watchdog
    consumer: Consumer
    database_url: str
    events: int = 0  # events the pipeline has recorded, as far as the replay waited for them
    steps: int = 0
    polls: int = 0

    async def step(self) -> None:
        """One step of the clock: the watchdog's slot looked at (a poll every INTERVAL), and
        what it raised decided before the clock moves on."""
        self.clock.now += STEP
        self.steps += 1
        self.api.settle()
        before = self.publisher.published
        if await schedule.once(self.store, SCHEDULE, "bench", INTERVAL, self.watchdog.poll, self.clock.now):
            self.polls += 1
        if self.publisher.published > before:
            await self.decided(self.publisher.published - before)
        await self.followed()

    async def followed(self) -> None:
        """Until every plan change under way has been looked at by the follow-up at this
        step's time (so that it measures a change's duration to a step, as it would to
        ``UPGRADE_POLL_SECONDS`` in real time), or is confirmed."""
        now = self.clock.now

        async def looked() -> bool:
            rows = await self.store.list_actions(status="in_progress", limit=1000)
            return all(r["checked_at"] is not None and float(r["checked_at"]) >= now for r in rows)

        await wait_until(looked, timeout=60, interval=0.005, what="the follow-up's look")

    async def decided(self, alarms: int) -> None:
        """Until ``alarms`` more events are recorded and no message is being worked on (the
        upgrade call, if any, answered)."""
        self.events += alarms

        async def done() -> bool:
            recorded = len(await self.store.list_events(limit=1000))
            return recorded >= self.events and self.consumer.in_flight == 0

        await wait_until(done, timeout=60, interval=0.005, what=f"{self.events} events decided")


@asynccontextmanager
async def world(cfg: Config, curve: Curve, lead: str, start: float) -> AsyncIterator[World]:
    """A stand-in CloudAMQP with the curve's instance and another of the fleet, a vhost, a
    store, and the worker's parts on one clock; the consumer running."""
    clock = Clock(start)
    api = CloudAmqpStandIn(api_key=API_KEY, blog="absent", reconfigure_seconds=RECONFIGURE, clock=clock)
    instance = api.add_instance("bench-curve", "bunny-1")
    fleet = api.add_instance("bench-fleet", "bunny-1")
    first = instance.mem_limit
    instance.load = lambda now: curve.percent((now - start - PRE_ROLL) / MIN) / 100 * first
    rule = Rule("memory-80", "memory", above=THRESHOLD, forecast=lead != "forecast off")
    path = cfg.workdir / f"forecast-{time.monotonic_ns()}.db"
    await api.start()
    try:
        async with fresh_vhost() as amqp_url, aiohttp.ClientSession() as session:
            settings = Settings(
                rabbitmq_url=amqp_url,
                database_url=f"sqlite:///{path}",
                cloudamqp_api_url=api.url,
                cloudamqp_api_key=API_KEY,
                instance_ids=(instance.providerid, fleet.providerid),
                instance_management=((instance.providerid, api.management_url(instance)),),
                retry_delays=(0.2, 0.5),
                upgrade_poll_seconds=0.05,  # real seconds: the follow-up's checks, on the clock as it is then
                claim_lease_seconds=3600,  # simulated: far longer than a call takes
                api_timeout_seconds=5,
                management_timeout_seconds=5,
                watchdog_interval_seconds=INTERVAL,
            )
            store = await Store.open(settings.database_url)
            publisher = CountingPublisher(amqp_url, settings.delay_queues)
            client = CloudAmqpClient.from_settings(session, settings, API_KEY)
            management = ManagementApi(session, dict(settings.instance_management), timeout=5.0)
            policy = Policy((rule,))
            processor = Processor(
                settings, store, client, worker_id="bench", policy=policy, clock=clock, management=management
            )
            await processor.resolve_instances(force=True)
            watchdog = Watchdog(
                settings, store, management, publisher, policy, worker_id="bench", dry_run=False, clock=clock
            )
            consumer = Consumer(settings, processor)
            stop = asyncio.Event()
            consuming = asyncio.ensure_future(consumer.run(stop))
            try:
                await wait_until(lambda: consumer.consuming, timeout=30, what="the consumer")
                yield World(
                    clock, api, instance, fleet, store, publisher, watchdog, consumer, settings.database_url
                )
            finally:
                stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(consuming, 30)
                await publisher.close()
                await store.close()
    finally:
        await api.stop()


# --- one run --------------------------------------------------------------------------------


async def earlier_plan_change(w: World) -> float | None:
    """A memory alarm of the fleet's other instance, through the pipeline, followed until the
    follow-up has measured its plan change; that duration is the fleet's lead time."""
    body = {
        "alarm_type": "memory",
        "value": 85,
        "instance_id": w.fleet.providerid,
        "triggered_at": iso(w.clock()),
    }
    await w.publisher.publish(
        json.dumps(body).encode(), "bench-earlier-change", w.clock(), topology.FAST_QUEUE
    )
    await w.decided(1)
    deadline = w.clock() + 2 * RECONFIGURE
    while w.clock() < deadline:
        await w.step()
        rows = [dict(a) for a in await w.store.list_actions(instance=w.fleet.providerid)]
        if rows and rows[0]["reconfigure_seconds"] is not None:
            return float(rows[0]["reconfigure_seconds"])
    return None


async def run_curve(cfg: Config, curve: Curve, lead: str) -> dict[str, Any]:
    start = float(int(time.time()))
    async with world(cfg, curve, lead, start) as w:
        began = time.monotonic()
        measured = await earlier_plan_change(w) if lead == "measured" else None
        zero = start + PRE_ROLL
        while w.clock() < zero:
            await w.step()
        end = zero + curve.minutes * MIN
        while w.clock() < end or _reconfiguring(w.instance):
            await w.step()
        wall = time.monotonic() - began
        return await _result(w, curve, lead, zero, measured, wall)


def _reconfiguring(instance: Instance) -> bool:
    return instance.target is not None


async def _upgrades(w: World, zero: float) -> list[dict[str, Any]]:
    """The plan changes of the curve's instance, as the stand-in dated them, each with what
    raised the alarm that asked for it (the actions that called, in order)."""
    actions = await w.store.list_actions(instance=w.instance.providerid, limit=1000)
    called = sorted((dict(a) for a in actions if a["status"] in CALLED), key=lambda a: float(a["created_at"]))
    upgrades = []
    for n, change in enumerate(w.instance.changes_made):
        event = str(called[n]["event_id"]) if n < len(called) else ""
        upgrades.append(
            {
                "plan": f"{change.plan_from} → {change.plan_to}",
                "source": "forecast" if event.startswith("forecast-") else "watchdog's alarm",
                "requested_min": _minutes(change.accepted_at - zero),
                "ready_min": _minutes(change.ready_at - zero) if change.ready_at is not None else None,
            }
        )
    return upgrades


async def _forecasts(w: World) -> list[dict[str, Any]]:
    """The forecast alarms of the curve's instance the pipeline recorded, oldest first."""
    bodies = [
        json.loads(e["body"])
        for e in reversed(await w.store.list_events(limit=1000))
        if str(e["event_id"]).startswith("forecast-")
    ]
    return [b["forecast"] for b in bodies if b.get("instance_id") == w.instance.providerid]


async def _result(
    w: World, curve: Curve, lead: str, zero: float, measured: float | None, wall: float
) -> dict[str, Any]:
    """What the run shows, in minutes from the curve's start."""
    upgrades = await _upgrades(w, zero)
    forecasts = await _forecasts(w)
    crossing = curve.crossing()
    ready: float | None = upgrades[0]["ready_min"] if upgrades else None
    ahead = round(crossing - ready, 2) if crossing is not None and ready is not None else None
    simulated = w.clock() - (zero - PRE_ROLL)
    return {
        "curve": curve.name,
        "shape": curve.shape,
        "lead": lead,
        "crossing_min": round(crossing, 2) if crossing is not None else None,
        "upgraded": bool(upgrades),
        "upgrades": upgrades,
        "ready_before_crossing_min": ahead,
        "needless_upgrades": max(len(upgrades) - (1 if crossing is not None else 0), 0),
        "forecasts": len(forecasts),
        "explanation": forecasts[0]["explanation"] if forecasts else None,
        "lead_time_s": forecasts[0]["lead_time_seconds"] if forecasts else None,
        "earlier_plan_change_measured_s": measured,
        "reconfigure_s": RECONFIGURE,
        "polls": w.polls,
        "nodes_reads": w.api.management_reads[w.instance.name],
        "simulated_min": round(simulated / MIN, 1),
        "wall_s": round(wall, 1),
        "acceleration": round(simulated / wall) if wall else None,
    }


def _minutes(seconds: float) -> float:
    return round(seconds / MIN, 2)


def meets(run: dict[str, Any]) -> bool | None:
    """The target: a climb ready before its crossing; nothing on a plateau or a spike."""
    if run["lead"] == "forecast off":
        return None
    if run["shape"] == "climb":
        ahead = run["ready_before_crossing_min"]
        return ahead is not None and ahead > 0 and run["needless_upgrades"] == 0
    if run["shape"] in ("plateau", "spike"):
        return not run["upgraded"]
    return None


async def bench_forecast(cfg: Config) -> dict[str, Any]:
    configure_logging("json", "warning")  # the worker's parts log in this process
    chosen = curves(cfg.forecast_quick)
    runs: list[dict[str, Any]] = []
    for curve in chosen:
        leads = LEADS if curve.crossing() is not None else LEADS[:2]
        for lead in leads:
            run = await run_curve(cfg, curve, lead)
            run["meets"] = meets(run)
            runs.append(run)
    return {
        "threshold": THRESHOLD,
        "reconfigure_s": RECONFIGURE,
        "step_s": STEP,
        "watchdog_interval_s": INTERVAL,
        "pre_roll_min": PRE_ROLL / MIN,
        "runs": runs,
    }
