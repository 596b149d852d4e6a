"""Benchmark 9, pruning while alarms arrive: a store holding ``rows`` old event rows (recorded
60 days ago, grouped into ``incidents`` incidents), one worker, alarms arriving at ``rate`` a
second throughout. Three phases in one run, the same worker binary and the same file:

1. **before**: pruning off (``RETENTION_INTERVAL_SECONDS=0``), ``phase`` seconds of alarms;
2. **pruning**: a worker with the default limits, which takes the retention slot at start and
   prunes every old row (then hands the SQLite file's free pages back), alarms arriving all the
   while; the alarms published between the run's start and end count;
3. **after**: the same worker, pruning done, ``phase`` seconds more.

The first step's latency is the time from publishing an alarm (the receiver's envelope, onto
the work queue) to the worker's log line saying what its first step decided
(``upgrade.skipped``: the alarms are reminders below the threshold), which the worker writes
once that step's transaction has committed. Reported: p50/p99 of each phase, the pruning
phase's p99 over the one before (the issue's bound: at most 2 ×), the rows pruned and how long
that took, and the SQLite file's size before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika

from bench.harness import Processes, fresh_vhost, percentile
from bench.load import envelope
from bench.suite import Config, _remove_sqlite
from shared import topology
from shared.alarm import Alarm, event_key, new_id
from shared.db import SqliteDatabase
from shared.incidents import plan_incident
from shared.retention import DAY
from shared.snapshot import Arrival
from shared.store import Store
from tests.support import Proc

INSTANCES = tuple(f"bench-retention-{n:03d}" for n in range(100))
SEED_BATCH = 2048
# Events a worker records together share their time (a batch's first step): 64, WORKER_BATCH.
TOGETHER = 64


# The pruning phase gives up after this long.
LONGEST = 3600.0


async def seed(url: str, rows: int, incidents: int, at: float) -> float:
    """``rows`` events recorded at ``at`` as a worker records them (``Unit.record_events``, a
    batch a transaction), grouped into ``incidents`` open incidents; the seconds it took."""
    started = time.monotonic()
    store = await Store.open(url)
    try:
        for first in range(0, rows, SEED_BATCH):
            arrivals = []
            for n in range(first, min(first + SEED_BATCH, rows)):
                instance = f"seeded-{n % incidents:05d}"
                body = {"alarm_type": "memory", "value": 50 + n % 30, "instance_id": instance, "n": n}
                a = Alarm(new_id(), at + n / 1000, body, event_key(body))
                arrivals.append(Arrival(a, instance, plan_incident(a, instance)))
            async with store.unit() as unit:
                for k in range(0, len(arrivals), TOGETHER):
                    await unit.record_events(arrivals[k : k + TOGETHER], at + (first + k) / 1000)
            if (first // SEED_BATCH) % 50 == 49:
                print(f"[bench] retention: seeded {first + len(arrivals):,} events", flush=True)
        if isinstance(store.db, SqliteDatabase):
            await store.db.checkpoint()
    finally:
        await store.close()
    return time.monotonic() - started


def size_of(url: str) -> int:
    return Path(url.removeprefix("sqlite:///")).stat().st_size


async def file_bytes(url: str) -> dict[str, int]:
    store = await Store.open(url)
    try:
        assert isinstance(store.db, SqliteDatabase)
        await store.db.checkpoint()
        facts = await store.db.file_facts()
        return {"file": size_of(url), "pages": facts.bytes, "free": facts.free_bytes}
    finally:
        await store.close()


class Arrivals:
    """Alarms at a fixed rate onto the work queue while ``on``, each a reminder of a managed
    instance below the threshold; remembers when each was published."""

    def __init__(self, amqp_url: str, rate: float):
        self.amqp_url = amqp_url
        self.rate = rate
        self.sent: dict[str, float] = {}
        self.on = asyncio.Event()

    async def run(self) -> None:
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await topology.declare_topology(channel, (10.0, 15.0))
            n = 0
            while True:
                await self.on.wait()
                start, k = time.monotonic(), 0
                while self.on.is_set():
                    delay = start + k / self.rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        continue
                    instance = INSTANCES[n % len(INSTANCES)]
                    body = f'{{"alarm_type": "memory", "value": 40, "instance_id": "{instance}"}}'.encode()
                    event_id = uuid.uuid4().hex
                    self.sent[event_id] = time.time()
                    message = envelope(body, event_id)
                    await channel.default_exchange.publish(message, routing_key=topology.WORK_QUEUE)
                    n, k = n + 1, k + 1

    async def phase(self, seconds: float) -> tuple[float, float]:
        """Alarms for ``seconds``, then 2 s for the last ones' first steps; when it started and
        stopped publishing."""
        self.on.set()
        started = time.time()
        await asyncio.sleep(seconds)
        self.on.clear()
        stopped = time.time()
        await asyncio.sleep(2)
        return started, stopped


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def latencies(worker: Proc, sent: dict[str, float], start: float, end: float) -> list[float]:
    """Milliseconds from publishing to the first step's log line, of the alarms published in
    ``[start, end)``."""
    out = []
    for line in worker.events("upgrade.skipped"):
        at = sent.get(str(line.get("event_id")))
        if at is not None and start <= at < end:
            out.append((_epoch(str(line["timestamp"])) - at) * 1000)
    return out


def _steps(start: float, end: float, step: float) -> list[float]:
    return [start + n * step for n in range(max(1, math.ceil((end - start) / step)))]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(max(values), 2) if values else None,
    }


async def bench_retention(cfg: Config) -> dict[str, Any]:
    path = cfg.workdir / f"retention-{uuid.uuid4().hex[:8]}.db"
    url = f"sqlite:///{path}"
    rows, rate, phase = cfg.retention_rows, cfg.retention_rate, cfg.retention_phase
    out: dict[str, Any] = {"store": "sqlite", "rows": rows, "incidents": cfg.retention_incidents}
    out["rate_per_s"] = rate
    out["seed_seconds"] = round(await seed(url, rows, cfg.retention_incidents, time.time() - 60 * DAY), 1)
    out["bytes_before"] = await file_bytes(url)
    env = {"DATABASE_URL": url, "CLOUDAMQP_INSTANCE_ID": ",".join(INSTANCES)}
    async with fresh_vhost() as amqp_url:
        env["RABBITMQ_URL"] = amqp_url
        arrivals = Arrivals(amqp_url, rate)
        procs = Processes(cfg.workdir)
        feeding = asyncio.ensure_future(arrivals.run())
        try:
            # 1. before: pruning off.
            first, _ = await procs.start("worker", {**env, "RETENTION_INTERVAL_SECONDS": "0"}, "worker.ready")
            t0, t1 = await arrivals.phase(phase)
            out["before"] = summary(latencies(first, arrivals.sent, t0 + 2, t1))
            await first.stop(timeout=30)
            # 2. pruning: a worker with the default limits takes the retention slot at start.
            second, _ = await procs.start("worker", env, "worker.ready")
            await second.wait_event("retention.started", timeout=60)
            arrivals.on.set()
            p0 = time.time()
            [done] = await second.wait_event("retention.pruned", timeout=LONGEST)
            p1 = _epoch(str(done["timestamp"]))
            keys = ("pruned", "batches", "pages_freed", "longest_step_ms", "finished", "seconds")
            out["run"] = {k: done[k] for k in keys}
            # 3. after: pruning done, the same worker.
            await asyncio.sleep(2)
            t2, t3 = await arrivals.phase(phase)
            out["pruning"] = summary(latencies(second, arrivals.sent, p0, p1))
            # Minute by minute: where in the run the slow first steps were.
            out["pruning_by_minute"] = [
                summary(latencies(second, arrivals.sent, start, min(start + 60, p1)))
                for start in _steps(p0, p1, 60)
            ]
            out["after"] = summary(latencies(second, arrivals.sent, t2, t3))
            out["pruning_seconds"] = round(p1 - p0, 1)
        finally:
            arrivals.on.clear()
            feeding.cancel()
            with contextlib.suppress(BaseException):
                await feeding
            await procs.stop_all()
    out["bytes_after"] = await file_bytes(url)
    before, pruning = out["before"]["p99_ms"], out["pruning"]["p99_ms"]
    out["p99_ratio"] = round(pruning / before, 2) if before else None
    out["file_ratio"] = round(out["bytes_after"]["file"] / out["bytes_before"]["file"], 3)
    _remove_sqlite(path)
    return out
