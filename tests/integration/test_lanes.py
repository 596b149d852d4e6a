"""Upgrade-worthy alarms are decided ahead of a storm of repeats: the real receiver sorts them
into the fast lane and the work queue, and a real worker takes the fast lane first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import Stack, seed_alarm
from tests.support import queue_depth

STORM = [f"lane-{i:02d}" for i in range(8)]
REMINDERS = 40  # per storm instance (all of it within one page of GET /actions)


async def test_given_a_storm_of_reminders_queued_then_a_new_upgrade_worthy_alarm_is_decided_first(
    make_stack: Callable[..., Stack], fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    stack = make_stack(CLOUDAMQP_INSTANCE_ID=",".join([*STORM, "lane-new"]), WORKER_BATCH="16")
    await stack.start_receiver()
    # The fleet's storm: each instance's first alarm, then its reminders, all queued while no
    # worker runs; then one new instance in trouble.
    for instance in STORM:
        status, _ = await stack.post(seed_alarm(instance_id=instance))
        assert status == 202
    reminders = [seed_alarm(instance_id=i, value=86 + n % 10) for n in range(REMINDERS) for i in STORM]
    for chunk in range(0, len(reminders), 50):
        statuses = await asyncio.gather(*(stack.post(body) for body in reminders[chunk : chunk + 50]))
        assert {status for status, _ in statuses} == {202}
    status, new = await stack.post(seed_alarm(instance_id="lane-new"))
    assert status == 202
    assert await queue_depth(vhost, topology.FAST_QUEUE) == len(STORM) + 1
    assert await queue_depth(vhost, topology.WORK_QUEUE) == len(reminders)

    await stack.start_worker()
    actions = await stack.wait_actions(len(STORM) + 1 + len(reminders), timeout=120)

    order = [a["event_id"] for a in sorted(actions, key=lambda a: (a["created_at"], a["event_id"]))]
    # Decided among the first batches, not after the 320 reminders queued before it.
    assert order.index(new["id"]) < 100, order.index(new["id"])
    paths = [r.path for r in fake_api.upgrade_requests()]
    assert sorted(p.split("/")[3] for p in paths) == sorted([*STORM, "lane-new"])
    assert await queue_depth(vhost, topology.WORK_QUEUE) == 0
