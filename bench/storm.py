"""Benchmark 7, the alarm storm: a fleet's CloudAMQP reminders queued up (mostly repeats, 2 %
needing an upgrade), drained by 1 to 4 workers; and the same storm while new upgrade-worthy
alarms keep arriving through the receiver, to see how long they wait behind it.

Reported: time to drain, time until the last needed upgrade request reached the (stand-in)
API, the drain curve (alarms decided over time), and for the arrivals their wait from POST to
upgrade request. The storm is published straight onto the queues, routed as the receiver
routes it (``receiver.lanes``) — or, for the "one queue" comparison, all onto the work queue
as a receiver without lanes did.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness import (
    API_KEY,
    PLAN,
    cpu_seconds,
    free_port,
    fresh_vhost,
    percentile,
    plan_changes,
    stand_in_args,
    wait_http_ready,
)
from bench.load import publish_routed, routed
from bench.suite import Config, alarm_body, decided_count, receiver_env, running, store_url

POLL_SECONDS = 0.25


@dataclass
class Storm:
    """The queued alarms, in order, and what the run must see."""

    bodies: list[bytes]
    upgrades: list[str]  # instances whose first alarm needs an upgrade
    managed: list[str]
    fresh: list[str] = field(default_factory=list)  # managed, for alarms arriving during the drain


def storm_mix(alarms: int, instances: int, *, upgrade_share: float = 0.02, seed: int = 18) -> Storm:
    """``alarms`` reminders from ``instances`` instances, ``alarms / instances`` each, the first
    of an instance before its repeats, instances interleaved at random. ``upgrade_share`` of
    the alarms are the first alarm of a managed instance above the threshold (an upgrade); the
    rest are identical re-sends and reminders of those (duplicate, cooling down), reminders of
    managed instances below the threshold, and alarms of instances this deployment does not
    manage."""
    rng = random.Random(seed)
    per = max(1, alarms // instances)
    n_up = min(instances, round(alarms * upgrade_share))
    n_below = (instances - n_up) // 2
    ids = [f"storm-{i:05d}" for i in range(instances)]
    upgrades, below = ids[:n_up], ids[n_up : n_up + n_below]
    sequences: list[list[bytes]] = []
    for i, instance in enumerate(ids):
        value = 85.0 if i < n_up or i >= n_up + n_below else 60.0
        first = alarm_body(i, instance, value=value)
        seq = [first]
        for _ in range(per - 1):
            again = rng.random() < 0.5  # an identical re-send, else a reminder with a new value
            seq.append(first if again else alarm_body(i, instance, value=value + rng.random() * 10))
        sequences.append(seq)
    order = [i for i, seq in enumerate(sequences) for _ in seq]
    rng.shuffle(order)
    cursors = [0] * instances
    bodies = []
    for i in order:
        bodies.append(sequences[i][cursors[i]])
        cursors[i] += 1
    fresh = [f"fresh-{i:04d}" for i in range(2000)]
    return Storm(bodies, upgrades, upgrades + below + fresh, fresh)


def route(storm: Storm, lanes: bool) -> list[tuple[str, Any]]:
    """(queue, message) for every alarm, as the receiver would publish it."""
    return routed(storm.bodies, storm.managed, lanes=lanes)


async def _arrivals(api_url: str) -> list[list[Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"{api_url}/_stand_in/requests") as resp:
        rows: list[list[Any]] = await resp.json()
    return plan_changes(rows)


async def run_storm(
    cfg: Config, api_url: str, storm: Storm, kind: str, k: int, *, lanes: bool, arrivals_per_s: float = 0.0
) -> dict[str, Any]:
    """Queue the storm, start ``k`` workers (and a receiver when alarms arrive meanwhile),
    and follow the drain to its end."""
    routed = route(storm, lanes)
    async with fresh_vhost() as amqp_url, store_url(kind, cfg.workdir) as db_url, running(cfg) as procs:
        await publish_routed(amqp_url, routed)
        env = {
            "RABBITMQ_URL": amqp_url,
            "DATABASE_URL": db_url,
            "CLOUDAMQP_API_URL": api_url,
            "CLOUDAMQP_API_KEY": API_KEY,
            "UPGRADE_PLAN": PLAN,
            "CLOUDAMQP_INSTANCE_ID": ",".join(storm.managed),
            "RETRY_DELAYS": "0.2,0.5",
        }
        async with aiohttp.ClientSession() as http:
            await http.delete(f"{api_url}/_stand_in/requests")
        port = free_port()
        if arrivals_per_s:
            lane = {"FAST_LANE": "true" if lanes else "false"}
            await procs.start(
                "receiver", receiver_env(amqp_url, cfg.workdir, port, **env, **lane), "receiver.ready"
            )
        workers = [procs.spawn("worker", env) for _ in range(k)]
        for worker in workers:
            await worker.wait_event("worker.ready", timeout=60)
        cpu_before = sum(cpu_seconds(w.popen.pid) for w in workers)
        start = time.time()
        sent: dict[str, float] = {}
        stop_sending = asyncio.Event()
        sender = (
            asyncio.ensure_future(_send_fresh(port, storm.fresh, arrivals_per_s, sent, stop_sending))
            if arrivals_per_s
            else None
        )
        curve: list[tuple[float, int]] = [(0.0, 0)]
        total = len(storm.bodies)
        deadline = start + cfg.storm_timeout
        while time.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            done = await decided_count(db_url)
            curve.append((round(time.time() - start, 2), done))
            if done >= total + len(sent):
                break
        drained = curve[-1][0] if curve[-1][1] >= total else None
        stop_sending.set()
        if sender is not None:
            await sender
        cpu = sum(cpu_seconds(w.popen.pid) for w in workers) - cpu_before
        rows = await _arrivals(api_url)
        fallbacks = sum(1 for w in workers for e in w.lines() if e.get("event") == "batch.fallback")
    by_instance = {path.split("/")[3]: t for t, _, path, _ in rows}
    storm_upgrades = [by_instance[i] - start for i in storm.upgrades if i in by_instance]
    out: dict[str, Any] = {
        "store": kind,
        "processes": k,
        "lanes": lanes,
        "alarms": total,
        "drain_s": drained,
        "rate_per_s": round(total / drained, 1) if drained else None,
        "upgrades_expected": len(storm.upgrades),
        "upgrades_requested": len(storm_upgrades),
        "last_upgrade_s": round(max(storm_upgrades), 2) if storm_upgrades else None,
        "cpu_us_per_alarm": round(cpu / total * 1e6),
        "batch_fallbacks": fallbacks,
        "curve": curve,
    }
    if arrivals_per_s:
        waits = [(by_instance[i] - t) * 1000 for i, t in sent.items() if i in by_instance]
        out["arrivals"] = {
            "rate_per_s": arrivals_per_s,
            "sent": len(sent),
            "upgraded": len(waits),
            "p50_ms": round(percentile(waits, 50), 1) if waits else None,
            "max_ms": round(max(waits), 1) if waits else None,
            "waits_ms": [round(w, 1) for w in waits],
        }
    return out


async def _send_fresh(
    port: int, instances: list[str], rate: float, sent: dict[str, float], stop: asyncio.Event
) -> None:
    """New upgrade-worthy alarms through the receiver, ``rate`` a second, until ``stop``."""
    url = f"http://127.0.0.1:{port}/cloudamqp/alarm"
    async with aiohttp.ClientSession() as http:
        for n, instance in enumerate(instances):
            if stop.is_set():
                return
            sent[instance] = time.time()
            async with http.post(
                url, data=alarm_body(n, instance), headers={"Content-Type": "application/json"}
            ) as resp:
                await resp.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / rate)


async def bench_storm(cfg: Config) -> dict[str, Any]:
    storm = storm_mix(cfg.storm_alarms, cfg.storm_instances)
    out: dict[str, Any] = {
        "alarms": cfg.storm_alarms,
        "instances": cfg.storm_instances,
        "upgrades": len(storm.upgrades),
        "runs": [],
    }
    async with running(cfg) as procs:
        api_port = free_port()
        procs.spawn("tests.cloudamqp_stand_in", {}, stand_in_args(api_port, 0.05))
        api_url = f"http://127.0.0.1:{api_port}"
        await wait_http_ready(f"{api_url}/_stand_in/requests")
        for kind, k in cfg.storm_runs:
            out["runs"].append(await run_storm(cfg, api_url, storm, kind, k, lanes=True))
        for lanes in (False, True):
            out["runs"].append(
                await run_storm(
                    cfg, api_url, storm, "sqlite", 1, lanes=lanes, arrivals_per_s=cfg.storm_arrivals_per_s
                )
            )
    return out
