"""The console in a real headless chromium, against the real receiver, worker, broker and store:
what an operator sees and does, and that the page's defences hold in a browser."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import SEED_INSTANCE, Stack, seed_alarm, seed_instance
from tests.support import Services, wait_until

pytestmark = pytest.mark.browser

APPROVE_POLICY = """
[[rules]]
name = "careful"
alarm_type = "memory"
above = 80
plan = "hare-1"
approve = true
approve_timeout = 600
"""


async def posted(stack: Stack, **changes: Any) -> str:
    status, body = await stack.post(seed_alarm(**changes))
    assert status == 202, body
    return str(body["id"])


async def action_of(stack: Stack, event_id: str, *statuses: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        row = next((a for a in await stack.actions() if a["event_id"] == event_id), None)
        return row if row is not None and row["status"] in statuses else None

    return await wait_until(found, timeout=30, what=f"action {event_id} to be {statuses}")


async def test_given_the_incidents_page_open_when_an_alarm_is_posted_then_its_incident_shows_without_a_reload(
    console: Any,
) -> None:
    stack, page = await console()
    await page.click("nav >> text=Incidents")
    await page.wait_for_selector("text=No incidents")
    await page.evaluate("window.__sameDocument = true")

    await posted(stack, message="Memory watermark reached on node 1")

    await page.wait_for_selector("table#incidents >> text=Memory watermark reached on node 1")
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"


async def test_given_an_instance_paused_in_the_console_then_a_posted_alarm_is_skipped_as_paused(
    console: Any, fake_api: CloudAmqpStandIn
) -> None:
    stack, page = await console()
    await page.goto(f"/ui/instances/{SEED_INSTANCE}")
    await page.select_option("#pause-form select[name=duration]", "3600")
    await page.fill("#pause-form input[name=reason]", "broker maintenance")
    await page.click("#pause-form button[type=submit]")
    await page.wait_for_selector("text=Paused: instance")
    await page.wait_for_selector("#pause-state >> text=paused by alice")

    event_id = await posted(stack)

    row = await action_of(stack, event_id, "skipped")
    assert row["reason"] == "paused" and fake_api.upgrade_requests() == []
    await page.wait_for_selector("#actions >> text=paused")  # the instance page's list, live
    await page.click("#resume-form button[type=submit]")
    await page.wait_for_selector(f"text=Resumed instance {SEED_INSTANCE}")


async def test_given_an_upgrade_awaiting_approval_when_approved_in_the_console_then_exactly_one_api_call(
    console: Any, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(APPROVE_POLICY)
    stack, page = await console(POLICY_FILE=str(policy))
    await page.goto("/ui/actions")

    event_id = await posted(stack)
    await action_of(stack, event_id, "awaiting_approval")
    row = page.locator(f"#awaiting tr[data-action='{event_id}']")
    await row.wait_for()
    assert fake_api.upgrade_requests() == []
    await row.locator("input[name=reason]").fill("capacity review done")
    await row.locator("button:has-text('Approve')").click()
    await page.wait_for_selector(f"text=Approved upgrade {event_id}")

    await action_of(stack, event_id, "succeeded")
    await wait_until(lambda: len(fake_api.upgrade_requests()) == 1, timeout=10, what="the upgrade call")
    await page.wait_for_selector("#awaiting >> text=Nothing awaits approval")
    [call] = fake_api.upgrade_requests()
    assert call.path == f"/api/instances/{SEED_INSTANCE}/actions/upgrade" and call.body["plan"] == "hare-1"
    await page.goto("/ui/audit")
    await page.wait_for_selector("#audit >> text=capacity review done")
    assert len(fake_api.upgrade_requests()) == 1


OVER_BUDGET_POLICY = """
[[rules]]
name = "climb"
alarm_type = "memory"
above = 80
plan = "next"
max_monthly_price = 150
over_budget = "ask"
"""


async def test_given_an_upgrade_over_budget_then_the_approval_shows_its_price_and_approved_one_call(
    console: Any, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    seed_instance(fake_api, "bunny-1")
    policy = tmp_path / "policy.toml"
    policy.write_text(OVER_BUDGET_POLICY)
    stack, page = await console(POLICY_FILE=str(policy))
    await page.goto("/ui/actions")

    event_id = await posted(stack)
    await action_of(stack, event_id, "awaiting_approval")
    row = page.locator(f"#awaiting tr[data-action='{event_id}']")
    await row.wait_for()
    # Before anyone clicks Approve: the change, both monthly prices, the difference, and why.
    shown = await row.inner_text()
    assert "bunny-1 → hare-1, $99 → $199 a month, +$100" in shown
    assert "over budget: hare-1 costs $199 a month, over max_monthly_price of rule 'climb' $150" in shown
    assert fake_api.upgrade_requests() == []
    await row.locator("button:has-text('Approve')").click()
    await page.wait_for_selector(f"text=Approved upgrade {event_id}")

    await action_of(stack, event_id, "succeeded")
    await wait_until(lambda: len(fake_api.upgrade_requests()) == 1, timeout=10, what="the upgrade call")
    [call] = fake_api.upgrade_requests()
    assert call.body["plan"] == "hare-1"
    await page.wait_for_selector("#actions >> text=bunny-1 → hare-1, $99 → $199 a month, +$100")


async def test_given_a_parked_alarm_when_replayed_in_the_console_then_it_is_processed(
    console: Any, fake_api: CloudAmqpStandIn
) -> None:
    fake_api.script = [400]  # a permanent refusal: the alarm is parked at once
    stack, page = await console()
    event_id = await posted(stack)
    await action_of(stack, event_id, "failed")

    await page.goto("/ui/parked")
    card = page.locator(f"section.parked[data-ref='{event_id}']")
    await card.wait_for()
    assert "CloudAMQP API answered 400" in await card.inner_text()
    assert '"alarm_type": "memory"' in await card.inner_text()  # the original body
    await card.locator("button:has-text('Replay')").click()
    await page.wait_for_selector("text=Replayed 1 message(s)")

    await action_of(stack, event_id, "succeeded")
    assert len(fake_api.upgrade_requests()) == 2  # the refused call, then the replayed one
    await page.wait_for_selector("text=Nothing is parked")


async def test_an_xss_payload_in_an_alarm_message_is_shown_as_text_and_never_runs(console: Any) -> None:
    stack, page = await console()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    violations: list[str] = []
    page.on(
        "console", lambda msg: violations.append(msg.text) if "Content Security Policy" in msg.text else None
    )
    payload = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2;alert(2)</script>'

    event_id = await posted(stack, message=payload)
    await action_of(stack, event_id, "succeeded", "skipped")
    await page.goto("/ui/incidents")
    link = page.locator("table#incidents a", has_text="<script>")
    await link.wait_for()
    assert await link.inner_text() == payload
    await link.click()
    await page.wait_for_selector("h1 >> text=<script>")

    assert await page.evaluate("window.__pwned === undefined")
    assert dialogs == [] and await page.locator("#live img").count() == 0


async def test_a_form_post_without_the_csrf_token_is_refused_and_pauses_nothing(console: Any) -> None:
    stack, page = await console()
    await page.goto(f"/ui/instances/{SEED_INSTANCE}")
    await page.evaluate("document.querySelector('#pause-form input[name=_csrf]').remove()")

    await page.click("#pause-form button[type=submit]")

    await page.wait_for_selector("text=CSRF token is missing or wrong")
    status, body = await stack.get("/pauses")
    assert status == 200 and body["pauses"] == []


async def test_the_instance_page_draws_the_sampled_broker_usage_live_without_a_policy_violation(
    console: Any, services: Services
) -> None:
    # The machine's own broker stands in for the instance: the watchdog only reads its
    # /api/nodes (and raises nothing within the hour threshold).
    stack, page = await console(
        CLOUDAMQP_INSTANCE_MANAGEMENT_URL=services.management_url,
        WATCHDOG_INTERVAL_SECONDS="0.5",
        WATCHDOG_TIME_THRESHOLD_SECONDS="3600",
    )
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if message.type == "error" else None)
    await page.goto(f"/ui/instances/{SEED_INSTANCE}")

    await page.wait_for_selector(".usage >> text=of mem_limit")
    await wait_until(
        lambda: page.evaluate("document.querySelector('svg.spark polyline').points.numberOfItems >= 2"),
        timeout=30,
        what="a sparkline of two samples or more",
    )
    box = await page.locator("svg.spark").bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 20
    assert violations == []
    if shots := os.environ.get("CONSOLE_SHOTS"):  # a look for people (tools.screenshots does all pages)
        await page.screenshot(path=f"{shots}/instance-usage.png", full_page=True)


CHART_POLICY = """
[[rules]]
name = "memory-80"
alarm_type = "memory"
above = 80
plan = "hare-1"

[[rules]]
name = "cpu"
alarm_type = "cpu"
plan = "hare-1"
"""


async def test_given_no_samples_then_the_instance_page_says_so_instead_of_a_chart(console: Any) -> None:
    stack, page = await console()

    await page.goto(f"/ui/instances/{SEED_INSTANCE}")

    await page.wait_for_selector("#usage-chart >> text=No samples of memory, % of mem_limit to draw yet.")
    assert await page.locator("#usage-chart svg.chart").count() == 0


async def test_the_instance_page_charts_memory_with_the_threshold_and_an_upgrade_marker(
    console: Any, services: Services, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(CHART_POLICY)
    # The machine's broker stands in for the instance's nodes (samples); a cpu alarm, which
    # the nodes cannot contradict, makes the upgrade whose marker the chart must show.
    stack, page = await console(
        POLICY_FILE=str(policy),
        CLOUDAMQP_INSTANCE_MANAGEMENT_URL=services.management_url,
        WATCHDOG_INTERVAL_SECONDS="0.5",
        WATCHDOG_TIME_THRESHOLD_SECONDS="3600",
    )
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if message.type == "error" else None)
    await page.goto(f"/ui/instances/{SEED_INSTANCE}")
    # Attached, not visible: a flat line (an idle broker) has no height to be visible by.
    await page.wait_for_selector("#usage-chart svg.chart g.series polyline", state="attached")
    event_id = await posted(stack, alarm_type="cpu", value=95)
    await action_of(stack, event_id, "succeeded")

    # The live part refreshes every 3 s: the marker shows once a later sample spans it.
    await page.wait_for_selector("#usage-chart svg.chart g.marker >> text=→ hare-1", timeout=30_000)
    chart = page.locator("#usage-chart svg.chart").first
    box = await chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    assert await chart.locator("g.threshold >> text=threshold 80%").count() == 1
    points = await page.evaluate(
        "document.querySelector('#usage-chart svg.chart g.series polyline').points.numberOfItems"
    )
    assert points >= 2
    assert violations == []
    if shots := os.environ.get("CONSOLE_SHOTS"):
        await page.screenshot(path=f"{shots}/instance-chart-cpu.png", full_page=True)


FORECAST_POLICY = """
[[rules]]
name = "memory-80"
alarm_type = "memory"
above = 80
plan = "hare-1"
forecast = true
lead_time = 60
"""


async def test_given_a_climb_then_the_instance_page_shows_the_forecast_its_line_and_the_upgrade(
    console: Any, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    # The stand-in's management API of the instance: memory climbing 1 % a second from 50 %
    # (80 % in 30 s), sampled twice a second; within the rule's minute, a forecast upgrades it.
    seed = seed_instance(fake_api, "bunny-1")
    fake_api.reconfigure_seconds = 2.0
    start, first = time.time(), seed.mem_limit
    seed.load = lambda now: (50 + (now - start)) / 100 * first
    policy = tmp_path / "policy.toml"
    policy.write_text(FORECAST_POLICY)
    stack, page = await console(
        POLICY_FILE=str(policy),
        CLOUDAMQP_INSTANCE_MANAGEMENT_URL=fake_api.management_url(seed),
        WATCHDOG_INTERVAL_SECONDS="0.5",
        FORECAST_MIN_SAMPLES="5",
        FORECAST_WINDOW_SECONDS="30",
    )
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if message.type == "error" else None)
    await page.goto(f"/ui/instances/{SEED_INSTANCE}")

    # The live part refreshes every 3 s: the forecast's sentence, then its upgrade's marker.
    why = page.locator("#forecast-why")
    await why.wait_for(timeout=30_000)
    assert "projected to cross 80% in" in await why.inner_text()
    assert "the rule's lead time is 1 min" in await why.inner_text()
    await page.wait_for_selector("#usage-chart svg.chart g.marker >> text=→ hare-1", timeout=30_000)
    chart = page.locator("#usage-chart svg.chart").first
    assert await chart.locator("g.forecast line").count() == 1
    assert await chart.locator("g.threshold >> text=threshold 80%").count() == 1
    [call] = fake_api.upgrade_requests()
    assert call.body["plan"] == "hare-1" and "memory forecast" in call.body["reason"]
    assert violations == []
    if shots := os.environ.get("CONSOLE_SHOTS"):  # at seconds' scale (the README's: tools.screenshots chart)
        await page.locator("#usage-chart").screenshot(path=f"{shots}/instance-forecast.png")
