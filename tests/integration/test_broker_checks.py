"""Looking at the broker before acting, against a real RabbitMQ management API: a private node
this module starts (own ports, data and cookie; never the machine's shared broker), whose
``vm_memory_high_watermark`` the tests set so that its real ``mem_used / mem_limit`` is above
or below the rule's threshold.

- verify before acting (in-process ``Processor``, both stores): cleared → ``condition_cleared``
  and no API call; still above → one upgrade; management port closed → one upgrade, unverified;
- the watchdog (real processes): no alarm sent → one alarm of its own, one incident, one
  upgrade; two workers → one poll per interval (counted by a proxy in front of the node);
- downgrade advice with a quiet window of seconds: one advice and no API call; an alarm during
  the window → none until a whole quiet window has passed after it;
- disk, for a ``resize_disk`` rule (the node's ``disk_free_limit`` set against its real
  ``disk_free``): plenty of headroom → ``condition_cleared`` and no resize; little → one
  verified resize; and the watchdog raising the disk alarm CloudAMQP did not send.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from shared.alarm import Alarm, event_key, new_id
from shared.policy import Policy
from shared.policy_file import parse_policy
from shared.settings import Settings
from shared.store import Store
from tests.chaos.harness import OwnBroker
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import CI
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, Stack, seed_alarm, seed_instance
from tests.support import free_port, wait_until
from worker.cloudamqp import CloudAmqpClient
from worker.management import ManagementApi
from worker.process import Processor

# Every test here shares one private node (the ``node`` fixture, started once per module and
# per process): under ``make test``'s pytest-xdist they all run in one worker (ONE_WORKER_MODULES
# in tests/conftest.py), so the node starts once; early, as they run one after another.
pytestmark = pytest.mark.early

MB = 1_000_000
HIGH_LIMIT = 100 * MB  # a node uses ~150 MB: above any threshold
LOW_LIMIT = 4000 * MB  # ~4 %: below any threshold


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    """One private node with management for the module (started once: ~5–10 s)."""
    missing = OwnBroker.available()
    if missing is not None:
        if CI:
            pytest.fail(f"a private RabbitMQ node is required under CI=true: {missing}", pytrace=False)
        pytest.skip(missing)
    broker = OwnBroker(
        tmp_path_factory.mktemp("mgmt"),
        management=True,
        # Figures refreshed twice a second, so a changed watermark shows at once.
        config="collect_statistics_interval = 500",
    )
    try:  # a start that fails half-way (a timed-out rabbitmqctl) still stops the node
        asyncio.run(_start_with_monitor(broker))
        yield broker
    finally:
        asyncio.run(broker.cleanup())


# A user tagged ``monitoring`` (the least the README asks for) with a password no log may show.
MONITOR, MONITOR_PASSWORD = "autopilot-monitor", "mgmt-Pa55word-9c1e7"


async def _start_with_monitor(broker: OwnBroker) -> None:
    await broker.start()
    await broker.ctl("add_user", MONITOR, MONITOR_PASSWORD)
    await broker.ctl("set_user_tags", MONITOR, "monitoring")


def monitor_url(port: int | None) -> str:
    return f"http://{MONITOR}:{MONITOR_PASSWORD}@127.0.0.1:{port}"


async def nodes_of(node: OwnBroker) -> list[dict[str, Any]]:
    auth = aiohttp.encode_basic_auth("guest", "guest")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{node.management_port}/api/nodes", headers={"Authorization": auth}
        ) as resp,
    ):
        return list(await resp.json()) if resp.status == 200 else []


async def set_limit(node: OwnBroker, limit: int) -> float:
    """Set the node's memory limit and wait until its management API reports it; the
    resulting ``mem_used / mem_limit`` in percent."""
    await node.ctl("set_vm_memory_high_watermark", "absolute", str(limit))
    seen: dict[str, Any] = {}

    async def shows() -> bool:
        for n in await nodes_of(node):
            if n.get("mem_limit") == limit and n.get("mem_used"):
                seen.update(n)
                return True
        return False

    await wait_until(shows, timeout=30, interval=0.2, what=f"mem_limit {limit} in /api/nodes")
    return 100.0 * float(seen["mem_used"]) / float(seen["mem_limit"])


def alarm(**changes: Any) -> Alarm:
    body = seed_alarm(**changes)
    return Alarm(new_id(), time.time(), body, event_key(body))


@pytest.fixture
async def processor(database_url: str, fake_api: CloudAmqpStandIn, node: OwnBroker) -> AsyncIterator[Any]:
    """Make a ``Processor`` whose instance's management API is ``management_url``."""
    stores: list[Store] = []
    async with aiohttp.ClientSession() as session:

        async def make(management_url: str, policy: Policy | None = None) -> tuple[Processor, Store]:
            settings = Settings(
                database_url=database_url,
                cloudamqp_api_url=fake_api.url,
                cloudamqp_api_key=API_KEY,
                instance_ids=(SEED_INSTANCE,),
                instance_management=((SEED_INSTANCE, management_url),),
                management_timeout_seconds=2.0,
            )
            store = await Store.open(database_url)
            stores.append(store)
            client = CloudAmqpClient(
                session, base_url=fake_api.url, api_key=API_KEY, timeout=2.0, quick_retries=0
            )
            api = ManagementApi(session, dict(settings.instance_management), timeout=2.0)
            processor = Processor(settings, store, client, worker_id="t", management=api, policy=policy)
            return processor, store

        yield make
        for store in stores:
            await store.close()


async def action_of(store: Store, event_id: str) -> dict[str, Any]:
    row = await store.get_action(event_id)
    assert row is not None
    return row


async def test_given_the_nodes_below_the_threshold_when_a_memory_alarm_comes_then_it_is_skipped_as_cleared(
    processor: Any, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    percent = await set_limit(node, LOW_LIMIT)
    assert percent < 80
    proc, store = await processor(monitor_url(node.management_port))
    given = alarm(value=85)

    await proc.process(given)

    action = await action_of(store, given.event_id)
    assert (action["status"], action["reason"]) == ("skipped", "condition_cleared")
    assert fake_api.upgrade_requests() == []
    verification = json.loads(action["verification"])
    assert verification["status"] == "cleared"
    assert verification["nodes"][0]["node"] == node.node
    assert verification["nodes"][0]["mem_limit"] == LOW_LIMIT
    assert verification["value"] == pytest.approx(percent, abs=5)
    assert MONITOR_PASSWORD not in action["verification"] + (action["detail"] or "")
    # Not a decision that stands: the same alarm again is checked afresh, not a duplicate.
    again = Alarm(new_id(), time.time(), given.body, given.event_key)
    await set_limit(node, HIGH_LIMIT)
    await proc.process(again)
    assert (await action_of(store, again.event_id))["status"] == "succeeded"


async def test_given_the_nodes_above_the_threshold_when_a_memory_alarm_comes_then_one_upgrade_is_verified(
    processor: Any, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    assert await set_limit(node, HIGH_LIMIT) > 80
    proc, store = await processor(monitor_url(node.management_port))
    given = alarm(value=85)

    await proc.process(given)

    action = await action_of(store, given.event_id)
    assert action["status"] == "succeeded"
    assert len(fake_api.upgrade_requests()) == 1
    assert '"status": "verified"' in action["verification"]


async def test_given_the_management_port_closed_when_a_memory_alarm_comes_then_it_upgrades_unverified(
    processor: Any, fake_api: CloudAmqpStandIn
) -> None:
    closed = monitor_url(free_port())
    proc, store = await processor(closed)
    given = alarm(value=85)

    await proc.process(given)

    action = await action_of(store, given.event_id)
    assert action["status"] == "succeeded"
    assert len(fake_api.upgrade_requests()) == 1
    assert '"status": "unverified"' in action["verification"]
    assert "unverified" in action["detail"]
    assert MONITOR_PASSWORD not in action["verification"] + action["detail"]


# --- the watchdog and the advice, as real processes ----------------------------------------


class CountingProxy:
    """A loopback HTTP proxy in front of the node's management API that counts the reads."""

    def __init__(self, target_port: int):
        self.target = f"http://127.0.0.1:{target_port}"
        self.times: list[float] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return monitor_url(self.port)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.Response:
        if request.path == "/api/nodes":
            self.times.append(time.monotonic())
        assert self._session is not None
        headers = {"Authorization": request.headers.get("Authorization", "")}
        async with self._session.get(self.target + request.path_qs, headers=headers) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


async def counting(node: OwnBroker) -> CountingProxy:
    assert node.management_port is not None
    proxy = CountingProxy(node.management_port)
    await proxy.start()
    return proxy


def watchdog_env(management_url: str, **more: str) -> dict[str, str]:
    return {"CLOUDAMQP_INSTANCE_MANAGEMENT_URL": management_url, "WATCHDOG_INTERVAL_SECONDS": "0.3", **more}


async def test_given_memory_above_the_rule_and_no_alarm_then_the_watchdog_raises_one_that_upgrades_once(
    make_stack: MakeStack, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    assert await set_limit(node, HIGH_LIMIT) > 80
    proxy = await counting(node)
    stack: Stack = make_stack(**watchdog_env(proxy.url, WATCHDOG_TIME_THRESHOLD_SECONDS="1"))
    await stack.start_receiver()
    worker = await stack.start_worker()

    await wait_until(lambda: len(fake_api.upgrade_requests()) >= 1, timeout=30, what="the watchdog's upgrade")
    # Five more polls while the condition still holds: the cooldown keeps them quiet.
    seen = len(proxy.times)
    await wait_until(lambda: len(proxy.times) >= seen + 5, timeout=30, what="five more polls")
    await proxy.stop()

    assert len(fake_api.upgrade_requests()) == 1
    assert len(worker.events("watchdog.alarm_raised")) == 1
    for proc in stack.procs:  # the management password is in no process's log
        assert MONITOR_PASSWORD not in proc.log_path.read_text()
    _, events = await stack.get("/events")
    ours = [e for e in events["events"] if e["id"].startswith("watchdog-")]
    assert len(ours) == 1 and ours[0]["body"]["source"] == "watchdog"
    _, incidents = await stack.get("/incidents")
    assert [(i["alarm_type"], i["count"]) for i in incidents["incidents"]] == [("memory", 1)]
    _, actions = await stack.get("/actions")
    assert [(a["status"], a["verification"]["status"]) for a in actions["actions"]] == [
        ("succeeded", "verified")
    ]


async def test_given_two_workers_then_the_watchdog_polls_once_per_interval(
    make_stack: MakeStack, node: OwnBroker
) -> None:
    await set_limit(node, LOW_LIMIT)  # nothing to raise: only the polls reach the node
    proxy = await counting(node)
    try:
        interval = 0.5
        stack: Stack = make_stack(**watchdog_env(proxy.url, WATCHDOG_INTERVAL_SECONDS=str(interval)))
        await stack.start_worker()
        await stack.start_worker()
        start = len(proxy.times)
        await wait_until(lambda: len(proxy.times) >= start + 8, timeout=30, what="eight polls")
    finally:
        await proxy.stop()

    gaps = [b - a for a, b in zip(proxy.times[start:], proxy.times[start + 1 :], strict=False)]
    # Two pollers of their own would poll twice per interval (gaps near 0 or interval / 2, a
    # mean near interval / 2). The mean, not each gap: the slots are an interval apart, but a
    # poll's request reaches the node some time after its slot was taken, and a poll that was
    # late on a starved machine makes the gap after it short by as much as the one before it
    # was long (seen: 0.74 s, then 0.25 s, at 0.5 s).
    assert sum(gaps) / len(gaps) >= 0.8 * interval, gaps
    assert sum(gaps) / len(gaps) < 2 * interval, gaps


ADVICE_ENV = {
    "UPGRADE_PLAN": "hare-1",  # on the ladder: the plan below is bunny-1
    "WATCHDOG_TIME_THRESHOLD_SECONDS": "3600",  # the watchdog only samples here
    "NOTIFY_WEBHOOK_URL": "",
}


async def upgraded_then_quiet(stack: Stack, node: OwnBroker, fake_api: CloudAmqpStandIn) -> float:
    """Our upgrade of the instance (verified), then the node far below its new limit."""
    assert await set_limit(node, HIGH_LIMIT) > 80
    status, _ = await stack.post(seed_alarm(value=85))
    assert status == 202
    await wait_until(lambda: len(fake_api.upgrade_requests()) == 1, timeout=30, what="our upgrade")
    upgraded = time.monotonic()
    await set_limit(node, LOW_LIMIT)
    return upgraded


async def advice(stack: Stack) -> list[dict[str, Any]]:
    _, body = await stack.get("/advice")
    return list(body["advice"])


async def test_given_an_instance_we_upgraded_stays_small_for_the_quiet_window_then_one_advice_and_no_call(
    make_stack: MakeStack, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    stack: Stack = make_stack(
        **watchdog_env(monitor_url(node.management_port), ADVICE_QUIET_WINDOW_SECONDS="3", **ADVICE_ENV)
    )
    await stack.start_receiver()
    worker = await stack.start_worker()
    await upgraded_then_quiet(stack, node, fake_api)

    found: list[dict[str, Any]] = []

    async def advised() -> bool:
        found[:] = await advice(stack)
        return bool(found)

    await wait_until(advised, timeout=30, what="downgrade advice")
    # More polls after it: the same upgrade never advises twice.
    await worker.wait_event("advice.downgrade")
    seen = len(await _samples(stack))
    await wait_until(lambda: _more(stack, seen), timeout=30, what="more samples")

    assert len(await advice(stack)) == 1
    (only,) = found
    assert (only["instance_id"], only["from_plan"], only["to_plan"]) == (SEED_INSTANCE, "hare-1", "bunny-1")
    assert only["evidence"]["peak_mem_used"] < only["evidence"]["lower_plan_mem_limit_assumed"] * 0.5
    assert only["evidence"]["quiet_seconds"] >= 3
    assert len(fake_api.upgrade_requests()) == 1  # the upgrade; nothing for the advice
    _, notes = await stack.get("/notifications")
    assert [n["type"] for n in notes["notifications"]].count("advice.downgrade") == 1
    _, usage = await stack.get(f"/instances/{SEED_INSTANCE}/usage")
    assert usage["nodes"][node.node][-1]["mem_limit"] == LOW_LIMIT


async def _samples(stack: Stack) -> list[dict[str, Any]]:
    _, usage = await stack.get(f"/instances/{SEED_INSTANCE}/usage")
    return [s for samples in usage["nodes"].values() for s in samples]


async def _more(stack: Stack, seen: int) -> bool:
    return len(await _samples(stack)) >= seen + 3


async def test_given_an_alarm_during_the_quiet_window_then_no_advice_until_a_whole_window_after_it(
    make_stack: MakeStack, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    window = 5.0
    stack: Stack = make_stack(
        **watchdog_env(
            monitor_url(node.management_port), ADVICE_QUIET_WINDOW_SECONDS=str(window), **ADVICE_ENV
        )
    )
    await stack.start_receiver()
    await stack.start_worker()
    assert await set_limit(node, HIGH_LIMIT) > 80
    status, _ = await stack.post(seed_alarm(value=85))
    assert status == 202
    assert [a["status"] for a in await stack.wait_actions(1, timeout=30)] == ["succeeded"]
    # The quiet window starts at the first poll that sees the upgrade: three polls after it
    # succeeded, one has (polls run one after another). The node is still near its old limit,
    # so nothing can be advised yet, however long anything below takes.
    seen = len(await _samples(stack))
    await wait_until(lambda: _more(stack, seen), timeout=30, what="polls after the upgrade")

    before_alarm = time.time()
    status, body = await stack.post(seed_alarm(value=40))  # below the rule: recorded, not acted on
    assert status == 202

    async def recorded() -> bool:
        _, events = await stack.get("/events")
        return any(e["id"] == body["id"] for e in events["events"])

    await wait_until(recorded, timeout=30, what="the alarm recorded")
    await set_limit(node, LOW_LIMIT)  # now far below: advice may come once the window allows

    found: list[dict[str, Any]] = []

    async def advised() -> bool:
        found[:] = await advice(stack)
        return bool(found)

    await wait_until(advised, timeout=30, what="advice after a full quiet window")
    assert time.time() - before_alarm >= window
    (only,) = found
    # The window the upgrade started was broken by the alarm: the advice's window began after
    # it, and lasted a whole window.
    assert only["evidence"]["quiet_since"] >= before_alarm
    assert only["evidence"]["quiet_seconds"] >= window
    assert len(fake_api.upgrade_requests()) == 1


# --- disk: a resize_disk rule, verified against the node's own headroom -------------------------

RESIZE = {"rules": [{"name": "disk-grow", "alarm_type": "disk", "action": "resize_disk"}]}
RESIZE_TOML = '[[rules]]\nname = "disk-grow"\nalarm_type = "disk"\naction = "resize_disk"\n'
DEFAULT_DISK_LIMIT = 50 * MB  # RabbitMQ's default disk_free_limit


async def set_disk_limit(node: OwnBroker, ratio: float | None) -> dict[str, Any]:
    """Set the node's ``disk_free_limit`` so that its real ``disk_free`` is ``ratio`` times it
    (None: RabbitMQ's default, far below any disk's free space); the node's figures once its
    management API reports the limit."""

    async def reported() -> int:
        return next((int(n["disk_free"]) for n in await nodes_of(node) if n.get("disk_free")), 0)

    free = await wait_until(reported, timeout=30, interval=0.2, what="disk_free in /api/nodes")
    limit = DEFAULT_DISK_LIMIT if ratio is None else int(free / ratio)
    await node.ctl("set_disk_free_limit", str(limit))
    seen: dict[str, Any] = {}

    async def shows() -> bool:
        for n in await nodes_of(node):
            if n.get("disk_free_limit") == limit and n.get("disk_free"):
                seen.update(n)
                return True
        return False

    await wait_until(shows, timeout=30, interval=0.2, what=f"disk_free_limit {limit} in /api/nodes")
    return seen


def disk_alarm(value: float = 95) -> Alarm:
    return alarm(alarm_type="disk", value=value)


async def test_given_plenty_of_free_disk_when_a_disk_alarm_comes_then_it_is_cleared_and_nothing_is_resized(
    processor: Any, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    seed_instance(fake_api, "bunny-1")
    figures = await set_disk_limit(node, None)
    assert figures["disk_free"] > 2 * figures["disk_free_limit"]  # DISK_FREE_MARGIN is 2
    proc, store = await processor(monitor_url(node.management_port), parse_policy(RESIZE))
    await proc.resolve_instances(force=True)
    given = disk_alarm()

    await proc.process(given)

    action = await action_of(store, given.event_id)
    assert (action["status"], action["reason"], action["kind"]) == (
        "skipped",
        "condition_cleared",
        "resize_disk",
    )
    assert fake_api.disk_requests() == []
    verification = json.loads(action["verification"])
    assert verification["status"] == "cleared" and verification["value"] > 2
    assert verification["nodes"][0]["disk_free_limit"] == DEFAULT_DISK_LIMIT
    assert "lowest disk headroom" in action["detail"]


async def test_given_little_free_disk_when_a_disk_alarm_comes_then_one_verified_resize(
    processor: Any, node: OwnBroker, fake_api: CloudAmqpStandIn
) -> None:
    seed = seed_instance(fake_api, "bunny-1")
    try:
        await set_disk_limit(node, 1.5)  # free is 1.5 times the limit: at most DISK_FREE_MARGIN (2)
        proc, store = await processor(monitor_url(node.management_port), parse_policy(RESIZE))
        await proc.resolve_instances(force=True)
        given = disk_alarm()

        await proc.process(given)
    finally:
        await set_disk_limit(node, None)

    action = await action_of(store, given.event_id)
    assert (action["status"], action["reason"], action["extra_disk_to"]) == (
        "in_progress",
        "reconfiguring",
        25,
    )
    assert json.loads(action["verification"])["status"] == "verified"
    [put] = fake_api.disk_requests()
    assert put.body == {"extra_disk_size": 25, "allow_downtime": False} and seed.extra_disk == 25


async def test_given_little_free_disk_and_no_alarm_then_the_watchdog_raises_a_disk_alarm_that_resizes_once(
    make_stack: MakeStack, node: OwnBroker, fake_api: CloudAmqpStandIn, tmp_path: Any
) -> None:
    seed = seed_instance(fake_api, "bunny-1")
    policy = tmp_path / "policy.toml"
    policy.write_text(RESIZE_TOML)
    proxy = await counting(node)
    try:
        await set_disk_limit(node, 1.5)
        stack: Stack = make_stack(
            POLICY_FILE=str(policy), **watchdog_env(proxy.url, WATCHDOG_TIME_THRESHOLD_SECONDS="1")
        )
        await stack.start_receiver()
        worker = await stack.start_worker()
        await wait_until(lambda: fake_api.disk_requests(), timeout=30, what="the watchdog's resize")
        seen = len(proxy.times)
        # More polls while the headroom stays low: the six hours between resizes keep them quiet.
        await wait_until(lambda: len(proxy.times) >= seen + 5, timeout=30, what="five more polls")
    finally:
        await proxy.stop()
        await set_disk_limit(node, None)

    [put] = fake_api.disk_requests()
    assert put.body == {"extra_disk_size": 25, "allow_downtime": False} and seed.extra_disk == 25
    [raised] = worker.events("watchdog.alarm_raised")
    assert raised["alarm_type"] == "disk" and raised["rule"] == "disk-grow"
    _, incidents = await stack.get("/incidents")
    assert [(i["alarm_type"], i["count"]) for i in incidents["incidents"]] == [("disk", 1)]
    actions = await stack.wait_actions(1, timeout=30)
    assert [(a["kind"], a["status"], a["verification"]["status"]) for a in actions] == [
        ("resize_disk", "succeeded", "verified")
    ]
