"""A worker whose upgrade call succeeded while the store was out of its reach must not be
overtaken by another worker once its lease has run out: the window the chaos suite's
store-outage scenario found (an instance upgraded twice).

Two in-process workers share a real PostgreSQL store; worker A reaches it through a TCP
proxy that the stand-in API cuts at the exact step — when A's upgrade request arrives,
before A can record the outcome. Time is each worker's clock argument, so the lease runs
out without waiting for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from shared.alarm import Alarm, event_key, iso, new_id
from shared.settings import Settings, UpgradeApi
from shared.store import Store
from tests.cloudamqp_stand_in import DEFAULT_KEY, CloudAmqpStandIn
from tests.support import TcpProxy, wait_until
from worker.cloudamqp import CloudAmqpClient
from worker.outcomes import Ack, Defer
from worker.process import Processor

INSTANCE = "takeover-1"
LEASE = 120.0


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


def memory_alarm(value: float, at: float) -> Alarm:
    body = {"alarm_type": "memory", "value": value, "instance_id": INSTANCE, "triggered_at": iso(at)}
    return Alarm(event_id=new_id(), received_at=at, body=body, event_key=event_key(body))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def processor(
    store: Store,
    api: CloudAmqpStandIn,
    session: aiohttp.ClientSession,
    name: str,
    clock: Callable[[], float],
) -> Processor:
    settings = Settings(
        cloudamqp_api_url=api.url,
        cloudamqp_api_key=DEFAULT_KEY,
        instance_ids=(INSTANCE,),
        claim_lease_seconds=LEASE,
        retry_delays=(0.2, 0.5),
        api_timeout_seconds=5.0,
    )
    client = CloudAmqpClient(
        session, base_url=api.url, api_key=DEFAULT_KEY, timeout=5.0, quick_retries=0, mode=UpgradeApi.ACTIONS
    )
    return Processor(settings, store, client, worker_id=name, clock=clock)


async def test_given_a_worker_cut_off_from_the_store_after_its_upgrade_call_when_its_lease_runs_out_then_no_second_call(  # noqa: E501
    postgres_url: str, fake_api: CloudAmqpStandIn, session: aiohttp.ClientSession
) -> None:
    proxy = TcpProxy(urlsplit(postgres_url).port or 5432)
    await proxy.start()
    store_a = await Store.open(postgres_url.replace(f":{proxy.target_port}/", f":{proxy.port}/"))
    store_b = await Store.open(postgres_url)
    clock = Clock(time.time())
    worker_a = processor(store_a, fake_api, session, "worker-a", clock)
    worker_b = processor(store_b, fake_api, session, "worker-b", clock)
    fake_api.hold = asyncio.Event()
    try:
        # Given worker A claimed the instance and its upgrade request reached the API ...
        first = asyncio.ensure_future(worker_a.process(memory_alarm(85, clock.now)))
        await wait_until(lambda: fake_api.upgrade_requests(), timeout=10, what="A's upgrade request")
        # ... which carries it out while A's store connection is cut, so A cannot record it.
        await proxy.cut()
        fake_api.hold.set()
        assert not first.done()

        # When A's lease has run out and worker B takes a reminder for the same instance
        clock.now += LEASE + 1
        reminder = memory_alarm(86, clock.now)
        noticed = await worker_b.process(reminder)

        # Then B does not call: it gives A one more lease to report, and defers.
        assert isinstance(noticed, Defer), noticed
        assert len(fake_api.upgrade_requests()) == 1

        # And once A reaches the store again, its outcome lands: the cooldown holds for B.
        await proxy.start()
        assert isinstance(await asyncio.wait_for(first, timeout=30), Ack)
        clock.now += LEASE + 1
        assert isinstance(await worker_b.process(reminder), Ack)
        assert len(fake_api.upgrade_requests()) == 1
        actions = {row["event_id"]: row for row in await store_b.list_actions()}
        assert actions[reminder.event_id]["status"] == "skipped"
        assert actions[reminder.event_id]["reason"] == "cooling_down"
        assert [row["status"] for row in actions.values()].count("succeeded") == 1
    finally:
        fake_api.hold.set()
        await proxy.cut()
        await store_a.close()
        await store_b.close()


async def test_given_a_holder_that_never_reports_when_its_extra_lease_also_runs_out_then_the_claim_is_taken_over(  # noqa: E501
    postgres_url: str, fake_api: CloudAmqpStandIn, session: aiohttp.ClientSession
) -> None:
    """The notice delays a takeover by one lease; it does not prevent it (a dead worker's claim
    still expires, as the lease promises)."""
    store = await Store.open(postgres_url)
    clock = Clock(time.time())
    worker = processor(store, fake_api, session, "worker-b", clock)
    try:
        async with store.unit() as unit:  # a holder that died right after taking the claim
            await unit.try_claim(f"{INSTANCE}/memory", INSTANCE, "dead-worker", clock.now, LEASE, 1800)
        clock.now += LEASE + 1
        reminder = memory_alarm(86, clock.now)
        assert isinstance(await worker.process(reminder), Defer)
        assert fake_api.upgrade_requests() == []

        clock.now += LEASE + 1
        assert isinstance(await worker.process(reminder), Ack)
        assert len(fake_api.upgrade_requests()) == 1
    finally:
        await store.close()


async def test_given_an_upgrade_call_slower_than_the_lease_then_its_worker_renews_the_claim(
    database_url: str, fake_api: CloudAmqpStandIn, session: aiohttp.ClientSession
) -> None:
    store = await Store.open(database_url)
    worker = processor(store, fake_api, session, "worker-a", time.time)
    worker.settings = replace(worker.settings, claim_lease_seconds=0.6)  # renewed every 0.2 s
    fake_api.hold = asyncio.Event()
    scope = f"{INSTANCE}/memory"
    try:
        call = asyncio.ensure_future(worker.process(memory_alarm(85, time.time())))
        await wait_until(lambda: fake_api.upgrade_requests(), timeout=10, what="the upgrade request")
        [claimed] = await store_claims(store, scope)

        async def renewed() -> bool:
            [row] = await store_claims(store, scope)
            return bool(row["lease_until"] > claimed["lease_until"] and row["status"] == "held")

        await wait_until(renewed, timeout=10, what="the lease to be renewed while the call runs")
        fake_api.hold.set()
        assert isinstance(await asyncio.wait_for(call, timeout=10), Ack)
        [done] = await store_claims(store, scope)
        assert done["status"] == "done"
    finally:
        fake_api.hold.set()
        await store.close()


async def store_claims(store: Store, scope: str) -> list[dict[str, Any]]:
    async with store.db.transaction(write=False) as tx:
        return await tx.fetch("SELECT * FROM claims WHERE scope = $1", scope)
