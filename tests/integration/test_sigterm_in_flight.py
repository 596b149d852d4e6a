"""A worker stopped the way Kubernetes stops a pod (SIGTERM, then SIGKILL after the grace period)
while it holds 200 deliveries: it finishes or returns them, and nothing is lost or done twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import vhost_name
from tests.integration.conftest import now_iso
from tests.support import Services, management_request, queue_depth, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# One upgrade-worthy alarm for each of 200 instances: every one of them waits for its upgrade,
# so the worker holds all 200 unacknowledged when it is stopped (alarms of one instance would
# be decided at once as skips behind the first one's claim, and leave the worker).
INSTANCES = 200


def grace_period_seconds() -> float:
    """The worker's terminationGracePeriodSeconds in the Kubernetes manifest."""
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "worker.yaml").read_text())
    return float(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


async def test_given_200_deliveries_in_flight_when_sigterm_then_none_lost_none_upgraded_twice_exit_in_grace(
    make_stack: Any, fake_api: CloudAmqpStandIn, vhost: str, services: Services
) -> None:
    instances = [fake_api.add_instance(f"inst-{n:03d}", "bunny-1") for n in range(INSTANCES)]
    # Every plan change waits: the worker is stopped with its upgrade calls under way.
    fake_api.hold = asyncio.Event()
    stack = make_stack(
        CLOUDAMQP_INSTANCE_ID=",".join(i.providerid for i in instances),
        WORKER_PREFETCH="256",  # the worker can hold all 200 at once
        # The calls are held until the worker is stopping, which on a loaded machine can take
        # longer than the client's 10 s: a call that times out is retried (a plan change asked
        # again is the same change), which this count of requests would take for a second one.
        CLOUDAMQP_API_TIMEOUT="120",
    )
    await stack.start_receiver()
    first = await stack.start_worker()

    accepted: list[str] = []
    for instance in instances:
        alarm = {
            "alarm_type": "memory",
            "value": 85,
            "instance_id": instance.providerid,
            "triggered_at": now_iso(),
        }
        status, body = await stack.post(alarm)
        assert status == 202, body
        accepted.append(body["id"])
    assert len(set(accepted)) == INSTANCES

    async def unacknowledged() -> int:
        # The broker's count (management statistics, refreshed every few seconds).
        name = vhost_name(vhost)  # already quoted in the URL
        queues = [
            await management_request(services, "GET", f"/api/queues/{name}/{quote(q, safe='')}")
            for q in (topology.WORK_QUEUE, topology.FAST_QUEUE)
        ]
        return sum(int(q.get("messages_unacknowledged", 0)) for q in queues)

    async def holding_everything() -> bool:
        held = await unacknowledged()
        return fake_api.in_flight() > 0 and held == len(accepted)

    await wait_until(
        holding_everything, timeout=30, interval=0.5, what="the worker holding all 200, an upgrade under way"
    )

    first.signal(signal.SIGTERM)
    sent = time.monotonic()
    [stopping] = await first.wait_event("worker.stopping")
    assert stopping["in_flight"] > 0, "the SIGTERM must meet deliveries in flight"
    fake_api.hold.set()  # CloudAMQP answers the calls the stopping worker still waits on
    status = await first.wait(timeout=grace_period_seconds() + 5)
    took = time.monotonic() - sent

    assert status == 0 and took < grace_period_seconds(), f"exit {status} after {took:.1f}s"
    assert first.events("worker.stopped")

    # What the stopped worker returned is taken by the next one; nothing waits for a redelivery
    # that will not come.
    await stack.start_worker()
    actions = await stack.wait_actions(INSTANCES, timeout=90)

    decided = [a["event_id"] for a in actions]
    assert sorted(decided) == sorted(accepted), "every accepted alarm decided exactly once"
    successes = fake_api.successes()
    assert len(fake_api.upgrade_requests()) == INSTANCES, "no instance asked twice"
    assert sorted(successes) == sorted(i.name for i in instances) and set(successes.values()) == {1}
    assert sum(a["status"] == "succeeded" for a in actions) == INSTANCES
    assert await queue_depth(vhost, topology.DEAD_QUEUE) == 0
