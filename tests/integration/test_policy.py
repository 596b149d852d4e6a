"""Operator policies and the documented customer API (``UPGRADE_API=instances``)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, MakeStack, seed_alarm, seed_instance
from tests.support import publish_raw, run_to_exit, wait_until

BASIC = "Basic " + base64.b64encode(f":{API_KEY}".encode()).decode()


async def test_given_instances_mode_then_one_read_and_one_put_with_basic_auth_and_a_repeat_is_skipped(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    seed = seed_instance(fake_api, "bunny-1")
    stack = make_stack(UPGRADE_API="instances", UPGRADE_PLAN="rabbit-1", COOLDOWN_SECONDS="0")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202
    await worker.wait_event("upgrade.succeeded")

    path = f"/api/instances/{seed.id}"  # the integer id the console's UUID resolved to
    calls = [(r.method, r.path) for r in fake_api.requests]
    # At start the list (names to ids) and the plan catalogue; then the instance read, the PUT.
    assert set(calls[:2]) == {("GET", "/api/instances"), ("GET", "/api/plans")}
    assert [c for c in calls if c[1] == path][:2] == [("GET", path), ("PUT", path)]
    [put] = fake_api.upgrade_requests()
    assert put.headers["Authorization"] == BASIC
    assert put.body == {"plan": "rabbit-1"}
    assert all(r.headers["Authorization"] == BASIC for r in fake_api.requests)
    [action] = await stack.actions()
    assert action["status"] == "succeeded" and action["plan"] == "rabbit-1"

    assert (await stack.post(seed_alarm(value=90)))[0] == 202

    [second, _] = await stack.wait_actions(2)
    assert (second["status"], second["reason"]) == ("skipped", "already_at_or_above_target")
    assert len(fake_api.upgrade_requests()) == 1


async def test_given_an_accepted_upgrade_then_it_is_in_progress_until_the_plan_shows(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    seed_instance(fake_api, "hare-3")
    fake_api.reconfigure_seconds = 1.5
    stack = make_stack(UPGRADE_API="instances", UPGRADE_PLAN="next")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    # In progress while CloudAMQP reconfigures (1.5 s here), as the action shows it once its
    # row is written — which is just after the log line saying the change was accepted.
    async def reconfiguring() -> bool:
        [pending] = await stack.actions() or [{}]
        return (pending.get("status"), pending.get("reason")) == ("in_progress", "reconfiguring")

    await wait_until(reconfiguring, timeout=30, interval=0.05, what="the upgrade in progress, reconfiguring")
    await worker.wait_event("upgrade.waiting")
    await worker.wait_event("upgrade.succeeded")
    [done] = await stack.actions()
    assert (done["status"], done["plan"]) == ("succeeded", "rabbit-3")
    assert fake_api.upgrade_requests()[0].body == {"plan": "rabbit-3"}


async def test_given_an_accepted_upgrade_redelivered_before_its_check_then_the_check_is_rescheduled(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    fake_api.reconfigure_seconds = 1.0
    stack = make_stack(UPGRADE_API="instances", UPGRADE_PLAN="next")
    await stack.start_receiver()
    worker = await stack.start_worker()
    body = json.dumps(seed_alarm()).encode()
    await publish_raw(vhost, body, "ev-accepted")
    await worker.wait_event("upgrade.accepted")

    # The same delivery again, as after a connection lost between the call and the ack.
    await publish_raw(vhost, body, "ev-accepted")

    await worker.wait_event("upgrade.check_rescheduled")
    await worker.wait_event("upgrade.succeeded")
    [action] = await stack.actions()
    assert (action["status"], action["plan"]) == ("succeeded", "hare-1")
    assert len(fake_api.upgrade_requests()) == 1


async def test_given_a_plan_that_never_shows_then_the_upgrade_is_recorded_unconfirmed(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    seed_instance(fake_api, "bunny-1")
    fake_api.reconfigure_seconds = 3600
    stack = make_stack(UPGRADE_API="instances", UPGRADE_PLAN="next", UPGRADE_CONFIRM_TIMEOUT_SECONDS="1")
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    async def unconfirmed() -> bool:
        actions = await stack.actions()
        return bool(actions) and actions[0]["status"] == "unconfirmed"

    await wait_until(unconfirmed, timeout=20, what="the upgrade to be recorded unconfirmed")
    assert len(fake_api.upgrade_requests()) == 1


POLICY = """
[[rules]]
name = "memory"
alarm_type = "memory"
above = 80
plan = "next"
ladder = ["bunny-1", "hare-1", "rabbit-1"]
cooldown_seconds = 3600

[[rules]]
name = "disk"
alarm_type = "disk"
above = 90
plan = "next"
ladder = ["bunny-1", "panda-1", "hippo-1"]
max_plan = "hippo-1"
cooldown_seconds = 0

[[rules]]
name = "queue"
alarm_type = "queue"
action = "none"
"""


async def test_given_disk_and_memory_rules_then_they_act_independently_on_one_instance(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    seed = seed_instance(fake_api, "bunny-1")
    stack = make_stack(POLICY_FILE=str(policy), UPGRADE_API="instances")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm(alarm_type="memory", value=85)))[
        0
    ] == 202  # memory ladder: bunny → hare
    await worker.wait_event("upgrade.succeeded", count=1)
    assert (await stack.post(seed_alarm(alarm_type="disk", value=95)))[
        0
    ] == 202  # own claim: hare is not on its ladder
    await stack.wait_actions(2)
    seed.plan = "bunny-1"
    assert (await stack.post(seed_alarm(alarm_type="disk", value=96)))[0] == 202  # disk ladder: bunny → panda
    await worker.wait_event("upgrade.succeeded", count=2)
    assert (await stack.post(seed_alarm(alarm_type="memory", value=87)))[
        0
    ] == 202  # memory still cooling down
    assert (await stack.post(seed_alarm(alarm_type="queue", value=5000)))[
        0
    ] == 202  # queue alarms: incident only

    actions = await stack.wait_actions(5)
    by_time = sorted(actions, key=lambda a: a["created_at"])
    outcomes = [(a["alarm_type"], a["status"], a["reason"] or a["plan"]) for a in by_time]
    assert outcomes[:3] == [
        ("memory", "succeeded", "hare-1"),
        ("disk", "skipped", "plan_not_on_ladder"),
        ("disk", "succeeded", "panda-1"),
    ]
    assert sorted(outcomes[3:]) == [("memory", "skipped", "cooling_down"), ("queue", "skipped", "no_action")]
    assert [r.body for r in fake_api.upgrade_requests()] == [{"plan": "hare-1"}, {"plan": "panda-1"}]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (
            '[[rules]]\nalarm_type = "memory"\nabove = 80\n\n[[rules]]\nalarm_typ = "disk"\n',
            "rule 2: key 'alarm_typ'",
        ),
        ('[[rules]]\nalarm_type = "ram"\n', "rule 1: key 'alarm_type'"),
        ('[[rules]]\nalarm_type = "memory"\nabove = 90\nbelow = 80\n', "rule 1: key 'below'"),
        ('ladder = ["bunny-1", "big"]\n[[rules]]\nalarm_type = "memory"\n', "key 'ladder'"),
        ('[[rules]]\nalarm_type = "memory"\nmax_plan = "galaxy"\n', "rule 1: key 'max_plan'"),
        ("rules = [ not toml", "not valid TOML"),
        (None, "cannot read it"),
        (
            '[[rules]]\nalarm_type = "memory"\nabove = 80\naction = "resize_disk"\n',
            "rule 1: key 'action': 'resize_disk' answers disk alarms only, not 'memory'",
        ),
        (
            '[[rules]]\nalarm_type = "disk"\naction = "resize_disk"\nextra_disk = 40\n',
            "rule 1: key 'extra_disk': 40 is not an extra disk size",
        ),
        (
            '[[rules]]\nalarm_type = "disk"\naction = "resize_disk"\nallow_downtime = true\n',
            "rule 1: key 'allow_downtime': true needs approve = true",
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-alarm-type",
        "below-under-above",
        "bad-ladder",
        "bad-max-plan",
        "bad-toml",
        "unreadable",
        "resize-on-a-memory-alarm",
        "resize-to-a-size-not-on-the-list",
        "downtime-without-approval",
    ],
)
def test_given_a_policy_file_mistake_then_the_worker_stops_naming_file_rule_and_key(
    tmp_path: Path, content: str | None, fragment: str
) -> None:
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_text(content)

    result = run_to_exit("worker", {"POLICY_FILE": str(path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert str(path) in line and fragment in line, line
