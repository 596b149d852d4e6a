"""Benchmark 6: the console's pages with 10,000 incidents in the store.

The store is seeded the way workers fill it (``Unit.record_event`` and ``write_action``, in
batches): 10,000 incidents over 40 instances and four alarm types, each with three events and
one action, 100 upgrades in the audit trail, 20 upgrades awaiting approval and 20 parked
alarms in the broker. A real ``python -m receiver`` serves them; one logged-in client asks
each page ``requests`` times in a row (after a warm-up) and the server-side time is read as
the client sees it: request sent → last byte. The baselines, in the same process and run: the
JSON view of the same 50 incidents (``GET /incidents?limit=50``) and ``GET /healthz`` (the
least an aiohttp handler of this receiver costs).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aio_pika.abc import HeadersType

from bench.harness import Processes, fresh_postgres, fresh_vhost, percentile
from shared import topology
from shared.alarm import Alarm, event_key, new_id
from shared.incidents import plan_incident
from shared.store import ActionRecord, ActionStatus, AuditEntry, Store
from tests.support import free_port

OPERATOR_TOKEN = "bench-operator-token-4d1c9e"
SESSION_KEY = "QmVuY2gtY29uc29sZS1zZXNzaW9uLWtleS0zMmJ5dGU="  # 32 bytes, for the bench only
TYPES = ("memory", "disk", "cpu", "queue")
INSTANCES = tuple(f"bench-instance-{n:02d}" for n in range(40))
TARGET_MS = 200.0


@dataclass
class Sizes:
    incidents: int = 10_000
    events_per_incident: int = 3
    requests: int = 100
    warmup: int = 10
    parked: int = 20


async def seed(store: Store, sizes: Sizes, now: float) -> dict[str, str]:
    """Fill the store; returns ids the pages are asked for (an incident, an instance)."""
    batch = 500
    first_incident = ""
    for start in range(0, sizes.incidents, batch):
        async with store.unit() as unit:
            for n in range(start, min(start + batch, sizes.incidents)):
                kind, instance = TYPES[n % len(TYPES)], INSTANCES[n % len(INSTANCES)]
                at = now - (sizes.incidents - n) * 30.0
                for k in range(sizes.events_per_incident):
                    body = {
                        "message": f"{kind} alarm #{n} on {instance}",
                        "alarm_type": kind,
                        "value": 70 + k,
                    }
                    alarm = Alarm(new_id(), at + k, body, event_key(body))
                    recorded = await unit.record_event(
                        alarm, instance, plan_incident(alarm, instance), at + k
                    )
                    first_incident = first_incident or str(recorded.incident_id)
                    if k == sizes.events_per_incident - 1:
                        status = ActionStatus.AWAITING_APPROVAL if n % 500 == 0 else ActionStatus.SKIPPED
                        record = ActionRecord(
                            alarm, status, at + k, recorded.incident_id, instance, "below_threshold", "bench"
                        )
                        await unit.write_action(record)
                if n % 100 == 0:
                    detail = {"plan_from": "hare-1", "plan_to": "rabbit-1", "rule": "memory", "cause": {}}
                    await unit.audit(
                        AuditEntry(f"upgrade:{n}", at, "autopilot", "automatic", "upgrade", instance, detail)
                    )
        if start % 5000 == 0:
            print(f"[bench] console: seeded {start + batch} incidents", flush=True)
    return {"incident": first_incident, "instance": INSTANCES[0]}


async def park(amqp_url: str, count: int) -> None:
    """Parked alarms as the worker leaves them: the original body, our headers."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_topology(channel, (10.0,))
        for n in range(count):
            headers: HeadersType = {
                "x-autopilot-event-id": f"parked-{n}",
                "x-autopilot-status": "permanent_error",
                "x-autopilot-attempts": 1,
                "x-autopilot-error": "CloudAMQP API answered 400: bench",
                "x-autopilot-failed-at": "2026-12-03T10:00:00Z",
            }
            body = json.dumps(
                {"alarm_type": "memory", "value": 91, "instance_id": INSTANCES[n % 40]}
            ).encode()
            message = aio_pika.Message(body, message_id=f"parked-{n}", headers=headers)
            await channel.default_exchange.publish(message, routing_key=topology.DEAD_QUEUE)


async def login(session: aiohttp.ClientSession, base: str) -> None:
    async with session.get(f"{base}/ui/login") as resp:
        csrf = re.search(r'name="_csrf" value="([^"]+)"', await resp.text())
    assert csrf is not None
    form = {"_csrf": csrf.group(1), "token": OPERATOR_TOKEN, "name": "bench"}
    async with session.post(f"{base}/ui/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()


async def timed(
    session: aiohttp.ClientSession,
    url: str,
    sizes: Sizes,
    requests: int,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Sequential GETs of ``url``: p50/p99/max milliseconds, the size and the statuses."""
    took: list[float] = []
    statuses: dict[str, int] = {}
    size = 0
    for n in range(sizes.warmup + requests):
        started = time.perf_counter()
        async with session.get(url, allow_redirects=False, headers=headers) as resp:
            body = await resp.read()
        if n >= sizes.warmup:
            took.append((time.perf_counter() - started) * 1000)
            statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            size = len(body)
    return {
        "p50_ms": round(percentile(took, 50), 2),
        "p99_ms": round(percentile(took, 99), 2),
        "max_ms": round(max(took), 2),
        "requests": requests,
        "bytes": size,
        "statuses": statuses,
    }


def pages(ids: dict[str, str]) -> dict[str, str]:
    return {
        "overview": "/ui/",
        "incidents": "/ui/incidents",
        "incidents, filtered": "/ui/incidents?status=open&alarm_type=disk&instance=bench-instance-01",
        "incidents, page 100": "/ui/incidents?offset=4950",
        "incident detail": f"/ui/incidents/{ids['incident']}",
        "actions": "/ui/actions",
        "actions, filtered": "/ui/actions?status=skipped&instance=bench-instance-02",
        "audit": "/ui/audit",
        "instance": f"/ui/instances/{ids['instance']}",
        "instances": "/ui/instances",
        "parked alarms": "/ui/parked",
        "live poll (incidents)": "/ui/incidents",
    }


async def _one_store(workdir: Path, amqp_url: str, database_url: str, sizes: Sizes) -> dict[str, Any]:
    now = time.time()
    store = await Store.open(database_url)
    try:
        started = time.monotonic()
        ids = await seed(store, sizes, now)
        seeded_s = round(time.monotonic() - started, 1)
    finally:
        await store.close()
    await park(amqp_url, sizes.parked)
    procs = Processes(workdir)
    port = free_port()
    env = {
        "RABBITMQ_URL": amqp_url,
        "DATABASE_URL": database_url,
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(port),
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
        "CONSOLE_SESSION_KEY": SESSION_KEY,
        "CLOUDAMQP_INSTANCE_ID": ",".join(INSTANCES),
        "WEBHOOK_TOKEN": "",
    }
    base = f"http://127.0.0.1:{port}"
    out: dict[str, Any] = {"seeded_seconds": seeded_s, "pages": {}}
    try:
        await procs.start("receiver", env, "receiver.ready")
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            await login(session, base)
            out["baseline_healthz"] = await timed(session, f"{base}/healthz", sizes, sizes.requests)
            out["baseline_json_incidents"] = await timed(
                session, f"{base}/incidents?limit=50", sizes, sizes.requests
            )
            for name, path in pages(ids).items():
                poll = {"HX-Request": "true"} if name.startswith("live poll") else None
                requests = max(20, sizes.requests // 4) if name == "parked alarms" else sizes.requests
                result = await timed(session, base + path, sizes, requests, poll)
                out["pages"][name] = {"path": path, **result}
    finally:
        await procs.stop_all()
    json_p50 = out["baseline_json_incidents"]["p50_ms"]
    for result in out["pages"].values():
        result["ratio_p50_vs_json"] = round(result["p50_ms"] / json_p50, 2) if json_p50 else None
        result["meets"] = result["p99_ms"] < TARGET_MS and set(result["statuses"]) == {"200"}
    return out


async def bench_console(cfg: Any) -> dict[str, Any]:
    """Each console page's render time, SQLite and PostgreSQL, 10,000 incidents each."""
    sizes = Sizes(requests=30, warmup=3) if getattr(cfg, "duration", 10.0) < 5 else Sizes()
    out: dict[str, Any] = {"incidents": sizes.incidents, "target_ms": TARGET_MS}
    for store_name in cfg.stores:
        async with fresh_vhost() as amqp_url:
            if store_name == "sqlite":
                url = f"sqlite:///{cfg.workdir}/console-bench.db"
                out[store_name] = await _one_store(cfg.workdir, amqp_url, url, sizes)
            else:
                async with fresh_postgres() as url:
                    out[store_name] = await _one_store(cfg.workdir, amqp_url, url, sizes)
    return out
