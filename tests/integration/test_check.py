"""``autopilot check`` (``python -m worker.cli check``) as an operator runs it, before the first
alarm: a process with the deployment's environment, against the real broker (a vhost per test),
the real stores, the real RabbitMQ management API as the instance's, the stand-in CloudAMQP API
and stand-in notification endpoints on loopback. A good set-up exits 0; each broken piece gives
its own ``fail`` line and exit 1; no secret is ever in what it prints. The worker runs the same
checks at start (warnings, and it starts), and the console's overview shows the last result."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from shared.alarm import Alarm, event_key, new_id
from shared.incidents import plan_incident
from shared.retention import DAY
from shared.snapshot import Arrival
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, seed_instance
from tests.integration.test_cli import autopilot
from tests.support import FakeChannel, Services, free_port, notification_channels, secrets_in

SECRET = "whsec_" + base64.b64encode(b"c" * 32).decode()
ROUTING_KEY = "R0UT1NGKEY9876543210fedcbafedcba"
WEBHOOK_TOKEN = "wh-Zq7kP2mX9vR4tW8yB1nC6dF0gH3j"
OPERATOR_TOKEN = "op-L5sQ8wE2rT6yU1iO9pA4sD7fG3hJ"
SLACK_PATH = "/services/T000/B000/SLACKSECRETPATH"


@pytest.fixture
async def channels() -> AsyncIterator[dict[str, FakeChannel]]:
    async with notification_channels(SECRET, ROUTING_KEY) as fakes:
        yield fakes


@pytest.fixture
def good(
    vhost: str, fake_api: CloudAmqpStandIn, channels: dict[str, FakeChannel], services: Services
) -> dict[str, str]:
    """A set-up where every piece answers: what a check of it must pass."""
    seed_instance(fake_api, "bunny-1")
    return {
        "RABBITMQ_URL": vhost,
        "CLOUDAMQP_API_URL": fake_api.url,
        "CLOUDAMQP_API_KEY": API_KEY,
        "CLOUDAMQP_INSTANCE_ID": SEED_INSTANCE,
        "UPGRADE_PLAN": "hare-1",
        "MAX_MONTHLY_PRICE": "500",
        # The instance's management API: the test broker's own (a real /api/nodes).
        "CLOUDAMQP_INSTANCE_MANAGEMENT_URL": f"{SEED_INSTANCE}={services.management_url}",
        "NOTIFY_WEBHOOK_URL": f"{channels['webhook'].url}/hooks/autopilot",
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "NOTIFY_SLACK_URL": channels["slack"].url + SLACK_PATH,
        "NOTIFY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "NOTIFY_PAGERDUTY_URL": channels["pagerduty"].url,
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
        "PUBLIC_URL": "https://autopilot.example.com",
        "LOG_FORMAT": "json",
    }


async def check(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the check; its exit code and its report (stdout). Nothing it printed (stdout and
    stderr) may hold a secret of its environment."""
    code, out, err = await autopilot(env, "check", *args)
    leaked = [secret[:5] for secret in (*secrets_in(env), SLACK_PATH, ROUTING_KEY) if secret in out + err]
    assert leaked == [], f"secrets in the check's output: {leaked}"
    return code, out


async def report(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, str]]]:
    """Run the check with ``--json``: its exit code, and each level's lines (check → text)."""
    code, printed = await check(env, "--json", *args)
    found: dict[str, dict[str, str]] = {"ok": {}, "warn": {}, "fail": {}}
    for line in json.loads(printed)["lines"]:
        found[line["level"]][line["check"]] = line["text"]
    return code, found


async def test_given_a_good_set_up_then_every_check_passes_and_the_exit_code_is_0(
    good: dict[str, str], database_url: str
) -> None:
    env = {**good, "DATABASE_URL": database_url}

    code, printed = await check(env)  # as a person reads it

    assert code == 0, printed
    assert "fail " not in printed and printed.rstrip().endswith(" ok")
    assert f"instance {SEED_INSTANCE}" in printed and "on bunny-1 ($99 a month)" in printed

    code, found = await report(env)  # as a machine reads it
    assert code == 0 and found["fail"] == {}
    ok = found["ok"]
    assert ok[f"instance {SEED_INSTANCE}"] == "seed-instance, API id 359559, on bunny-1 ($99 a month)"
    assert "CloudAMQP sells 25 RabbitMQ plans" in ok["plans"]
    assert "worst case hare-1 at $199 a month, within MAX_MONTHLY_PRICE $500" in ok["rule 1 (default)"]
    assert ok[f"management {SEED_INSTANCE}"].startswith("GET /api/nodes answers")
    assert ok["RabbitMQ"].startswith("answers at amqp://guest:***@") and ok["store"].startswith("answers")
    assert sum(1 for name in ok if name.startswith("notify ")) == 3
    assert "https://autopilot.example.com/cloudamqp/alarm/<WEBHOOK_TOKEN>" in ok["webhook URL"]


async def failing(env: dict[str, str], name: str) -> str:
    """Run the check on ``env``: it must exit 1 with ``name``'s ``fail`` line; that line."""
    code, found = await report(env)
    assert code == 1 and name in found["fail"], found
    return found["fail"][name]


async def test_given_a_wrong_key_then_its_fail_line_and_exit_1(good: dict[str, str], sqlite_url: str) -> None:
    text = await failing(
        {**good, "DATABASE_URL": sqlite_url, "CLOUDAMQP_API_KEY": "wrong-key-0e9d8c"}, "API key"
    )
    assert "the CloudAMQP API key was refused (401)" in text


async def test_given_an_unknown_instance_then_its_fail_line_and_exit_1(
    good: dict[str, str], sqlite_url: str
) -> None:
    env = {**good, "DATABASE_URL": sqlite_url, "CLOUDAMQP_INSTANCE_ID": f"{SEED_INSTANCE},no-such-instance"}
    env["CLOUDAMQP_INSTANCE_MANAGEMENT_URL"] = good["CLOUDAMQP_INSTANCE_MANAGEMENT_URL"]
    text = await failing(env, "instance no-such-instance")
    assert text == "CloudAMQP lists no instance with this API id, console UUID or name"


async def test_given_a_plan_cloudamqp_does_not_sell_then_its_fail_line_names_the_closest(
    good: dict[str, str], sqlite_url: str
) -> None:
    text = await failing({**good, "DATABASE_URL": sqlite_url, "UPGRADE_PLAN": "bunny-2"}, "UPGRADE_PLAN")
    assert text == "'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"


async def test_given_a_dead_management_url_then_its_fail_line_and_exit_1(
    good: dict[str, str], sqlite_url: str
) -> None:
    dead = f"{SEED_INSTANCE}=http://monitor:s3cret-mgmt-pw@127.0.0.1:{free_port()}"
    env = {**good, "DATABASE_URL": sqlite_url, "CLOUDAMQP_INSTANCE_MANAGEMENT_URL": dead}
    text = await failing(env, f"management {SEED_INSTANCE}")
    assert "ClientConnectorError" in text or "Connect" in text


async def test_given_a_notification_url_answering_404_then_its_fail_line_and_exit_1(
    good: dict[str, str], sqlite_url: str, channels: dict[str, FakeChannel]
) -> None:
    channels["slack"].probe_status = 404  # the Slack app was removed: nothing at that URL now
    code, found = await report({**good, "DATABASE_URL": sqlite_url})
    assert code == 1
    [(name, text)] = found["fail"].items()
    assert name.startswith("notify slack-") and "answers 404" in text
    assert [p.path for p in channels["slack"].probes] == [SLACK_PATH]
    assert channels["slack"].received == []  # a probe, never a notification


async def test_given_the_broker_down_then_its_fail_line_and_exit_1(
    good: dict[str, str], sqlite_url: str
) -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    text = await failing({**good, "DATABASE_URL": sqlite_url, "RABBITMQ_URL": down}, "RabbitMQ")
    assert text.startswith(f"does not answer at amqp://guest:***@127.0.0.1:{down.rsplit(':', 1)[1][:-1]}/")


async def test_given_a_bad_variable_then_a_fail_line_naming_it_and_exit_1(
    good: dict[str, str], sqlite_url: str
) -> None:
    text = await failing({**good, "DATABASE_URL": sqlite_url, "MAX_MONTHLY_PRICE": "lots"}, "configuration")
    assert text == "MAX_MONTHLY_PRICE='lots' is invalid: expected a number"


async def test_given_send_test_then_each_endpoint_gets_one_marked_test_notification(
    good: dict[str, str], sqlite_url: str, channels: dict[str, FakeChannel]
) -> None:
    code, printed = await check({**good, "DATABASE_URL": sqlite_url}, "--send-test")

    assert code == 0, printed
    webhook = channels["webhook"].accepted()  # verified with standardwebhooks by the stand-in
    assert [d.body["type"] for d in webhook] == ["autopilot.test"]
    assert webhook[0].body["data"]["test"] is True
    [slack] = channels["slack"].accepted()
    assert "Test notification" in slack.body["text"] and "nothing happened" in slack.body["text"]
    [pagerduty] = channels["pagerduty"].accepted()
    assert pagerduty.path == "/v2/change/enqueue"  # a change event on the timeline, never a page
    assert "Test notification" in pagerduty.body["payload"]["summary"]


async def test_the_worker_runs_the_checks_at_start_warns_and_starts_and_the_console_shows_the_result(
    make_stack: MakeStack, good: dict[str, str], channels: dict[str, FakeChannel]
) -> None:
    channels["slack"].probe_status = 404
    overrides = {k: v for k, v in good.items() if k not in ("RABBITMQ_URL", "LOG_FORMAT")}
    stack = make_stack(**overrides)
    worker = await stack.start_worker()  # it starts, whatever the checks find
    [warning] = await worker.wait_event("check.failed", timeout=30)
    assert warning["level"] == "warning" and warning["check"].startswith("notify slack-")
    assert "answers 404" in warning["detail"]
    await worker.wait_event("check.done", timeout=30)
    await stack.start_receiver()

    html = await console_page(stack.base, "/ui/", OPERATOR_TOKEN)
    card = html.split('id="setup-check"', 1)[1].split("</section>", 1)[0]
    assert "1 failed" in card and "notify slack-" in card and "answers 404" in card
    assert SLACK_PATH not in html and OPERATOR_TOKEN not in html


async def console_page(base: str, path: str, token: str) -> str:
    """A console page, after logging in through the form (a cookie jar that keeps 127.0.0.1's)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.get(f"{base}/ui/login") as resp:
            found = re.search(r'name="_csrf" value="([^"]+)"', await resp.text())
            assert found is not None
        form = {"_csrf": found.group(1), "token": token, "name": "alice", "next": "/ui/"}
        async with session.post(f"{base}/ui/login", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        async with session.get(f"{base}{path}") as resp:
            assert resp.status == 200
            return await resp.text()


async def test_the_check_shows_the_stores_size_and_oldest_rows_and_warns_when_they_can_only_grow(
    good: dict[str, str], database_url: str
) -> None:
    # An event recorded 60 days ago, kept 30 days: pruning takes it in its next run, and the
    # check says how old it is; with pruning off, it warns and says how to turn it on.
    store = await Store.open(database_url)
    try:
        body = {"alarm_type": "memory", "value": 50, "instance_id": SEED_INSTANCE}
        old = Alarm(new_id(), time.time() - 60 * DAY, body, event_key(body))
        async with store.unit() as unit:
            await unit.record_events(
                [Arrival(old, SEED_INSTANCE, plan_incident(old, SEED_INSTANCE))], old.received_at
            )
    finally:
        await store.close()
    env = {**good, "DATABASE_URL": database_url}

    code, found = await report(env)
    assert code == 0, found
    assert re.search(
        r"^[\d.]+ (kB|MB) \(the (SQLite file; [\d.]+ (bytes|kB|MB) free|PostgreSQL database)\)$",
        found["ok"]["store size"],
    )
    assert "events 60 days old (kept 30 days)" in found["ok"]["retention"]
    assert "audit: none" in found["ok"]["retention"]

    code, found = await report({**env, "RETENTION_INTERVAL_SECONDS": "0"})
    assert code == 0 and "pruning is off" in found["warn"]["retention"], found
