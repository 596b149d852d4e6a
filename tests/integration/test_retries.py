"""Durable retries: a failing CloudAMQP API is tried again through RabbitMQ's delay queues,
with the attempt count in our own header, until it answers — exactly one upgrade."""

from __future__ import annotations

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import MakeStack, seed_alarm
from tests.support import queue_depth

FLAKY_THEN_OK = [503, 502, (429, {"Retry-After": "1"}), 200]


async def test_given_503_502_429_then_200_without_quick_retries_then_four_attempts_and_one_upgrade(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.script = list(FLAKY_THEN_OK)
    stack = make_stack(QUICK_RETRIES="0")
    await stack.start_receiver()
    worker = await stack.start_worker()

    status, _ = await stack.post(seed_alarm())

    assert status == 202
    await worker.wait_event("upgrade.succeeded")
    [action] = await stack.wait_actions(1)
    assert (action["status"], action["attempts"]) == ("succeeded", 4)
    posts = [e["status"] for e in worker.events("api.response") if e["method"] == "POST"]
    assert posts == [503, 502, 429, 200]
    assert len(fake_api.upgrade_requests()) == 4
    assert [e["attempt"] for e in worker.events("upgrade.requested")] == [1, 2, 3, 4]
    scheduled = worker.events("message.retry_scheduled")
    assert [e["attempts"] for e in scheduled] == [1, 2, 3]
    # 0.2 s then 0.5 s; Retry-After: 1 asks for more than the longest delay queue, which is used.
    assert [e["delay_s"] for e in scheduled] == [0.2, 0.5, 0.5]
    assert [e["attempts"] for e in worker.events("upgrade.succeeded")] == [4]


async def test_given_503_502_429_then_200_with_quick_retries_then_one_durable_retry_and_one_upgrade(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.script = list(FLAKY_THEN_OK)
    stack = make_stack()  # QUICK_RETRIES defaults to 2: three tries per attempt
    await stack.start_receiver()
    worker = await stack.start_worker()

    status, _ = await stack.post(seed_alarm())

    assert status == 202
    await worker.wait_event("upgrade.succeeded")
    [action] = await stack.wait_actions(1)
    assert (action["status"], action["attempts"]) == ("succeeded", 2)
    assert len(fake_api.upgrade_requests()) == 4
    assert [e["attempt"] for e in worker.events("upgrade.requested")] == [1, 1, 1, 2]
    assert [e["attempts"] for e in worker.events("message.retry_scheduled")] == [1]
    posts = [e["status"] for e in worker.events("api.response") if e["method"] == "POST"]
    assert posts == [503, 502, 429, 200]


async def test_given_a_retry_in_a_delay_queue_when_the_worker_stops_then_a_new_worker_retries_it(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    fake_api.script = [503]
    # Long enough to stop the first worker while the message waits in the delay queue.
    stack = make_stack(QUICK_RETRIES="0", RETRY_DELAYS="5")
    await stack.start_receiver()
    first = await stack.start_worker()
    assert (await stack.post(seed_alarm()))[0] == 202
    await first.wait_event("message.retry_scheduled")

    assert await first.stop() == 0

    # The retry lives in the broker, not in the stopped process.
    assert await queue_depth(vhost, topology.retry_queue_name(5)) == 1
    assert len(fake_api.upgrade_requests()) == 1
    second = await stack.start_worker()
    [succeeded] = await second.wait_event("upgrade.succeeded", timeout=30)
    assert succeeded["attempts"] == 2
    [action] = await stack.wait_actions(1)
    assert (action["status"], action["attempts"]) == ("succeeded", 2)
    assert len(fake_api.upgrade_requests()) == 2
    assert first.events("upgrade.succeeded") == []
