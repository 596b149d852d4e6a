"""Flap detection with the real processes, on both stores: a storm whose worker is killed
mid-way (what it decided comes back as redeliveries, counted never twice and told never
twice), and two workers taking several flapping keys at once. Real receiver and workers, the
real broker (a vhost per test), stand-in webhook, Slack and PagerDuty receivers."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shared import topology
from tests.integration.conftest import MakeStack, Stack
from tests.integration.test_flapping import conforms, fire, storm
from tests.support import FakeChannel, TcpProxy, queue_depth, wait_until

Json = dict[str, Any]
SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()
ROUTING_KEY = "R0UT1NGKEY-flap-processes-0123"
# What a fire/clear storm of ten makes: four incidents, the fourth re-opened and flapping.
STORM_CHANGES = ["opened", "resolved"] * 4 + ["reopened", "resolving"] + ["refired", "resolving"] * 5


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeChannel]]:
    out = {
        "webhook": FakeChannel(secret=SECRET),
        "slack": FakeChannel(),
        "pagerduty": FakeChannel(pagerduty_key=ROUTING_KEY, default_status=202),
    }
    for fake in out.values():
        await fake.start()
    yield out
    for fake in out.values():
        await fake.stop()


def notify_env(fakes: dict[str, FakeChannel]) -> dict[str, str]:
    return {
        "NOTIFY_WEBHOOK_URL": f"{fakes['webhook'].url}/hook",
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "NOTIFY_SLACK_URL": fakes["slack"].url + "/services/T0/B0/FLAPSLACK",
        "NOTIFY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "NOTIFY_PAGERDUTY_URL": fakes["pagerduty"].url,
        "NOTIFY_RETRY_DELAYS": "0.2,0.5",
        "NOTIFY_TIMEOUT": "2",
    }


async def decided(stack: Stack) -> int:
    return len(await stack.actions())


async def post_one_by_one(stack: Stack, bodies: list[Json]) -> None:
    """Each alarm once the one before it is decided (the order a storm has)."""
    for body in bodies:
        before = await decided(stack)
        status, reply = await stack.post(body)
        assert status == 202, reply

        async def taken(count: int = before + 1) -> bool:
            return await decided(stack) >= count

        await wait_until(taken, timeout=30, what="the alarm decided")


async def get(stack: Stack, path: str) -> Any:
    status, body = await stack.get(path)
    assert status == 200, body
    return body


async def changes_by_key(stack: Stack) -> dict[str, list[str]]:
    events = (await get(stack, "/events?limit=500"))["events"]
    out: dict[str, list[str]] = {}
    for event in reversed(events):
        out.setdefault(event["body"]["message"], []).append(event["change"])
    return out


async def incidents_by_key(stack: Stack) -> dict[str, list[Json]]:
    """``GET /incidents`` by key, oldest first, each as the OpenAPI document says."""
    out: dict[str, list[Json]] = {}
    for incident in reversed((await get(stack, "/incidents?limit=500"))["incidents"]):
        conforms(incident, "Incident")
        out.setdefault(incident["key"], []).append(incident)
    return out


def told(webhook: FakeChannel) -> dict[str, int]:
    """Webhook deliveries by type, each notification counted once (by ``webhook-id``)."""
    ids: dict[str, set[str]] = {}
    for delivery in webhook.accepted():
        ids.setdefault(delivery.body["type"], set()).add(delivery.webhook_id)
    return {t: len(i) for t, i in sorted(ids.items())}


@pytest.mark.early
async def test_given_a_worker_killed_mid_storm_then_its_redelivered_half_changes_nothing_nor_is_told_twice(
    make_stack: MakeStack, fakes: dict[str, FakeChannel], vhost: str, database_url: str
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    # The quiet period outlasts the worker's replacement (a clear's pending resolve must not
    # fall due before the storm's next fire); the test waits for it once, at the end.
    stack = make_stack(DATABASE_URL=database_url, FLAP_QUIET_SECONDS="30", **notify_env(fakes))
    await stack.start_receiver()
    doomed = await stack.start_worker(RABBITMQ_URL=vhost.replace(":5672/", f":{proxy.port}/"))
    bodies = storm(10)

    # From here nothing the worker sends reaches the broker: it decides and commits the first
    # half of the storm, and acknowledges none of it (nor publishes a notification).
    proxy.pause_upstream()
    await post_one_by_one(stack, bodies[:12])
    await doomed.kill()
    await proxy.cut()

    async def back_on_the_queue() -> bool:
        return await queue_depth(vhost, topology.WORK_QUEUE) == 12

    await wait_until(back_on_the_queue, timeout=15, what="the unacknowledged half back on the queue")
    survivor = await stack.start_worker()
    await survivor.wait_event("alarm.already_processed", timeout=30, count=12)
    await post_one_by_one(stack, bodies[12:])

    async def quiet_resolved() -> bool:
        *_, last = (await incidents_by_key(stack))[fire()["message"]]
        return bool(last["status"] == "resolved")

    await wait_until(
        quiet_resolved, timeout=90, interval=0.5, what="the flapping incident resolved when quiet"
    )
    await wait_until(lambda: sum(told(fakes["webhook"]).values()) >= 10, timeout=30, what="10 notifications")
    await wait_until(lambda: len(fakes["pagerduty"].accepted()) >= 10, timeout=30, what="10 pages")
    await asyncio.sleep(1.0)  # anything told twice would arrive meanwhile (retry delays are 0.2 s)

    [changes] = (await changes_by_key(stack)).values()
    assert changes == STORM_CHANGES
    [incidents] = (await incidents_by_key(stack)).values()
    assert [(i["status"], i["count"], i["flapping"]) for i in incidents] == [("resolved", 1, False)] * 3 + [
        ("resolved", 7, True)
    ]
    assert incidents[-1]["flap"]["transitions"] == 20  # no redelivered alarm counted twice
    assert told(fakes["webhook"]) == {"incident.flapping": 1, "incident.opened": 4, "incident.resolved": 5}
    pages = Counter((d.body["event_action"], d.body["dedup_key"]) for d in fakes["pagerduty"].accepted())
    assert pages == Counter(
        {
            (action, i["id"]): 2 if i is incidents[-1] else 1
            for i in incidents
            for action in ("trigger", "resolve")
        }
    )
    assert all(d.problem is None for fake in fakes.values() for d in fake.received)
    assert survivor.events("incident.resolved_quiet")


async def test_given_two_workers_and_four_keys_flapping_at_once_then_each_key_makes_one_steady_incident(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = make_stack(DATABASE_URL=database_url)  # the defaults: 4 openings an hour, 15 min quiet
    await stack.start_receiver()
    workers = [await stack.start_worker(), await stack.start_worker()]
    keys = [f"Queue depth above 10000 on q{n}" for n in range(4)]

    async def each_key(body: Json) -> None:
        """``body`` for every key at once; back when all are decided."""
        before = await decided(stack)
        replies = await asyncio.gather(*(stack.post({**body, "message": key}) for key in keys))
        assert [status for status, _ in replies] == [202] * len(keys)

        async def taken() -> bool:
            return await decided(stack) >= before + len(keys)

        await wait_until(taken, timeout=30, what="every key's alarm decided")

    for body in storm(6):
        await each_key(body)
    # Then three fires of each key at once, during its quiet period: one calls the pending
    # resolve off, the others group; whichever worker takes which.
    before = await decided(stack)
    await asyncio.gather(*(stack.post({**fire(n), "message": key}) for key in keys for n in range(3)))

    async def all_taken() -> bool:
        return await decided(stack) >= before + 3 * len(keys)

    await wait_until(all_taken, timeout=30, what="the concurrent fires decided")

    by_key = await changes_by_key(stack)
    incidents = await incidents_by_key(stack)
    for key in keys:
        *storm_changes, a, b, c = by_key[key]
        assert storm_changes == ["opened", "resolved"] * 4 + ["reopened", "resolving", "refired", "resolving"]
        assert sorted([a, b, c]) == ["grouped", "grouped", "refired"]
        *below, flapping = incidents[key]
        assert [i["status"] for i in below] == ["resolved"] * 3
        assert (flapping["status"], flapping["count"], flapping["resolves_at"]) == ("open", 6, None)
        assert flapping["flapping"] and flapping["flap"]["transitions"] == 13
    notifications = (await get(stack, "/notifications?limit=500"))["notifications"]
    assert Counter(n["type"] for n in notifications) == {
        "incident.opened": 16,
        "incident.resolved": 16,
        "incident.flapping": 4,
    }
    per_worker = [
        sum(len(w.events(f"incident.{c}")) for c in ("opened", "reopened", "refired")) for w in workers
    ]
    assert min(per_worker) > 0, per_worker  # both took part
    assert not [e for w in workers for e in w.events("alarm.processing_failed")]
