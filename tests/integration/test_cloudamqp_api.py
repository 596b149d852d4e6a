"""Against the CloudAMQP that exists (``tests/cloudamqp_stand_in.py``): the documented API,
its asynchronous plan change, its refusals and its ids, through the real receiver and worker."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from shared import envelope, topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import (
    API_KEY,
    SEED_API_ID,
    SEED_INSTANCE,
    MakeStack,
    Stack,
    seed_alarm,
    seed_instance,
)
from tests.support import wait_until

BASIC = "Basic " + base64.b64encode(f":{API_KEY}".encode()).decode()
BLOG_PATH = "/actions/upgrade"


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC).timestamp()


async def parked_messages(url: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    out = []
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.DEAD_QUEUE)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            out.append(message)
    return out


async def status_of(stack: Stack, count: int = 1) -> list[dict[str, Any]]:
    return await stack.wait_actions(count, timeout=30)


async def test_given_default_settings_and_the_documented_api_only_then_one_put_and_success_once_ready(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"  # the documented service: no actions/upgrade endpoint
    fake_api.reconfigure_seconds = 1.5
    seed = seed_instance(fake_api, "bunny-1")
    other = fake_api.add_instance("other-instance", "squirrel-1")
    # Default settings: UPGRADE_API unset (auto); the seed instance configured by its UUID.
    stack = make_stack(CLOUDAMQP_INSTANCE_ID=f"{SEED_INSTANCE},other-instance")
    await stack.start_receiver()
    worker = await stack.start_worker()

    # The alarm names the instance by its API id, as a JSON number.
    assert (await stack.post(seed_alarm(instance_id=SEED_API_ID)))[0] == 202
    assert (await stack.post(seed_alarm(instance_id="other-instance")))[0] == 202

    actions = await wait_until(
        lambda: _all_succeeded(stack, 2), timeout=30, what="both upgrades confirmed by CloudAMQP"
    )
    puts = [r for r in fake_api.upgrade_requests() if r.method == "PUT"]
    assert sorted(r.path for r in puts) == sorted([f"/api/instances/{seed.id}", f"/api/instances/{other.id}"])
    assert all(r.headers["Authorization"] == BASIC and r.body == {"plan": "hare-1"} for r in puts)
    assert all(r.status == 200 for r in puts)
    # The blog's endpoint was asked once in this process, and answered 404: nothing was done.
    blog = [r for r in fake_api.upgrade_requests() if r.path.endswith(BLOG_PATH)]
    assert [r.status for r in blog] == [404]
    assert len(worker.events("api.documented_in_use")) == 1
    # Succeeded only after CloudAMQP said the instance was ready on the new plan.
    by_instance = {a["instance"]: a for a in actions}
    for instance, name in ((seed, SEED_INSTANCE), (other, "other-instance")):
        action = by_instance[name]
        assert instance.ready_at is not None and at(action["updated_at"]) >= instance.ready_at
        assert action["reconfigure_seconds"] >= 1.4
        assert "reconfigured in" in action["detail"]
    assert (seed.plan, other.plan) == ("hare-1", "hare-1")
    # The first look saw it still reconfiguring.
    assert any(e.get("ready") is False for e in worker.events("upgrade.waiting"))
    # The instance's own secrets (its AMQP URL's password, its apikey) were read, never kept.
    for text in (worker.log_path.read_text(), repr(actions)):
        assert "instance-password-" not in text and "instance-apikey-" not in text
    _, audit = await stack.get("/audit")
    confirmed = [e for e in audit["audit"] if e["act"] == "upgrade.confirmed"]
    assert len(confirmed) == 2 and all(e["detail"]["reconfigure_seconds"] >= 1.4 for e in confirmed)


async def _all_succeeded(stack: Stack, count: int) -> list[dict[str, Any]]:
    rows = await stack.actions()
    return rows if len(rows) == count and all(r["status"] == "succeeded" for r in rows) else []


async def test_given_an_instance_busy_longer_than_every_retry_delay_then_it_is_not_parked_and_changed_once(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    fake_api.blog = "absent"
    seed = seed_instance(fake_api, "bunny-1")
    seed.ready, seed.target = False, "bunny-1"  # CloudAMQP configuring it (a change of the customer's)
    stack = make_stack(MAX_ATTEMPTS="2", UPGRADE_CONFIRM_TIMEOUT_SECONDS="60")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202
    # Busy for several looks: longer than RETRY_DELAYS together (0.7 s) and MAX_ATTEMPTS.
    await worker.wait_event("upgrade.busy", count=4, timeout=20)
    assert fake_api.upgrade_requests() == []  # no change asked of a busy instance
    seed.finish()

    [action] = await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade")
    assert [(r.method, r.status) for r in fake_api.upgrade_requests() if r.method == "PUT"] == [("PUT", 200)]
    assert action["attempts"] == 1
    assert await parked_messages(vhost) == []


async def test_given_423_twice_then_one_success_without_spending_attempts(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    seed_instance(fake_api, "bunny-1")
    fake_api.script = [404, 423, 423]  # the blog's endpoint (absent), then Locked twice
    stack = make_stack(MAX_ATTEMPTS="2")
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade")
    assert [r.status for r in fake_api.upgrade_requests() if r.method == "PUT"] == [423, 423, 200]


async def test_given_a_wait_for_your_cluster_422_then_the_worker_waits_and_changes_once(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    seed_instance(fake_api, "bunny-1")
    fake_api.script = [404, 422]  # "Please wait for your cluster to be configured…"
    stack = make_stack(MAX_ATTEMPTS="1")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade")
    assert [r.status for r in fake_api.upgrade_requests() if r.method == "PUT"] == [422, 200]
    [busy] = worker.events("upgrade.busy")
    assert "Please wait for your cluster to be configured" in busy["error"]


async def test_given_an_account_suspended_40005_then_one_call_and_parked_with_cloudamqps_words(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    fake_api.blog = "absent"
    seed_instance(fake_api, "bunny-1")
    suspended = {"error": "Your account is suspended", "error_code": 40005}
    fake_api.script = [404, (400, {}, suspended)]
    stack = make_stack()
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    [action] = await status_of(stack)
    assert action["status"] == "failed"
    assert "Your account is suspended" in action["detail"] and "40005" in action["detail"]
    assert [r.status for r in fake_api.upgrade_requests() if r.method == "PUT"] == [400]
    [message] = await parked_messages(vhost)
    assert "Your account is suspended" in str(message.headers[envelope.H_ERROR])


async def test_given_40001_firewall_still_configuring_then_retried(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    seed_instance(fake_api, "bunny-1")
    fake_api.script = [404, (400, {}, {"error": "Firewall is being configured", "error_code": 40001})]
    stack = make_stack(QUICK_RETRIES="0")
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    [action] = await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade")
    assert [r.status for r in fake_api.upgrade_requests() if r.method == "PUT"] == [400, 200]
    assert action["attempts"] == 2


async def test_given_429_with_retry_after_then_the_next_try_waits_for_it_and_without_it_is_retried(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    seed_instance(fake_api, "bunny-1")
    other = fake_api.add_instance("other-instance", "bunny-1")
    fake_api.script = [404, (429, {"Retry-After": "2"})]
    stack = make_stack(CLOUDAMQP_INSTANCE_ID=f"{SEED_INSTANCE},other-instance")
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202
    await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the first upgrade")
    first, second = [r for r in fake_api.upgrade_requests() if r.method == "PUT"]
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.answered_at >= 2.0

    fake_api.script = [429]  # no Retry-After: backed off (at most 60 s) and tried again
    assert (await stack.post(seed_alarm(instance_id="other-instance")))[0] == 202
    await wait_until(lambda: _all_succeeded(stack, 2), timeout=30, what="the second upgrade")
    statuses = [r.status for r in fake_api.upgrade_requests() if r.path == f"/api/instances/{other.id}"]
    assert statuses == [429, 200]


async def test_given_the_console_uuid_and_an_instance_configured_by_name_then_the_put_goes_to_its_id(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    seed = seed_instance(fake_api, "bunny-1")
    stack = make_stack(CLOUDAMQP_INSTANCE_ID="seed-instance")  # by name
    await stack.start_receiver()
    await stack.start_worker()

    assert (await stack.post(seed_alarm(instance_id=SEED_INSTANCE)))[0] == 202  # the UUID
    assert (await stack.post(seed_alarm(instance_id="someone-elses-instance")))[0] == 202

    rows = await wait_until(lambda: _decided(stack), timeout=30, what="both alarms decided")
    reasons = {a["instance"]: (a["status"], a["reason"]) for a in rows}
    assert reasons == {
        "seed-instance": ("succeeded", None),
        "someone-elses-instance": ("skipped", "not_managed"),
    }
    assert [r.path for r in fake_api.upgrade_requests() if r.method == "PUT"] == [f"/api/instances/{seed.id}"]
    # The unknown id re-read CloudAMQP's list once (at most once a minute), and was never acted on.
    assert len([r for r in fake_api.reads() if r.path == "/api/instances"]) <= 2


async def _decided(stack: Stack) -> list[dict[str, Any]]:
    rows = await stack.actions()
    return rows if len(rows) == 2 and all(r["status"] in {"succeeded", "skipped"} for r in rows) else []


async def test_given_a_second_alarm_after_the_cooldown_while_the_first_change_reconfigures_then_no_second_put(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.blog = "absent"
    fake_api.reconfigure_seconds = 3600  # CloudAMQP still applying the first change
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(COOLDOWN_SECONDS="0", UPGRADE_PLAN="next")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm(value=85)))[0] == 202
    await worker.wait_event("upgrade.accepted")
    assert (await stack.post(seed_alarm(value=91)))[0] == 202

    async def second_decided() -> list[dict[str, Any]]:
        rows = await stack.actions()
        return [r for r in rows if r["status"] == "skipped"]

    [second] = await wait_until(second_decided, timeout=20, what="the second alarm decided")
    assert second["reason"] == "reconfiguring" and "hare-1" in second["detail"]
    assert [r.method for r in fake_api.upgrade_requests()] == ["POST", "PUT"]  # blog once, one PUT


async def test_given_a_key_refused_by_both_apis_then_parked_as_refused_and_the_key_is_never_said(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    fake_api.blog = "refuses"
    fake_api.api_key = "the-key-cloudamqp-knows"
    seed_instance(fake_api, "bunny-1")
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    [action] = await status_of(stack)
    assert action["status"] == "failed" and "the CloudAMQP API key was refused" in action["detail"]
    assert [r.method for r in fake_api.upgrade_requests()] == ["POST", "PUT"]
    [message] = await parked_messages(vhost)
    assert "the CloudAMQP API key was refused" in str(message.headers[envelope.H_ERROR])
    assert API_KEY not in worker.log_path.read_text() and API_KEY not in str(message.headers)


async def test_given_the_blog_answering_api_then_the_seeds_call_is_unchanged(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    seed_instance(fake_api, "bunny-1")  # the account has it; the blog's endpoint answers
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202
    assert (await stack.post(seed_alarm(alarm_type="memory", value=86, instance_id=SEED_API_ID)))[0] == 202

    await wait_until(lambda: worker.events("upgrade.succeeded"), timeout=30, what="the upgrade")
    [post] = fake_api.upgrade_requests()
    assert post.method == "POST" and post.path == f"/api/instances/{SEED_API_ID}{BLOG_PATH}"
    assert post.headers["Authorization"] == f"Bearer {API_KEY}"
    assert post.body == {"plan": "hare-1", "reason": "Automatic upgrade triggered by memory alarm (85%)"}
    assert worker.events("api.blog_in_use")


async def test_given_the_instance_list_unreadable_at_start_then_an_upgrade_waits_for_it_instead_of_guessing(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, vhost: str
) -> None:
    fake_api.blog = "absent"
    seed = seed_instance(fake_api, "bunny-1")
    fake_api.fail_until = time.monotonic() + 3600  # CloudAMQP answers 503 to everything
    stack = make_stack(CLOUDAMQP_INSTANCE_ID="seed-instance", QUICK_RETRIES="0", MAX_ATTEMPTS="50")
    await stack.start_receiver()
    worker = await stack.start_worker()
    assert worker.events("instances.unresolved")

    assert (await stack.post(seed_alarm(instance_id="seed-instance")))[0] == 202
    await worker.wait_event("upgrade.retrying", count=2)
    fake_api.fail_until = 0.0

    await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade")
    assert [(r.path, r.status) for r in fake_api.upgrade_requests() if r.method == "PUT"] == [
        (f"/api/instances/{seed.id}", 200)
    ]
    assert await parked_messages(vhost) == []


@pytest.mark.parametrize("reconfigure_seconds", [0.0, 2.0])
async def test_given_a_next_rule_whose_change_was_made_but_its_answer_lost_then_the_retry_does_not_step_again(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, reconfigure_seconds: float
) -> None:
    # CloudAMQP carries the plan change out, and its 200 never reaches the worker (the
    # connection drops, the client times out). The retry must not read the new plan as the
    # one to step up from: ``next`` was hare-1 when it was asked, and still is.
    fake_api.blog = "absent"
    fake_api.reconfigure_seconds = reconfigure_seconds
    fake_api.script = ["lost"]
    seed = seed_instance(fake_api, "bunny-1")
    stack = make_stack(UPGRADE_PLAN="next", UPGRADE_API="instances", CLOUDAMQP_API_TIMEOUT="1")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202
    [action] = await wait_until(lambda: _all_succeeded(stack, 1), timeout=30, what="the upgrade confirmed")

    assert [(c.plan_from, c.plan_to) for c in seed.changes_made] == [("bunny-1", "hare-1")]
    assert seed.plan == "hare-1" and action["plan"] == "hare-1"
    puts = [r for r in fake_api.upgrade_requests() if r.method == "PUT"]
    assert all(r.body == {"plan": "hare-1"} for r in puts), [r.body for r in puts]
    assert worker.events("upgrade.retrying")  # the lost answer was retried, as the same change
    # The change is ours: the cooldown runs, and the audit trail has it once.
    _, audit = await stack.get("/audit")
    assert [e["act"] for e in audit["audit"]].count("upgrade") == 1
    assert (await stack.post(seed_alarm(value=91)))[0] == 202
    rows = await stack.wait_actions(2, timeout=30)
    [second] = [r for r in rows if r["event_id"] != action["event_id"]]
    assert second["status"] == "skipped" and second["reason"] == "cooling_down", second
    assert len(seed.changes_made) == 1


async def test_given_a_worker_killed_while_its_next_change_was_out_then_the_next_worker_finds_it_made(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    # The worker dies (SIGKILL) with its PUT at CloudAMQP, which makes the change after all.
    # The alarm comes back to the next worker: it reads the instance and finds the change it
    # asked for made — hare-1 is not the plan to step up from. Another alarm of the instance
    # meanwhile asks nothing.
    fake_api.blog = "absent"
    fake_api.hold = asyncio.Event()
    seed = seed_instance(fake_api, "bunny-1")
    stack = make_stack(UPGRADE_PLAN="next", UPGRADE_API="instances")
    await stack.start_receiver()
    first = await stack.start_worker()

    status, body = await stack.post(seed_alarm())
    assert status == 202
    await wait_until(lambda: fake_api.in_flight() == 1, timeout=20, what="the PUT at CloudAMQP")
    await first.kill()
    fake_api.hold.set()  # CloudAMQP carries it out; nobody hears the answer
    await wait_until(lambda: seed.plan == "hare-1", timeout=10, what="the change made")

    assert (await stack.post(seed_alarm(value=93)))[0] == 202
    second = await stack.start_worker()

    async def both_decided() -> list[dict[str, Any]]:
        rows = await stack.actions()
        return rows if len(rows) == 2 and all(r["status"] in ("succeeded", "skipped") for r in rows) else []

    rows = await wait_until(both_decided, timeout=60, what="both alarms decided")
    by_event = {r["event_id"]: r for r in rows}
    action = by_event.pop(body["id"])
    [other] = by_event.values()
    assert action["status"] == "succeeded" and action["plan"] == "hare-1", action
    [found] = second.events("upgrade.found_made")
    assert (found["event_id"], found["plan"]) == (body["id"], "hare-1")
    # (Deferred while the dead worker's claim stands, then skipped: the change may be under
    # way, or — once its own alarm found it made — the cooldown runs.)
    assert other["status"] == "skipped" and other["reason"] in ("reconfiguring", "cooling_down"), other
    assert [(c.plan_from, c.plan_to) for c in seed.changes_made] == [("bunny-1", "hare-1")]
    assert len(fake_api.upgrade_requests()) == 1
    _, audit = await stack.get("/audit")
    assert [e["act"] for e in audit["audit"]].count("upgrade") == 1
