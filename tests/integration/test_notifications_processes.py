"""Notifications with the real processes: across a worker SIGKILL (counted by ``webhook-id``,
the id receivers dedupe on), and ``python -m worker --burst``, which drains its notifications
too before it exits. The real broker and store, stand-in receivers on loopback."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, Stack, seed_alarm
from tests.integration.test_worker_inprocess import publish
from tests.support import FakeChannel, Proc, run_to_exit, wait_until

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
ROUTING_KEY = "R0UT1NGKEY-crash-0123456789abcdef"
SLACK_PATH = "/services/T000/B000/XXXXSLACKSECRET"


@pytest.fixture
async def fakes() -> AsyncIterator[dict[str, FakeChannel]]:
    out = {
        "webhook": FakeChannel(secret=SECRET, hold=asyncio.Event()),
        "slack": FakeChannel(),
        "pagerduty": FakeChannel(pagerduty_key=ROUTING_KEY, default_status=202),
    }
    for fake in out.values():
        await fake.start()
    yield out
    for fake in out.values():
        await fake.stop()


@pytest.mark.early
async def test_given_ten_re_sends_and_a_worker_killed_mid_delivery_then_one_notification_per_event(
    make_stack: Callable[..., Stack], fakes: dict[str, FakeChannel], fake_api: CloudAmqpStandIn
) -> None:
    webhook = fakes["webhook"]
    stack = make_stack(
        NOTIFY_WEBHOOK_URL=f"{webhook.url}/hook",
        NOTIFY_WEBHOOK_SECRET=SECRET,
        NOTIFY_SLACK_URL=fakes["slack"].url + SLACK_PATH,
        NOTIFY_PAGERDUTY_ROUTING_KEY=ROUTING_KEY,
        NOTIFY_PAGERDUTY_URL=fakes["pagerduty"].url,
        NOTIFY_RETRY_DELAYS="0.2,0.5",
        NOTIFY_TIMEOUT="2",
    )
    await stack.start_receiver()
    first = await stack.start_worker()
    body = seed_alarm()
    for _ in range(10):
        status, _answer = await stack.post(body)
        assert status == 202

    # The state change has committed and its notification is on its way, unacknowledged:
    # the webhook holds its answer. Kill the worker there.
    await wait_until(lambda: webhook.received, what="the first webhook delivery")
    await first.kill()
    webhook.hold.set()  # type: ignore[union-attr]
    second = await stack.start_worker()

    both = {"incident.opened", "action.succeeded"}
    await wait_until(lambda: set(_by_type(webhook)) >= both, timeout=30, what="both notifications")
    await stack.wait_actions(10, timeout=30)
    slack, pagerduty = fakes["slack"], fakes["pagerduty"]
    await wait_until(
        lambda: len({d.body["text"] for d in slack.accepted()}) >= 2, timeout=30, what="slack's two"
    )
    await wait_until(
        lambda: len({d.path for d in pagerduty.accepted()}) >= 2, timeout=30, what="pagerduty's two"
    )
    await asyncio.sleep(1.0)  # anything duplicated would arrive meanwhile (retry delays are 0.2 s)

    assert len(fake_api.upgrade_requests()) == 1
    assert {t: len(ids) for t, ids in _by_type(webhook).items()} == {
        "incident.opened": 1,
        "action.succeeded": 1,
    }
    assert all(d.problem is None for fake in fakes.values() for d in fake.received)
    # Slack and PagerDuty carry no webhook-id: a message the killed worker sent but had not
    # recorded yet is sent again (at least once); each event is there, none is missing.
    assert len({d.body["text"] for d in fakes["slack"].accepted()}) == 2
    pd = {(d.path, d.body.get("event_action")) for d in fakes["pagerduty"].accepted()}
    assert pd == {("/v2/enqueue", "trigger"), ("/v2/change/enqueue", None)}

    # GET /notifications shows them delivered, and no secret shows anywhere.
    status, listed = await stack.get("/notifications")
    assert status == 200
    assert sorted(n["type"] for n in listed["notifications"]) == ["action.succeeded", "incident.opened"]
    assert all(d["status"] == "delivered" for n in listed["notifications"] for d in n["deliveries"])
    _, actions = await stack.get("/actions")
    async with (await stack.session()).get(stack.base + "/metrics") as resp:
        metrics = await resp.text()
    exposed = [str(listed), str(actions), str(metrics)] + [p.log_path.read_text() for p in stack.procs]
    for secret in (SECRET, SECRET.removeprefix("whsec_"), ROUTING_KEY, "XXXXSLACKSECRET", API_KEY):
        assert not any(secret in text for text in exposed), f"a secret leaked: {secret[:6]}…"
    await second.stop()


def _by_type(fake: FakeChannel) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for delivery in fake.accepted():
        out.setdefault(delivery.body["type"], set()).add(delivery.webhook_id)
    return out


async def test_given_a_backlog_when_a_burst_worker_runs_then_it_delivers_the_notifications_before_it_exits(
    base_env: dict[str, str], fakes: dict[str, FakeChannel], tmp_path: Path
) -> None:
    webhook = fakes["webhook"]
    assert webhook.hold is not None
    webhook.hold.set()
    await publish(base_env["RABBITMQ_URL"], seed_alarm(), delays=(0.2, 0.5))
    env = {**base_env, "NOTIFY_WEBHOOK_URL": webhook.url, "NOTIFY_WEBHOOK_SECRET": SECRET}
    env["NOTIFY_RETRY_DELAYS"] = "0.2,0.5"

    worker = Proc("worker", env, tmp_path / "burst.log", args=["--burst"])

    assert await worker.wait(60) == 0, worker.log_path.read_text()[-2000:]
    assert {t: len(ids) for t, ids in _by_type(webhook).items()} == {
        "incident.opened": 1,
        "action.succeeded": 1,
    }
    assert worker.events("notify.drained") and worker.events("worker.drained")


RULE = '[[rules]]\nalarm_type = "memory"\nabove = 80\nplan = "hare-1"\n'


@pytest.mark.parametrize(
    ("env", "policy", "fragment"),
    [
        ({"NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9/h"}, None, "NOTIFY_WEBHOOK_SECRET is unset"),
        (
            {"NOTIFY_WEBHOOK_URL": "http://127.0.0.1:9/h", "NOTIFY_WEBHOOK_SECRET": "whsec_no!"},
            None,
            "NOTIFY_WEBHOOK_SECRET=(hidden)",
        ),
        ({"NOTIFY_EVENTS": "incident.open"}, None, "NOTIFY_EVENTS='incident.open' is invalid"),
        (
            {},
            '[[notify]]\nchannel = "webhook"\nurl = "https://a/h"\nsecret = "whsec_no!"\n',
            "notify 1: key 'secret'",
        ),
        ({}, '[[notify]]\nchannel = "pager"\n', "notify 1: key 'channel'"),
    ],
    ids=["secret-missing", "secret-malformed", "unknown-event", "notify-secret", "notify-channel"],
)
def test_given_a_bad_channel_config_then_the_worker_stops_at_start_naming_the_key_and_not_the_secret(
    tmp_path: Path, env: dict[str, str], policy: str | None, fragment: str
) -> None:
    settings = {
        **env,
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:9/",
    }
    if policy is not None:
        path = tmp_path / "policy.toml"
        path.write_text(RULE + policy)
        settings["POLICY_FILE"] = str(path)

    result = run_to_exit("worker", settings)

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert fragment in line, line
    assert "whsec_no!" not in line
