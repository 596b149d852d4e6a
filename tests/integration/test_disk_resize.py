"""Disk alarms get disk: a ``resize_disk`` rule asks CloudAMQP for more extra disk
(``PUT /api/instances/{id}/disk``, the stand-in with node sizes), through the plan change's
machinery — the claim, the follow-up until the nodes are configured again, the busy wait, the
refusals, exactly once across workers — and within CloudAMQP's limits: the next size, the
rule's ceiling, shared plans, and one resize per ``DISK_RESIZE_INTERVAL_SECONDS`` (six hours)
of the last one made or seen. Real receiver and workers (or the ``Processor`` in-process, with
a clock of its own), real RabbitMQ, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.alarm import Alarm, event_key, iso, new_id
from shared.envelope import Check
from shared.policy_file import load_policy
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn, Instance
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, Stack, now_iso, seed_instance
from tests.integration.test_cloudamqp_api import parked_messages
from tests.support import wait_until
from worker.cloudamqp import CloudAmqpClient
from worker.outcomes import Ack, Follow, Outcome
from worker.process import Processor

BASIC = "Basic " + base64.b64encode(f":{API_KEY}".encode()).decode()
OPERATOR_TOKEN = "operator-token-disk-5e2b7c"
HOUR = 3600.0


def policy_file(tmp_path: Path, **keys: Any) -> str:
    """A policy of one ``resize_disk`` rule for disk alarms, with ``keys`` (TOML values)."""
    lines = ["[[rules]]", 'name = "disk-grow"', 'alarm_type = "disk"', 'action = "resize_disk"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    path = tmp_path / f"policy-{new_id()[:8]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def disk_alarm(instance: str, value: float = 92, **more: Any) -> dict[str, Any]:
    return {"alarm_type": "disk", "value": value, "instance_id": instance, "triggered_at": now_iso(), **more}


def account(api: CloudAmqpStandIn, name: str, extra_disk: int, plan: str = "bunny-1") -> Instance:
    instance = api.add_instance(name, plan)
    instance.extra_disk = extra_disk
    return instance


async def decided(stack: Stack, count: int, finals: frozenset[str]) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]]:
        rows = await stack.actions()
        return rows if len(rows) == count and all(r["status"] in finals for r in rows) else []

    return await wait_until(enough, timeout=40, what=f"{count} actions in {sorted(finals)}")


async def test_given_disk_alarms_then_0_grows_to_25_and_25_to_50_once_configured_and_the_ceiling_asks_nothing(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    fake_api.reconfigure_seconds = 2.0
    small, medium, full = (
        account(fake_api, "small", 0),
        account(fake_api, "medium", 25),
        account(fake_api, "full", 50),
    )
    policy = policy_file(tmp_path, extra_disk="next", max_extra_disk=50, cooldown_seconds=0)
    stack = make_stack(CLOUDAMQP_INSTANCE_ID="small,medium,full", POLICY_FILE=policy)
    await stack.start_receiver()
    worker = await stack.start_worker()
    # The rule's cooldown is shorter than CloudAMQP's six hours between resizes: said at start.
    [said] = worker.events("policy.resize_cooldown_raised")
    assert "cooldown_seconds 0 is shorter than DISK_RESIZE_INTERVAL_SECONDS=21600" in said["detail"]

    for name in ("small", "medium", "full"):
        assert (await stack.post(disk_alarm(name)))[0] == 202

    # Each resize in progress while CloudAMQP reconfigures its nodes (two seconds here), as
    # the actions show it whenever it is read: not one read right after the log line saying
    # it was accepted, which comes just before the row says so — and by which time, on a busy
    # machine, the other resize may be over.
    seen: dict[str, set[tuple[str, str | None, int | None]]] = {}

    async def both_reconfiguring() -> bool:
        for a in await stack.actions():
            seen.setdefault(a["instance"], set()).add((a["status"], a["reason"], a["extra_disk_to"]))
        wanted = (("small", 25), ("medium", 50))
        return all(("in_progress", "reconfiguring", size) in seen.get(name, set()) for name, size in wanted)

    await wait_until(both_reconfiguring, timeout=30, interval=0.05, what="both resizes reconfiguring")
    actions = await decided(stack, 3, frozenset({"succeeded", "skipped"}))

    resizes = fake_api.disk_requests()
    assert sorted((r.path, json.dumps(r.body, sort_keys=True)) for r in resizes) == [
        (f"/api/instances/{small.id}/disk", '{"allow_downtime": false, "extra_disk_size": 25}'),
        (f"/api/instances/{medium.id}/disk", '{"allow_downtime": false, "extra_disk_size": 50}'),
    ]
    assert all(r.headers["Authorization"] == BASIC and r.status == 200 for r in resizes)
    assert fake_api.upgrade_requests() == []  # no plan change: the disk
    assert (small.extra_disk, medium.extra_disk, full.extra_disk) == (25, 50, 50)
    by = {a["instance"]: a for a in actions}
    for instance, before, after in ((small, 0, 25), (medium, 25, 50)):
        action = by[instance.name]
        assert (action["status"], action["kind"], action["plan"]) == ("succeeded", "resize_disk", None)
        assert (action["extra_disk_from"], action["extra_disk_to"], action["from_plan"]) == (
            before,
            after,
            "bunny-1",
        )
        # Succeeded only once every node was configured again with the new size.
        assert instance.ready_at is not None and _at(action["updated_at"]) >= instance.ready_at
        assert action["reconfigure_seconds"] >= 1.9
        assert f"every node now has {after} GB of extra disk" in action["detail"]
        assert action["detail"].startswith("Automatic disk resize triggered by disk alarm (92%)")
    assert any(e.get("configured") is False for e in worker.events("upgrade.waiting"))
    ceiling = by["full"]
    assert (ceiling["status"], ceiling["reason"], ceiling["kind"]) == ("skipped", "at_ceiling", "resize_disk")
    assert "at max_extra_disk 50 GB" in ceiling["detail"]

    _, audit = await stack.get("/audit")
    made = {e["target"]: e["detail"] for e in audit["audit"] if e["act"] == "resize_disk"}
    assert {i: (d["extra_disk_from"], d["extra_disk_to"], d["allow_downtime"]) for i, d in made.items()} == {
        "small": (0, 25, False),
        "medium": (25, 50, False),
    }
    assert made["small"]["cause"]["alarm_type"] == "disk" and made["small"]["rule"] == "disk-grow"
    confirmed = [e for e in audit["audit"] if e["act"] == "resize_disk.confirmed"]
    assert sorted(e["detail"]["extra_disk"] for e in confirmed) == [25, 50]
    _, notes = await stack.get("/notifications")
    succeeded = [n["data"]["action"] for n in notes["notifications"] if n["type"] == "action.succeeded"]
    assert sorted((a["instance_id"], a["extra_disk_from"], a["extra_disk_to"]) for a in succeeded) == [
        ("medium", 25, 50),
        ("small", 0, 25),
    ]
    assert all(a["kind"] == "resize_disk" for a in succeeded)


def _at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).timestamp()


async def test_given_a_busy_instance_and_then_a_refused_size_then_the_plan_changes_wait_and_refusals_apply(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path, vhost: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    account(fake_api, "other", 0)
    fake_api.script = [423, 423]  # Locked twice: busy, no attempt spent
    policy = policy_file(tmp_path)
    stack = make_stack(POLICY_FILE=policy, MAX_ATTEMPTS="1", CLOUDAMQP_INSTANCE_ID=f"{SEED_INSTANCE},other")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(disk_alarm(SEED_INSTANCE)))[0] == 202
    [done] = await decided(stack, 1, frozenset({"succeeded"}))
    assert [r.status for r in fake_api.disk_requests()] == [423, 423, 200]
    assert done["attempts"] == 1 and len(worker.events("upgrade.busy")) == 2

    invalid = {"error": "Invalid disk size", "error_code": 40007}
    fake_api.script = [(400, {}, invalid)]
    assert (await stack.post(disk_alarm("other")))[0] == 202
    rows = await decided(stack, 2, frozenset({"succeeded", "failed"}))
    [failed] = [r for r in rows if r["instance"] == "other"]
    assert (
        failed["status"] == "failed"
        and "Invalid disk size" in failed["detail"]
        and "40007" in failed["detail"]
    )
    [parked] = await parked_messages(vhost)
    assert "Invalid disk size" in str(parked.headers["x-autopilot-error"])
    assert len(fake_api.disk_requests()) == 4


async def test_given_a_rule_that_allows_downtime_then_a_person_approves_and_the_resize_says_so(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    seed = seed_instance(fake_api, "hare-1")
    policy = policy_file(tmp_path, extra_disk=100, approve=True, allow_downtime=True)
    stack = make_stack(POLICY_FILE=policy, OPERATOR_TOKEN=OPERATOR_TOKEN)
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(disk_alarm(SEED_INSTANCE)))[0] == 202
    [waiting] = await decided(stack, 1, frozenset({"awaiting_approval"}))
    assert (waiting["kind"], waiting["extra_disk_to"], waiting["plan"]) == ("resize_disk", 100, None)
    assert fake_api.disk_requests() == []
    session = await stack.session()
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator": "alice"}
    async with session.post(f"{stack.base}/actions/{waiting['id']}/approve", headers=headers) as resp:
        assert resp.status == 200, await resp.text()

    [done] = await decided(stack, 1, frozenset({"succeeded"}))
    [put] = fake_api.disk_requests()
    assert put.body == {"extra_disk_size": 100, "allow_downtime": True}
    assert (done["extra_disk_from"], done["extra_disk_to"], seed.extra_disk) == (0, 100, 100)
    _, audit = await stack.get("/audit")
    [entry] = [e for e in audit["audit"] if e["act"] == "resize_disk"]
    assert entry["actor"] == "alice" and entry["detail"]["approved_by"] == "alice"


async def test_given_two_workers_and_ten_identical_disk_alarms_then_one_resize(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path, database_url: str
) -> None:
    seed = seed_instance(fake_api, "bunny-1")
    fake_api.latency = 0.05
    stack = make_stack(DATABASE_URL=database_url, POLICY_FILE=policy_file(tmp_path, cooldown_seconds=0))
    await stack.start_receiver()
    await asyncio.gather(stack.start_worker(), stack.start_worker())
    alarm = disk_alarm(SEED_INSTANCE, 95)

    statuses = await asyncio.gather(*(stack.post(alarm) for _ in range(10)))

    assert [s for s, _ in statuses] == [202] * 10
    actions = await decided(stack, 10, frozenset({"succeeded", "skipped"}))
    [put] = fake_api.disk_requests()
    assert put.body == {"extra_disk_size": 25, "allow_downtime": False} and seed.extra_disk == 25
    assert sum(a["status"] == "succeeded" for a in actions) == 1
    # The others: identical to one decided, or met the resize under way or its six hours.
    skips = {a["reason"] for a in actions if a["status"] == "skipped"}
    assert skips <= {"duplicate", "reconfiguring", "resize_interval"}, skips


# --- in-process, with a clock of the test's own: hours pass in a moment -------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


Run = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
async def resizer(
    database_url: str, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> AsyncIterator[tuple[Processor, Store, Clock, Run]]:
    """A ``Processor`` with a ``resize_disk`` rule whose cooldown (ten minutes) is shorter than
    CloudAMQP's six hours, on a clock the stand-in shares; ``run(alarm)`` carries an alarm
    through to its end (its follow-up included) and returns its action."""
    clock = Clock()
    fake_api.clock = clock
    policy = load_policy(policy_file(tmp_path, max_extra_disk=500, cooldown_seconds=600))
    settings = Settings(
        database_url=database_url,
        cloudamqp_api_url=fake_api.url,
        cloudamqp_api_key=API_KEY,
        instance_ids=(SEED_INSTANCE,),
        quick_retries=0,
    )
    store = await Store.open(database_url)
    async with aiohttp.ClientSession() as session:
        client = CloudAmqpClient.from_settings(session, settings, API_KEY)
        processor = Processor(settings, store, client, worker_id="t", policy=policy, clock=clock)
        resolved: list[bool] = []

        async def run(value: float = 92) -> dict[str, Any]:
            if not resolved:  # the test has put its instances in the account by now
                await processor.resolve_instances(force=True)
                resolved.append(True)
            body = {"alarm_type": "disk", "value": value, "instance_id": SEED_INSTANCE,
                    "triggered_at": iso(clock())}  # fmt: skip
            alarm = Alarm(new_id(), clock(), body, event_key(body))
            outcome: Outcome = await processor.process(alarm)
            while isinstance(outcome, Follow):
                outcome = await processor.follow_up(outcome.check)
            assert isinstance(outcome, Ack), outcome
            action = await store.get_action(alarm.event_id)
            assert action is not None
            return action

        try:
            yield processor, store, clock, run
        finally:
            await store.close()


async def test_given_a_resize_then_a_second_disk_alarm_one_hour_later_is_not_asked_and_names_the_six_hours(
    resizer: tuple[Processor, Store, Clock, Run], fake_api: CloudAmqpStandIn
) -> None:
    _, _, clock, run = resizer
    seed = seed_instance(fake_api, "bunny-1")

    first = await run()
    clock.now += HOUR  # past the rule's own cooldown (ten minutes), within CloudAMQP's six hours
    second = await run(value=96)

    assert (first["status"], first["extra_disk_to"], seed.extra_disk) == ("succeeded", 25, 25)
    assert (second["status"], second["reason"]) == ("skipped", "resize_interval")
    assert "once every 6 h (DISK_RESIZE_INTERVAL_SECONDS=21600)" in second["detail"]
    assert "started 1 h ago" in second["detail"] and "next resize in 5 h" in second["detail"]
    assert len(fake_api.disk_requests()) == 1
    clock.now += 5 * HOUR  # six hours after the first: the next size
    third = await run()
    assert (third["status"], third["extra_disk_from"], third["extra_disk_to"]) == ("succeeded", 25, 50)
    assert [r.body["extra_disk_size"] for r in fake_api.disk_requests()] == [25, 50]


async def test_given_a_resize_made_outside_the_autopilot_then_the_six_hours_count_from_when_it_was_seen(
    resizer: tuple[Processor, Store, Clock, Run], fake_api: CloudAmqpStandIn
) -> None:
    processor, store, clock, run = resizer
    seed = seed_instance(fake_api, "bunny-1")
    await run()  # 0 → 25 GB, the autopilot's
    clock.now += 7 * HOUR
    seed.extra_disk = 100  # a person resized it in CloudAMQP's console meanwhile

    seen = await run()
    clock.now += 5 * HOUR
    still = await run()
    clock.now += HOUR + 1
    grown = await run()

    assert (seen["status"], seen["reason"]) == ("skipped", "resize_interval")
    assert "changed from 25 GB to 100 GB outside the autopilot" in seen["detail"]
    assert (still["status"], still["reason"]) == ("skipped", "resize_interval")
    assert (grown["status"], grown["extra_disk_from"], grown["extra_disk_to"]) == ("succeeded", 100, 250)
    assert [r.body["extra_disk_size"] for r in fake_api.disk_requests()] == [25, 250]
    known = await store.disk_known(SEED_INSTANCE)
    assert known is not None and known.extra_disk == 250


async def test_given_a_shared_plan_then_its_disk_alarm_is_not_supported_and_nothing_is_asked(
    resizer: tuple[Processor, Store, Clock, Run], fake_api: CloudAmqpStandIn
) -> None:
    _, _, _, run = resizer
    seed_instance(fake_api, "lemur")

    action = await run()

    assert (action["status"], action["reason"]) == ("skipped", "not_supported")
    assert "lemur is a shared plan" in action["detail"]
    assert fake_api.disk_requests() == []


async def test_given_a_resize_under_way_when_its_alarm_is_redelivered_then_its_check_is_sent_again(
    resizer: tuple[Processor, Store, Clock, Run], fake_api: CloudAmqpStandIn
) -> None:
    processor, store, clock, _ = resizer
    fake_api.reconfigure_seconds = 3600  # CloudAMQP still resizing
    seed_instance(fake_api, "bunny-1")
    await processor.resolve_instances(force=True)
    body = {"alarm_type": "disk", "value": 92, "instance_id": SEED_INSTANCE, "triggered_at": iso(clock())}
    alarm = Alarm(new_id(), clock(), body, event_key(body))

    first = await processor.process(alarm)
    again = await processor.process(alarm)  # the broker redelivers it (the ack was lost)
    later = {"alarm_type": "disk", "value": 97, "instance_id": SEED_INSTANCE, "triggered_at": iso(clock())}
    other = Alarm(new_id(), clock(), later, event_key(later))
    await processor.process(other)

    assert isinstance(first, Follow) and isinstance(first.check, Check)
    assert first.check.extra_disk == 25 and first.check.accepted_at is not None
    assert isinstance(again, Follow) and isinstance(again.check, Check)
    assert again.check.extra_disk == 25 and again.check.accepted_at is None
    assert len(fake_api.disk_requests()) == 1
    # No other change of the instance starts while CloudAMQP resizes its disk.
    skipped = await store.get_action(other.event_id)
    assert skipped is not None and (skipped["status"], skipped["reason"]) == ("skipped", "reconfiguring")
    assert "extra disk 25 GB" in skipped["detail"]


async def test_given_a_resize_made_but_its_answer_lost_then_it_is_followed_not_asked_again(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    # CloudAMQP starts the resize 0 → 25 GB and its answer never arrives. Asked again it would
    # refuse (one resize in six hours), and ``next`` worked out afresh would ask for 50: the
    # worker reads the nodes instead, waits for them, and finds its 25 GB made.
    fake_api.reconfigure_seconds = 2.0
    fake_api.script = ["lost"]
    small = account(fake_api, "small", 0)
    policy = policy_file(tmp_path, extra_disk="next", cooldown_seconds=0)
    stack = make_stack(CLOUDAMQP_INSTANCE_ID="small", POLICY_FILE=policy, CLOUDAMQP_API_TIMEOUT="1")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(disk_alarm("small")))[0] == 202
    [action] = await decided(stack, 1, frozenset({"succeeded", "failed"}))

    assert (action["status"], action["extra_disk_from"], action["extra_disk_to"]) == ("succeeded", 0, 25), (
        action
    )
    assert small.extra_disk == 25 and len(fake_api.disk_requests()) == 1
    assert worker.events("resize.found_made") and worker.events("upgrade.retrying")
    _, audit = await stack.get("/audit")
    assert [e["act"] for e in audit["audit"]].count("resize_disk") == 1
