"""The watchdog: every ``WATCHDOG_INTERVAL_SECONDS`` one worker (whichever takes the slot in
the store first) reads each managed instance's ``/api/nodes``, keeps the figures (a bounded
ring per node), raises an alarm of its own through the ordinary pipeline when a rule's
condition has held for its ``time_threshold`` without a CloudAMQP alarm, and records
downgrade advice when an instance we upgraded has stayed small for the quiet window.

Its alarm is CloudAMQP's shape marked ``source: watchdog``, published to the work queue with
a publisher confirm like the receiver's, so it obeys the incident, cooldown, pause, approval
and verification rules like any other. The decisions are ``shared.verify``'s pure functions.

For a rule with ``forecast = true`` it also fits a trend to the instance's recent samples and,
when the threshold will be crossed within the lead time, raises a ``forecast`` alarm the same
way, once per climb (``worker.forecast``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from shared import metrics, topology, watch
from shared.alarm import iso
from shared.errors import BrokerUnavailable
from shared.plans import DEFAULT_LADDER, Ladder
from shared.policy import Policy, Rule, upgrade_scope
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store
from shared.verify import (
    Assessment,
    Condition,
    NodeReading,
    QuietWindow,
    WatchState,
    WatchVerdict,
    advice_id,
    assess,
    downgrade_advice,
    peak,
    watchdog_alarm,
    watchdog_event_id,
)
from shared.verify import (
    watch as watch_step,
)
from worker import forecast as fc
from worker import schedule
from worker.management import ManagementApi, read_nodes

log = structlog.get_logger("worker.watchdog")

SCHEDULE = "watchdog"


@dataclass(frozen=True)
class Watched:
    """A condition the watchdog tests on an instance: the first rule for its alarm type."""

    rule: Rule
    condition: Condition
    time_threshold: float


def watched_conditions(policy: Policy, settings: Settings, instance_id: str) -> list[Watched]:
    """For each alarm type the nodes show, the rule that would decide its alarm (first match
    wins, as in ``decide``) when it is an upgrade with a condition the figures can test. A
    disk rule with thresholds is left out: its thresholds are CloudAMQP's percent of disk
    used, which ``/api/nodes`` cannot tell."""
    found: dict[str, Watched] = {}
    for rule in policy.rules:
        if rule.alarm_type in found or (rule.instances and instance_id not in rule.instances):
            continue
        if rule.alarm_type == "disk" and rule.has_threshold:
            continue
        condition = rule.condition(settings)
        if condition is None:
            continue
        threshold = (
            settings.watchdog_time_threshold_seconds if rule.time_threshold is None else rule.time_threshold
        )
        found[rule.alarm_type] = Watched(rule, condition, threshold)
    return list(found.values())


def advice_ladder(policy: Policy, instance_id: str) -> Ladder:
    """The ladder of the memory rule that applies to the instance (the default one else)."""
    for rule in policy.rules:
        if rule.alarm_type == "memory" and (not rule.instances or instance_id in rule.instances):
            return rule.ladder
    return Ladder.of(DEFAULT_LADDER)


class Watchdog:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: ManagementApi,
        publisher: Publisher,
        policy: Policy,
        *,
        worker_id: str,
        dry_run: bool,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.api = api
        self.publisher = publisher
        self.policy = policy
        self.worker_id = worker_id
        self.dry_run = dry_run
        self.clock = clock
        self.interval = settings.watchdog_interval_seconds
        # This poll's past plan-change durations (read once per poll, and only when a trend
        # heads for a threshold with no lead time of its rule's own).
        self._durations: list[tuple[str, float]] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at each slot this worker takes, until ``stop``."""
        log.info("watchdog.starting", interval_s=self.interval, instances=self.api.instances)
        try:
            await schedule.every(
                self.store, SCHEDULE, self.worker_id, self.interval, self.poll, stop, self.clock
            )
        finally:
            await self.publisher.close()

    async def poll(self, run: int) -> None:
        """One look at every instance, side by side."""
        self._durations = None
        await asyncio.gather(*(self._instance(instance, run) for instance in self.api.instances))

    async def _instance(self, instance_id: str, run: int) -> None:
        readings = await read_nodes(self.api, instance_id)
        if isinstance(readings, str):
            metrics.WATCHDOG_POLLS.labels("unreachable").inc()
            log.warning("watchdog.unreachable", instance=instance_id, error=readings)
            return
        metrics.WATCHDOG_POLLS.labels("ok").inc()
        now = self.clock()
        async with self.store.unit() as unit:
            samples = [_sample(r) for r in readings]
            slot = run % self.settings.sample_history
            await watch.record_samples(unit.tx, instance_id, samples, slot, now)
        for watched in watched_conditions(self.policy, self.settings, instance_id):
            await self._watch(instance_id, watched, assess(watched.condition, readings), now)
            if watched.rule.forecast:
                await self._forecast(instance_id, watched, now)
        await self._advise(instance_id, readings, now)

    async def _watch(self, instance_id: str, watched: Watched, found: Assessment, now: float) -> None:
        alarm_type = watched.condition.alarm_type
        scope = upgrade_scope(instance_id, alarm_type)
        async with self.store.unit() as unit:
            row = await watch.watch_state(unit.tx, instance_id, alarm_type)
            state = WatchState(row["holding_since"] if row else None, row["raised_at"] if row else None)
            alarmed = state.holding_since is not None and await watch.alarmed_since(
                unit.tx, instance_id, state.holding_since, alarm_type
            )
            busy = await watch.upgrade_busy(unit.tx, f"dry-run:{scope}" if self.dry_run else scope, now)
        step = watch_step(
            found,
            state,
            time_threshold=watched.time_threshold,
            alarmed_since=alarmed,
            busy=busy,
            now=now,
        )
        if step.verdict is WatchVerdict.UNKNOWN:
            return
        if step.verdict is WatchVerdict.RAISE:
            assert step.state.holding_since is not None and step.state.raised_at is not None
            event_id = watchdog_event_id(
                instance_id, alarm_type, step.state.holding_since, step.state.raised_at
            )
            body = watchdog_alarm(instance_id, watched.condition, found, iso(now) or "")
            # Upgrade-worthy by construction (it never raises while the scope is busy): ahead of
            # any storm of repeats, as the receiver sends such alarms (``receiver.lanes``).
            lane = topology.FAST_QUEUE if self.settings.fast_lane else topology.WORK_QUEUE
            try:
                await self.publisher.publish(json.dumps(body).encode(), event_id, now, lane)
            except BrokerUnavailable as exc:
                # Not remembered as raised: the next slot raises it again.
                log.warning("watchdog.publish_failed", instance=instance_id, error=str(exc))
                return
            metrics.WATCHDOG_ALARMS.labels(alarm_type).inc()
            log.info(
                "watchdog.alarm_raised",
                event_id=event_id,
                instance=instance_id,
                alarm_type=alarm_type,
                value=body["value"],
                holding_s=round(now - step.state.holding_since, 1),
                rule=watched.rule.name,
            )
        async with self.store.unit() as unit:
            await watch.save_watch_state(
                unit.tx, instance_id, alarm_type, step.state.holding_since, step.state.raised_at, now
            )

    async def _forecast(self, instance_id: str, watched: Watched, now: float) -> None:
        """Fit the trend of the rule's figure and raise a forecast alarm once per climb."""
        target = fc.Target.of(watched.condition)
        if target is None:
            return
        settings, rule = self.settings, watched.rule
        window = settings.forecast_window_seconds
        # The episode is kept beside the watch states, under a key of its own.
        key = f"{fc.FORECAST_PREFIX}{target.alarm_type}"
        async with self.store.unit() as unit:
            rows = await watch.samples_since(unit.tx, instance_id, now - window)
            row = await watch.watch_state(unit.tx, instance_id, key)
        episode = fc.Episode(row["holding_since"], row["raised_at"]) if row else fc.Episode()
        points = fc.series(rows, target.alarm_type)
        found = fc.fit(points, target, now, window=window, min_samples=settings.forecast_min_samples)
        if found.heading:
            if rule.lead_time is None and self._durations is None:
                async with self.store.unit() as unit:
                    self._durations = await watch.reconfigure_durations(unit.tx)
            found = fc.judge(
                found, target, fc.lead_time(rule.lead_time, instance_id, self._durations or [], self.interval)
            )
        step, after = fc.forecast_step(found, episode, now)
        if step is fc.Step.UNKNOWN or (step is not fc.Step.RAISE and after == episode):
            return
        if step is fc.Step.RAISE:
            assert after.since is not None
            if episode.since != after.since:
                # Remembered before publishing: a poller that dies after publishing raises
                # the same event id again at the next poll (recorded once).
                async with self.store.unit() as unit:
                    await watch.save_watch_state(unit.tx, instance_id, key, after.since, None, now)
            if not await self._raise_forecast(instance_id, target, found, rule.name, after.since, now):
                return
        async with self.store.unit() as unit:
            await watch.save_watch_state(unit.tx, instance_id, key, after.since, after.raised_at, now)

    async def _raise_forecast(
        self, instance_id: str, target: fc.Target, found: fc.Projection, rule: str, since: float, now: float
    ) -> bool:
        window = self.settings.forecast_window_seconds
        event_id = fc.forecast_event_id(instance_id, target.alarm_type, since)
        body = fc.forecast_alarm(
            instance_id, target, found, rule, window=window, now=now, triggered_at=iso(now) or ""
        )
        lane = topology.FAST_QUEUE if self.settings.fast_lane else topology.WORK_QUEUE
        try:
            await self.publisher.publish(json.dumps(body).encode(), event_id, now, lane)
        except BrokerUnavailable as exc:
            # Not remembered as raised: the next poll raises it again, under the same id.
            log.warning("forecast.publish_failed", instance=instance_id, error=str(exc))
            return False
        metrics.WATCHDOG_ALARMS.labels(f"forecast:{target.alarm_type}").inc()
        log.info(
            "forecast.raised",
            event_id=event_id,
            instance=instance_id,
            alarm_type=target.alarm_type,
            rule=rule,
            explanation=body["forecast"]["explanation"],
        )
        return True

    async def _advise(self, instance_id: str, readings: list[NodeReading], now: float) -> None:
        """Move the instance's quiet window on by this poll, and advise when it is long and
        small enough. Only for an instance our own upgrade put on its plan."""
        high = peak(readings)
        if high is None:
            return
        settings = self.settings
        async with self.store.unit() as unit:
            last = await watch.last_upgrade(unit.tx, instance_id)
            if last is None or last.plan is None:
                return
            row = await watch.usage_window(unit.tx, instance_id)
            fresh = (
                row is None
                or row["upgrade_id"] != last.upgrade_id
                or await watch.alarmed_since(unit.tx, instance_id, float(row["started_at"]))
            )
            if fresh:
                window = QuietWindow(now, high[0], high[1], 1)
            else:
                assert row is not None
                window = QuietWindow(
                    float(row["started_at"]),
                    max(int(row["peak_mem_used"]), high[0]),
                    high[1],
                    int(row["samples"]) + 1,
                )
            await watch.save_usage_window(
                unit.tx,
                instance_id,
                last.upgrade_id,
                window.started_at,
                window.peak_mem_used,
                window.mem_limit,
                window.samples,
            )
            advice = downgrade_advice(
                instance_id,
                last.plan,
                advice_ladder(self.policy, instance_id),
                window,
                quiet_window=settings.advice_quiet_window_seconds,
                fraction=settings.advice_fraction,
                step=settings.plan_memory_step,
                now=now,
            )
            if advice is None:
                return
            new = await watch.record_advice(
                unit.tx, advice_id(instance_id, last.upgrade_id), last.upgrade_id, advice, now
            )
        if new:
            metrics.ADVICE.labels("downgrade").inc()
            log.info(
                "advice.downgrade",
                instance=instance_id,
                from_plan=advice.from_plan,
                to_plan=advice.to_plan,
                evidence=advice.evidence,
            )


def _sample(r: NodeReading) -> watch.Sample:
    return watch.Sample(
        r.node, r.mem_used, r.mem_limit, r.disk_free, r.disk_free_limit, r.fd_used, r.sockets_used
    )
