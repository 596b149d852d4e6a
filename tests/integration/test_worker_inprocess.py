"""The worker in-process: ``Consumer.run(burst=True)`` drains a per-test vhost and returns, so
``Processor`` and ``Consumer.settle`` get a fast signal against the real broker and both
stores (the spawned-process tests show the same through the receiver)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiohttp
import pytest

from shared import envelope, topology
from shared.alarm import iso, new_id
from shared.settings import Settings, UpgradeApi
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, seed_alarm, seed_instance
from tests.support import queue_depth
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.process import Processor

Drain = Callable[..., Awaitable[Store]]


async def publish(url: str, *bodies: bytes | dict[str, Any], delays: tuple[float, ...]) -> list[str]:
    """Alarms onto the work queue as the receiver publishes them (confirmed); their ids."""
    ids = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_topology(channel, delays)
        for body in bodies:
            event_id = new_id()
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            message = aio_pika.Message(
                raw,
                message_id=event_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=envelope.alarm_headers(event_id, time.time()),
            )
            await channel.default_exchange.publish(message, routing_key=topology.WORK_QUEUE, mandatory=True)
            ids.append(event_id)
    return ids


async def parked(url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Everything in the parking lot (taken and acknowledged: the test is done with it)."""
    out = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            topology.DEAD_QUEUE, durable=True, arguments=topology.queue_arguments(topology.DEAD_QUEUE)
        )
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
    return out


@pytest.fixture
async def drain(
    vhost: str, database_url: str, fake_api: CloudAmqpStandIn
) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """Run one worker in-process until its queues are empty; returns the store to look at."""
    stores: list[Store] = []
    async with aiohttp.ClientSession() as session:

        async def run(**overrides: Any) -> Store:
            settings = Settings(
                rabbitmq_url=vhost,
                database_url=database_url,
                cloudamqp_api_url=fake_api.url,
                cloudamqp_api_key=API_KEY,
                instance_ids=(SEED_INSTANCE,),
                retry_delays=(0.2, 0.5),
                upgrade_poll_seconds=0.2,
                max_attempts=3,
                quick_retries=0,
                claim_lease_seconds=5,
                api_timeout_seconds=2,
                **overrides,
            )
            store = await Store.open(database_url)
            stores.append(store)
            client = CloudAmqpClient.from_settings(session, settings, API_KEY)
            processor = Processor(settings, store, client, worker_id="in-process")
            await processor.resolve_instances(force=True)
            await asyncio.wait_for(Consumer(settings, processor).run(asyncio.Event(), burst=True), 60)
            return store

        yield run
    for store in stores:
        await store.close()


DELAYS = (0.2, 0.5)


async def actions_by_event(store: Store) -> dict[str, dict[str, Any]]:
    return {row["event_id"]: row for row in await store.list_actions()}


async def test_given_the_seed_alarm_when_a_burst_worker_drains_then_one_upgrade_is_recorded(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    [event_id] = await publish(vhost, seed_alarm(), delays=DELAYS)

    store = await drain()

    action = (await actions_by_event(store))[event_id]
    assert (action["status"], action["plan"], action["attempts"]) == ("succeeded", "bunny-2", 1)
    [request] = fake_api.upgrade_requests()
    assert request.path == f"/api/instances/{SEED_INSTANCE}/actions/upgrade"
    assert await queue_depth(vhost, topology.WORK_QUEUE) == 0


async def test_given_the_api_failing_once_then_the_retry_goes_through_a_delay_queue_and_succeeds(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.script = [503]
    [event_id] = await publish(vhost, seed_alarm(), delays=DELAYS)

    store = await drain()

    action = (await actions_by_event(store))[event_id]
    assert (action["status"], action["attempts"]) == ("succeeded", 2)
    assert len(fake_api.upgrade_requests()) == 2
    assert await parked(vhost) == []


async def test_given_a_permanent_api_error_then_the_alarm_is_parked_at_once_with_its_explanation(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.script = [400]
    body = seed_alarm()
    [event_id] = await publish(vhost, body, delays=DELAYS)

    store = await drain()

    action = (await actions_by_event(store))[event_id]
    assert (action["status"], action["reason"]) == ("failed", "permanent_error")
    [message] = await parked(vhost)
    headers = message.headers or {}
    assert headers[envelope.H_STATUS] == "permanent_error"
    assert headers[envelope.H_ATTEMPTS] == 1
    assert "400" in str(headers[envelope.H_ERROR])
    assert json.loads(message.body) == body  # the original alarm, as posted
    assert message.message_id == event_id


async def test_given_the_api_down_for_good_then_the_alarm_is_parked_after_max_attempts(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.default_status = 503
    [event_id] = await publish(vhost, seed_alarm(), delays=DELAYS)

    store = await drain()

    assert len(fake_api.upgrade_requests()) == 3
    action = (await actions_by_event(store))[event_id]
    assert (action["status"], action["reason"], action["attempts"]) == ("failed", "retries_exhausted", 3)
    [message] = await parked(vhost)
    assert (message.headers or {})[envelope.H_STATUS] == "retries_exhausted"
    assert not any(name.startswith("x-death") for name in message.headers or {})


async def test_given_a_body_that_is_not_json_then_it_is_parked_as_undecodable_and_nothing_recorded(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    await publish(vhost, b"{not json", delays=DELAYS)

    store = await drain()

    [message] = await parked(vhost)
    assert (message.headers or {})[envelope.H_STATUS] == "decode_error"
    assert message.body == b"{not json"
    assert await store.list_events() == [] and fake_api.upgrade_requests() == []


async def test_given_identical_re_sends_then_one_upgrade_and_the_rest_are_duplicates(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    body = seed_alarm()
    ids = await publish(vhost, body, body, body, delays=DELAYS)

    store = await drain(worker_prefetch=1)  # one at a time: the first decides, the others see it

    actions = await actions_by_event(store)
    outcomes = sorted(
        actions[i]["status"] if actions[i]["status"] != "skipped" else actions[i]["reason"] for i in ids
    )
    assert outcomes == ["duplicate", "duplicate", "succeeded"]
    assert len(fake_api.upgrade_requests()) == 1


async def test_given_instances_mode_then_check_messages_follow_the_upgrade_until_the_plan_shows(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    seed_instance(fake_api, "bunny-1")
    fake_api.reconfigure_seconds = 0.3
    [event_id] = await publish(vhost, seed_alarm(), delays=DELAYS)

    store = await drain(upgrade_api=UpgradeApi.INSTANCES)

    action = (await actions_by_event(store))[event_id]
    # The reason first (the confirmation keeps why), then what the check found.
    assert action["status"] == "succeeded" and action["detail"].startswith(
        "Automatic upgrade triggered by memory alarm (85%); instance is now on bunny-2; reconfigured in"
    )
    assert [r.method for r in fake_api.upgrade_requests()] == ["PUT"]
    assert len(fake_api.reads()) >= 2  # the plan read before the call, and at least one check


async def test_given_a_stale_alarm_then_it_is_recorded_and_skipped_without_a_call(
    vhost: str, drain: Drain, fake_api: CloudAmqpStandIn
) -> None:
    [event_id] = await publish(vhost, seed_alarm(triggered_at=iso(time.time() - 7200)), delays=DELAYS)

    store = await drain()

    action = (await actions_by_event(store))[event_id]
    assert (action["status"], action["reason"]) == ("skipped", "stale")
    assert fake_api.upgrade_requests() == []
