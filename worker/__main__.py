"""``python -m worker``: one worker process; start several for more throughput."""

from __future__ import annotations

import gc

# Run as a program: no cyclic collection while the modules load (settle_gc turns it back on
# once up). Imported, as a test does, it leaves the collector alone.
if __name__ == "__main__":
    gc.disable()

import argparse
import asyncio
import os
import socket
from collections.abc import Coroutine
from functools import partial
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from shared import metrics
from shared.errors import StoreError
from shared.policy import Policy, resize_cooldown_warnings
from shared.policy_file import PolicyError, load_policy
from shared.publisher import Publisher
from shared.runtime import fail, install_stop_handlers, load_settings_or_exit, run_main, settle_gc
from shared.settings import Settings
from shared.store import Store, retention
from worker import notify_config
from worker.catalogue import PlanCatalogue
from worker.check import start_checks
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.management import ManagementApi
from worker.notify import Notifier
from worker.process import Processor
from worker.quiet import QuietResolves
from worker.retention import Pruner
from worker.sweep import ConfirmationSweep
from worker.watchdog import Watchdog

log = structlog.get_logger("worker")


async def main(settings: Settings, *, burst: bool = False) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop, lambda name: log.info("worker.signal", signal=name))
    try:
        policy = load_policy(settings.policy_file) if settings.policy_file else Policy.default(settings)
        notify_to = notify_config.endpoints(settings)
    except PolicyError as exc:
        fail("worker", str(exc))
        return
    try:
        store = await Store.open(settings.database_url)
    except StoreError as exc:
        fail("worker", f"state store error: {exc}")
        return
    log.info("policy.loaded", file=settings.policy_file, rules=[r.name for r in policy.rules])
    for warning in resize_cooldown_warnings(policy, settings):
        log.warning("policy.resize_cooldown_raised", detail=warning)
    if not settings.instance_ids:
        log.warning("worker.no_instances", detail="CLOUDAMQP_INSTANCE_ID is unset: no upgrades")
    if settings.effective_dry_run:
        why = "DRY_RUN is set" if settings.dry_run else "CLOUDAMQP_API_KEY is unset"
        log.warning("worker.dry_run", detail=f"dry run: {why}; decisions are recorded, no API call")
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    async with aiohttp.ClientSession() as session:
        # With a key, CloudAMQP is read (plans, instances) even in a dry run; only calls wait.
        reader = None
        if settings.cloudamqp_api_key:
            reader = CloudAmqpClient.from_settings(session, settings, settings.cloudamqp_api_key)
        client = reader if not settings.effective_dry_run else None
        plans = PlanCatalogue(store, reader)
        await plans.read()
        plans.warn_about(policy, from_settings=not settings.policy_file)
        management = (
            ManagementApi(
                session, dict(settings.instance_management), timeout=settings.management_timeout_seconds
            )
            if settings.instance_management
            else None
        )
        processor = Processor(
            settings, store, client, worker_id=worker_id, policy=policy, management=management, plans=plans
        )
        await processor.resolve_instances(force=True)
        consumer = Consumer(settings, processor)
        notifier = Notifier(settings, store, notify_to, session)
        log.info("worker.starting", worker_id=worker_id, settings=settings.public_dict())
        log.info("notify.endpoints", endpoints=[{"id": e.id, "channel": e.kind.value} for e in notify_to])
        runner = await serve_metrics(settings, consumer) if settings.worker_metrics_port else None
        jobs = [run_both(consumer, notifier, stop, burst)]
        settle_gc()
        if not burst:
            jobs += periodic_jobs(settings, store, processor, policy, stop)
            listing = partial(processor.resolve_instances, force=True)
            jobs += [plans.run(stop, listing), start_checks(settings, session, store, worker_id, stop)]
        try:
            with metrics.read_on_scrape(retention.Gauges(store.db).refresh):
                await asyncio.gather(*jobs)
        finally:
            if runner is not None:
                await runner.cleanup()
            await store.close()


def periodic_jobs(
    settings: Settings, store: Store, processor: Processor, policy: Policy, stop: asyncio.Event
) -> list[Coroutine[Any, Any, None]]:
    """What one worker among all runs per interval (``worker.schedule``): the confirmation
    sweep, the quiet-resolve sweep of flapping incidents, pruning (``RETENTION_INTERVAL_SECONDS``),
    and the watchdog where an instance's management API is known. Those that publish do so on
    a connection of their own."""
    worker_id = processor.worker_id

    def publisher() -> Publisher:
        return Publisher(settings.rabbitmq_url, settings.delay_queues)

    jobs = [
        ConfirmationSweep(settings, store, publisher(), worker_id=worker_id).run(stop),
        QuietResolves(settings, store, worker_id=worker_id).run(stop),
    ]
    if settings.retention_interval_seconds > 0:
        jobs.append(Pruner(settings, store, worker_id=worker_id).run(stop))
    if processor.management is not None and settings.watchdog_interval_seconds > 0:
        watchdog = Watchdog(
            settings,
            store,
            processor.management,
            publisher(),
            policy,
            worker_id=worker_id,
            dry_run=processor.dry_run,
        )
        jobs.append(watchdog.run(stop))
    return jobs


async def run_both(consumer: Consumer, notifier: Notifier, stop: asyncio.Event, burst: bool) -> None:
    """The alarm consumer and the notifier, side by side on connections of their own. In
    burst mode each drains (the notifier after the consumer, whose alarms write the outbox)
    and a signal still stops both."""
    if not burst:
        await asyncio.gather(consumer.run(stop), notifier.run(stop))
        return
    consumer_stop, consumer_done = asyncio.Event(), asyncio.Event()

    async def alarms() -> None:
        try:
            await consumer.run(consumer_stop, burst=True)
        finally:
            consumer_done.set()

    async def forward_signal() -> None:
        await stop.wait()
        consumer_stop.set()

    forward = asyncio.ensure_future(forward_signal())
    try:
        await asyncio.gather(alarms(), notifier.run(stop, burst=True, upstream=consumer_done))
    finally:
        forward.cancel()


async def serve_metrics(settings: Settings, consumer: Consumer) -> web.AppRunner:
    """``/metrics`` and ``/healthz`` on WORKER_METRICS_PORT (one port per worker process)."""

    async def healthz(request: web.Request) -> web.Response:
        ok = consumer.consuming
        client = consumer.processor.client
        body = {
            "status": "ok" if ok else "broker_disconnected",
            # Which CloudAMQP API plan changes go to (UPGRADE_API=auto: "auto" until the first).
            "cloudamqp_api": client.api_in_use if client is not None else "dry_run",
        }
        return web.json_response(body, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics.metrics_view)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.receiver_host, settings.worker_metrics_port).start()
    except OSError as exc:
        await runner.cleanup()
        fail("worker", f"cannot listen on WORKER_METRICS_PORT={settings.worker_metrics_port}: {exc}")
    log.info("worker.metrics", port=settings.worker_metrics_port)
    return runner


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument(
        "--burst",
        action="store_true",
        help="exit once the work queue and its delay queues are empty (process a backlog, then stop)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    run_main(main(load_settings_or_exit("worker"), burst=args.burst))
