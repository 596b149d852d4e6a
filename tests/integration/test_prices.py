"""Knowing the price before spending it, end to end: real receiver and worker processes, the real
broker (a vhost per test) and both stores, the stand-in CloudAMQP API (its ``GET /api/plans``
answers the prices recorded in November 2025) and stand-in notification endpoints.

The seed's ``bunny-2`` is not sold: a warning at start names the closest plans, an alarm is the
skip ``unknown_plan`` and nothing is called — also from the copy kept when ``/api/plans`` does
not answer. A rule climbing ``next`` past its cap is the skip ``over_budget``, notified; with
``over_budget = "ask"`` it is an approval request showing the price, and approved, one call.
Every place a person decides shows ``from → to`` with both monthly prices and the difference.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import SEED_INSTANCE, MakeStack, Stack, seed_alarm, seed_instance
from tests.integration.test_check import console_page
from tests.support import FakeChannel, notification_channels, wait_until

SECRET = "whsec_" + base64.b64encode(b"p" * 32).decode()
ROUTING_KEY = "R0UT1NGKEYabcdef0123456789abcdef"
OPERATOR_TOKEN = "op-Hq3vN8cX1zL6kW9pR2tY5uB7mD4s"
RABBIT = "bunny-1 → rabbit-1, $99 → $299 a month, +$200"
HARE = "bunny-1 → hare-1, $99 → $199 a month, +$100"


@pytest.fixture
async def channels() -> AsyncIterator[dict[str, FakeChannel]]:
    async with notification_channels(SECRET, ROUTING_KEY) as fakes:
        yield fakes


def notify_env(fakes: dict[str, FakeChannel]) -> dict[str, str]:
    return {
        "NOTIFY_WEBHOOK_URL": f"{fakes['webhook'].url}/hooks",
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "NOTIFY_SLACK_URL": f"{fakes['slack'].url}/services/T/B/S",
        "NOTIFY_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "NOTIFY_PAGERDUTY_URL": fakes["pagerduty"].url,
        "NOTIFY_RETRY_DELAYS": "0.2",
    }


async def posted(stack: Stack, **changes: Any) -> str:
    status, body = await stack.post(seed_alarm(**changes))
    assert status == 202, body
    return str(body["id"])


async def action(stack: Stack, event_id: str, *statuses: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        row = next((a for a in await stack.actions() if a["event_id"] == event_id), None)
        return row if row is not None and row["status"] in statuses else None

    return await wait_until(found, timeout=30, what=f"action {event_id} {statuses}")


def of_type(fake: FakeChannel, event_type: str) -> list[dict[str, Any]]:
    """The notifications of ``event_type`` a channel took (Slack's and PagerDuty's are matched
    by what their text says)."""
    return [d.body for d in fake.accepted() if event_type in json.dumps(d.body, ensure_ascii=False)]


def policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return str(path)


async def test_given_the_seed_plan_bunny_2_then_a_warning_names_the_closest_and_an_alarm_calls_nothing(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(UPGRADE_PLAN="bunny-2", DATABASE_URL=database_url)
    await stack.start_receiver()
    worker = await stack.start_worker()

    [warning] = await worker.wait_event("policy.plan_not_sold")
    assert (
        warning["detail"]
        == "UPGRADE_PLAN 'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"
    )
    row = await action(stack, await posted(stack), "skipped")

    assert row["reason"] == "unknown_plan"
    assert row["detail"] == "'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"
    assert fake_api.upgrade_requests() == []
    assert ("GET", "/api/plans") in [(r.method, r.path) for r in fake_api.requests]


async def test_given_plans_not_answering_then_the_copy_kept_is_used_and_said_to_be_stale(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(UPGRADE_PLAN="bunny-2", DATABASE_URL=database_url)
    first = await stack.start_worker()
    await first.wait_event("plans.read")
    await first.stop()

    fake_api.plans_status = 503  # CloudAMQP's plans do not answer now
    await stack.start_receiver()
    worker = await stack.start_worker()
    [stale] = await worker.wait_event("plans.stale")
    assert "503" in stale["error"] and stale["read_at"]
    # The copy kept still knows bunny-2 is not sold: said at start, and no call.
    [warning] = await worker.wait_event("policy.plan_not_sold")
    assert "closest: bunny-1, bunny-3" in warning["detail"]
    row = await action(stack, await posted(stack), "skipped")
    assert row["reason"] == "unknown_plan" and fake_api.upgrade_requests() == []


CLIMB = """
[[rules]]
name = "memory"
alarm_type = "memory"
above = 80
plan = "next"
max_monthly_price = 150
{extra}
"""


async def test_given_a_rule_climbing_next_past_its_cap_then_over_budget_no_call_and_notified(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, channels: dict[str, FakeChannel], tmp_path: Path
) -> None:
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(POLICY_FILE=policy(tmp_path, CLIMB.format(extra="")), **notify_env(channels))
    await stack.start_receiver()
    await stack.start_worker()

    row = await action(stack, await posted(stack), "skipped")

    assert row["reason"] == "over_budget"
    assert row["detail"] == "hare-1 costs $199 a month, over max_monthly_price of rule 'memory' $150"
    assert (row["plan"], row["price"]["text"]) == ("hare-1", HARE)
    assert fake_api.upgrade_requests() == []
    [skipped] = await wait_until(lambda: channels["webhook"].of_type("action.skipped"), what="action.skipped")
    said = skipped.body["data"]["action"]
    assert (said["reason"], said["price"]["text"]) == ("over_budget", HARE)
    slack = await wait_until(lambda: of_type(channels["slack"], "not made (over_budget)"), what="Slack")
    assert "hare-1 costs $199 a month" in slack[0]["text"]


async def test_given_over_budget_ask_then_an_approval_request_shows_the_price_and_approved_one_call(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, channels: dict[str, FakeChannel], tmp_path: Path
) -> None:
    seed_instance(fake_api, "bunny-1")
    rules = CLIMB.format(extra='over_budget = "ask"')
    stack = make_stack(
        POLICY_FILE=policy(tmp_path, rules), OPERATOR_TOKEN=OPERATOR_TOKEN, **notify_env(channels)
    )
    await stack.start_receiver()
    await stack.start_worker()

    event_id = await posted(stack)
    waiting = await action(stack, event_id, "awaiting_approval")
    assert (waiting["plan"], waiting["price"]["text"]) == ("hare-1", HARE)
    assert HARE in waiting["detail"] and "over budget: hare-1 costs $199 a month" in waiting["detail"]
    [asked] = await wait_until(
        lambda: channels["webhook"].of_type("action.awaiting_approval"), what="the approval request"
    )
    assert asked.body["data"]["action"]["price"]["text"] == HARE
    html = await console_page(stack.base, "/ui/actions", OPERATOR_TOKEN)
    awaiting = html.split('id="awaiting"', 1)[1].split("</table>", 1)[0]
    assert event_id in awaiting and HARE in awaiting  # before anyone clicks Approve
    assert fake_api.upgrade_requests() == []

    session = await stack.session()
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator": "alice"}
    async with session.post(f"{stack.base}/actions/{event_id}/approve", headers=headers) as resp:
        assert resp.status == 200, await resp.text()

    done = await action(stack, event_id, "succeeded")
    assert done["price"]["text"] == HARE
    assert [r.body["plan"] for r in fake_api.upgrade_requests()] == ["hare-1"]


async def test_the_price_is_in_the_action_the_audit_each_channel_and_the_console_row(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, channels: dict[str, FakeChannel], database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(
        UPGRADE_PLAN="rabbit-1",
        DATABASE_URL=database_url,
        OPERATOR_TOKEN=OPERATOR_TOKEN,
        **notify_env(channels),
    )
    await stack.start_receiver()
    await stack.start_worker()

    event_id = await posted(stack)
    row = await action(stack, event_id, "succeeded")

    assert row["price"] == {
        "from_plan": "bunny-1", "to_plan": "rabbit-1", "from_price": 99, "to_price": 299, "difference": 200,
        "text": RABBIT,
    }  # fmt: skip
    _, audit = await stack.get("/audit")
    acts = {entry["act"]: entry["detail"] for entry in audit["audit"]}
    assert acts["upgrade"]["price"]["text"] == RABBIT and acts["upgrade.confirmed"]["price"]["text"] == RABBIT
    [webhook] = await wait_until(lambda: channels["webhook"].of_type("action.succeeded"), what="webhook")
    assert webhook.body["data"]["action"]["price"]["text"] == RABBIT
    [slack] = await wait_until(lambda: of_type(channels["slack"], f"Upgraded {SEED_INSTANCE}"), what="Slack")
    assert slack["text"].startswith(f"Upgraded {SEED_INSTANCE}: {RABBIT}")
    [pagerduty] = await wait_until(lambda: of_type(channels["pagerduty"], "Upgraded"), what="PagerDuty")
    assert pagerduty["payload"]["custom_details"]["action"]["price"]["text"] == RABBIT
    html = await console_page(stack.base, "/ui/actions", OPERATOR_TOKEN)
    assert RABBIT in html.split('id="actions"', 1)[1]
    overview = await console_page(stack.base, "/ui/", OPERATOR_TOKEN)
    assert RABBIT in overview  # the last upgrades


INCREASE = """
[[rules]]
name = "memory"
alarm_type = "memory"
above = 80
plan = "next"

[[rules]]
name = "disk"
alarm_type = "disk"
plan = "next"
"""


async def test_given_max_monthly_increase_then_the_second_rise_within_30_days_is_over_budget(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path, database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    stack = make_stack(
        POLICY_FILE=policy(tmp_path, INCREASE), MAX_MONTHLY_INCREASE="150", DATABASE_URL=database_url
    )
    await stack.start_receiver()
    await stack.start_worker()

    first = await action(stack, await posted(stack), "succeeded")  # bunny-1 → hare-1: +$100
    assert first["price"]["text"] == HARE
    second = await action(
        stack, await posted(stack, alarm_type="disk"), "skipped"
    )  # hare-1 → rabbit-1: +$100

    assert second["reason"] == "over_budget"
    assert "hare-1 → rabbit-1, $199 → $299 a month, +$100" in second["detail"]
    assert "to $200 a month, over MAX_MONTHLY_INCREASE $150" in second["detail"]
    assert [r.body["plan"] for r in fake_api.upgrade_requests()] == ["hare-1"]
