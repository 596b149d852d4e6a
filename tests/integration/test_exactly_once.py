"""Exactly one upgrade per problem, at any scale, under duplicates, redeliveries and crashes."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import SEED_INSTANCE, MakeStack
from tests.support import (
    TcpProxy,
    free_port,
    publish_raw,
    queue_depth,
    run_to_exit,
    wait_until,
)


def at(seconds_ago: float) -> str:
    when = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def memory_alarm(instance: str, value: float = 85, seconds_ago: float = 0) -> dict[str, Any]:
    return {"alarm_type": "memory", "value": value, "instance_id": instance, "triggered_at": at(seconds_ago)}


async def test_given_four_workers_and_400_alarms_for_20_instances_then_exactly_20_upgrades(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, database_url: str
) -> None:
    instances = [f"inst-{n:02d}" for n in range(20)]
    stack = make_stack(
        DATABASE_URL=database_url, CLOUDAMQP_INSTANCE_ID=",".join(instances), WORKER_PREFETCH="8"
    )
    fake_api.latency = 0.05
    await stack.start_receiver()
    await asyncio.gather(*(stack.start_worker() for _ in range(4)))
    alarms: list[dict[str, Any]] = []
    for instance in instances:
        first = memory_alarm(instance, 85, seconds_ago=30)
        alarms += [first] * 8  # identical re-sends (duplicates)
        alarms += [memory_alarm(instance, 86 + k, seconds_ago=k) for k in range(8)]  # reminders
        alarms += [
            memory_alarm(instance, 50),
            {**first, "resolved": True},
            {**first, "metadata": {"resolved": True}},
        ]
        alarms += [first]
    random.Random(7).shuffle(alarms)
    assert len(alarms) == 400
    gate = asyncio.Semaphore(32)

    async def post(body: dict[str, Any]) -> int:
        async with gate:
            return (await stack.post(body))[0]

    statuses = await asyncio.gather(*(post(a) for a in alarms))

    assert statuses.count(202) == 400
    actions = await stack.wait_actions(400, timeout=120)
    upgrades = fake_api.upgrade_requests()
    assert len(upgrades) == 20
    assert sorted(r.path.split("/")[3] for r in upgrades) == instances
    assert sum(a["status"] == "succeeded" for a in actions) == 20


async def test_given_the_same_envelope_published_twice_then_one_upgrade(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    body = f'{{"alarm_type": "memory", "value": 91, "instance_id": "{SEED_INSTANCE}"}}'.encode()

    await publish_raw(vhost, body, "same-event-id")
    await publish_raw(vhost, body, "same-event-id")
    worker = await stack.start_worker()  # both arrive at once (prefetch), racing each other

    await worker.wait_event("alarm.already_processed")
    await wait_until(lambda: _drained(vhost), what="the alarm queues to drain")
    assert len(fake_api.upgrade_requests()) == 1
    [action] = await stack.actions()
    assert action["status"] == "succeeded"
    assert not worker.events("upgrade.skipped")


async def test_given_a_worker_killed_after_upgrading_but_before_acking_then_the_redelivery_is_no_upgrade(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    stack = make_stack()
    await stack.start_receiver()
    doomed = await stack.start_worker(RABBITMQ_URL=vhost.replace(":5672/", f":{proxy.port}/"))
    fake_api.hold = asyncio.Event()
    assert (await stack.post(memory_alarm(SEED_INSTANCE)))[0] == 202
    await wait_until(lambda: fake_api.upgrade_requests(), what="the upgrade call")

    proxy.pause_upstream()  # whatever the worker sends next (its ack) never reaches the broker
    fake_api.hold.set()
    await stack.wait_actions(1)  # the store says succeeded …
    await doomed.kill()  # … and the worker dies before the broker saw an ack
    await proxy.cut()
    # Redelivered: back on the queue once the broker has seen the connection close (it
    # requeues the unacknowledged message asynchronously, so wait for it rather than race).
    await wait_until(lambda: _depth_is(vhost, 1), timeout=10, what="the unacked message back on the queue")

    survivor = await stack.start_worker()

    await survivor.wait_event("alarm.already_processed")
    await wait_until(lambda: _drained(vhost), what="the alarm queues to drain")
    assert len(fake_api.upgrade_requests()) == 1


async def _drained(url: str) -> bool:
    return await _depth_is(url, 0)


async def _depth_is(url: str, depth: int) -> bool:
    """Ready alarms in the work queue and the fast lane (where a first upgrade-worthy one goes)."""
    ready = [await queue_depth(url, name) for name in (topology.WORK_QUEUE, topology.FAST_QUEUE)]
    return sum(ready) == depth


async def test_given_a_worker_killed_during_its_api_call_then_another_finishes_after_the_lease(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    stack = make_stack(CLAIM_LEASE_SECONDS="3")
    await stack.start_receiver()
    doomed = await stack.start_worker()
    fake_api.hold = asyncio.Event()
    assert (await stack.post(memory_alarm(SEED_INSTANCE)))[0] == 202
    await wait_until(lambda: fake_api.upgrade_requests(), what="the first upgrade call")
    [in_flight] = await stack.actions()
    assert in_flight["status"] == "in_progress"

    await doomed.kill()
    held, fake_api.hold = fake_api.hold, None  # the stand-in answers from now on
    held.set()  # (the killed worker's request has no one left to answer)
    survivor = await stack.start_worker()

    deferred = await survivor.wait_event("upgrade.deferred")
    assert deferred[0]["lease_left_s"] > 0
    [action] = await stack.wait_actions(1, timeout=30)
    assert action["status"] == "succeeded"
    assert len(fake_api.upgrade_requests()) == 2  # the lost call and one repeat, no more
    await wait_until(lambda: _drained(vhost), what="the alarm queues to drain")


@pytest.mark.parametrize("module", ["receiver", "worker"])
@pytest.mark.parametrize(
    "url",
    ["oracle://db.example/x", "postgresql://postgres@127.0.0.1:1/test"],
    ids=["bad-scheme", "unreachable-host"],
)
def test_given_a_wrong_database_url_then_the_process_stops_at_start_with_one_clear_line(
    module: str, url: str, vhost: str
) -> None:
    result = run_to_exit(
        module, {"DATABASE_URL": url, "RABBITMQ_URL": vhost, "RECEIVER_PORT": str(free_port())}
    )

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] or "PostgreSQL" in lines[0]
