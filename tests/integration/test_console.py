"""The operator console in-process: ``create_app(settings)`` under aiohttp's test client, against
the real broker (a vhost per test) and the real store. The login, the CSRF and role checks,
the security headers, escaping, and every page rendering; what a browser does with them is in
``tests/browser``."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from receiver.keys import STORE
from shared import watch
from shared.alarm import Alarm, event_key, new_id
from shared.incidents import plan_incident
from shared.records import ActionRecord, DiskMark
from shared.settings import Settings
from shared.store import ActionStatus, AuditEntry
from shared.verify import Advice
from tests.integration.conftest import SEED_INSTANCE, seed_alarm
from tests.integration.test_receiver_inprocess import T0, record
from tests.support import wait_until

OPERATOR_TOKEN = "operator-token-7d1e0c4b9a"
WEBHOOK_TOKEN = "webhook-token-3f9a2b"
Client = TestClient[web.Request, web.Application]
MakeReceiver = Callable[..., Awaitable[Client]]
PAGES = (
    "/ui/",
    "/ui/incidents",
    "/ui/actions",
    "/ui/audit",
    "/ui/instances",
    f"/ui/instances/{SEED_INSTANCE}",
    "/ui/alarms",
)


@pytest.fixture
def env(vhost: str, sqlite_url: str) -> dict[str, str]:
    return {
        "RABBITMQ_URL": vhost,
        "DATABASE_URL": sqlite_url,
        "CLOUDAMQP_INSTANCE_ID": SEED_INSTANCE,
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
    }


@pytest.fixture
def make_receiver(env: dict[str, str], aiohttp_client: AiohttpClient) -> MakeReceiver:
    async def make(**overrides: str) -> Client:
        settings = Settings.from_env({k: v for k, v in {**env, **overrides}.items() if v is not None})
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def receiver(make_receiver: MakeReceiver) -> Client:
    return await make_receiver()


def csrf_of(html: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


async def login(client: Client, token: str, name: str = "alice") -> str:
    """Log in through the form; the CSRF token of the new session."""
    async with client.get("/ui/login") as resp:
        csrf = csrf_of(await resp.text())
    form = {"_csrf": csrf, "token": token, "name": name, "next": "/ui/"}
    async with client.post("/ui/login", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
    async with client.get("/ui/") as resp:
        assert resp.status == 200
        return csrf_of(await resp.text())


async def page(client: Client, path: str, **kwargs: Any) -> tuple[int, str, Any]:
    async with client.get(path, allow_redirects=False, **kwargs) as resp:
        return resp.status, await resp.text(), resp.headers


async def test_the_root_and_every_page_lead_to_the_login_until_one_logs_in(receiver: Client) -> None:
    status, _, headers = await page(receiver, "/")
    assert status == 302 and headers["Location"] == "/ui/"
    for path in PAGES:
        status, _, headers = await page(receiver, path)
        assert status == 303 and headers["Location"].startswith("/ui/login?next="), path
    status, html, headers = await page(receiver, "/ui/login")
    assert status == 200 and "<form" in html
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie


async def test_given_an_operator_login_then_every_page_renders_with_a_strict_csp_and_write_buttons(
    receiver: Client,
) -> None:
    store = receiver.app[STORE]
    await record(store, {"message": "m1", "value": 91, "alarm_type": "memory"}, T0)
    async with store.unit() as unit:  # an upgrade as the worker records it, and one with less said
        detail = {"plan_from": "hare-1", "plan_to": "rabbit-1", "rule": "memory", "cause": {"value": 91}}
        await unit.audit(
            AuditEntry("upgrade:1", T0, "autopilot", "automatic", "upgrade", SEED_INSTANCE, detail)
        )
        await unit.audit(
            AuditEntry("upgrade:2", T0 + 1, "autopilot", "automatic", "upgrade", SEED_INSTANCE, {})
        )
    await login(receiver, OPERATOR_TOKEN)

    for path in (*PAGES, "/ui/parked"):
        status, html, headers = await page(receiver, path)
        assert status == 200, (path, html[:500])
        assert headers["Content-Type"].startswith("text/html")
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe" not in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        assert "<script>" not in html and " style=" not in html and " on" + "click" not in html
    _, html, _ = await page(receiver, f"/ui/instances/{SEED_INSTANCE}")
    assert 'action="/ui/instances/' in html and ">Pause</button>" in html
    assert "rabbit-1 <span" in html and '<li class="here">rabbit-1</li>' in html  # plan and rung
    assert OPERATOR_TOKEN not in html and WEBHOOK_TOKEN not in html


async def test_given_a_wrong_token_then_the_login_is_refused_and_the_token_is_not_shown(
    receiver: Client,
) -> None:
    async with receiver.get("/ui/login") as resp:
        csrf = csrf_of(await resp.text())
    form = {"_csrf": csrf, "token": "not-the-token-at-all", "name": "mallory"}
    async with receiver.post("/ui/login", data=form, allow_redirects=False) as resp:
        html = await resp.text()
        assert resp.status == 401
    assert "not-the-token-at-all" not in html
    status, _, _ = await page(receiver, "/ui/")
    assert status == 303


async def test_a_form_post_without_the_csrf_token_is_refused_and_changes_nothing(receiver: Client) -> None:
    csrf = await login(receiver, OPERATOR_TOKEN)

    async with receiver.post(f"/ui/instances/{SEED_INSTANCE}/pause", data={"duration": "3600"}) as resp:
        assert resp.status == 403 and "CSRF" in await resp.text()
    wrong = {"duration": "3600", "_csrf": csrf[:-2] + "xx"}
    async with receiver.post(f"/ui/instances/{SEED_INSTANCE}/pause", data=wrong) as resp:
        assert resp.status == 403
    other_site = {"Origin": "http://evil.example"}
    good = {"duration": "3600", "_csrf": csrf}
    async with receiver.post(f"/ui/instances/{SEED_INSTANCE}/pause", data=good, headers=other_site) as resp:
        assert resp.status == 403
    assert await receiver.app[STORE].list_pauses(T0) == []

    async with receiver.post(f"/ui/instances/{SEED_INSTANCE}/pause", data=good) as resp:
        assert resp.status == 200 and "Paused: instance" in await resp.text()
    [paused] = await receiver.app[STORE].list_pauses(T0)
    assert (paused.scope, paused.operator) == (SEED_INSTANCE, "alice")


async def test_a_login_post_without_the_csrf_token_is_refused(receiver: Client) -> None:
    await page(receiver, "/ui/login")
    async with receiver.post("/ui/login", data={"token": OPERATOR_TOKEN}, allow_redirects=False) as resp:
        assert resp.status == 403
    status, _, _ = await page(receiver, "/ui/")
    assert status == 303


async def test_given_a_read_only_login_then_no_write_buttons_show_and_its_writes_are_refused(
    receiver: Client,
) -> None:
    csrf = await login(receiver, WEBHOOK_TOKEN, name="viewer")

    _, html, _ = await page(receiver, f"/ui/instances/{SEED_INSTANCE}")
    assert "Read-only login" in html and ">Pause</button>" not in html
    for path in (
        f"/ui/instances/{SEED_INSTANCE}/pause",
        "/ui/pause",
        "/ui/parked/purge",
        "/ui/actions/x/approve",
    ):
        async with receiver.post(path, data={"_csrf": csrf, "duration": "3600", "confirm": "yes"}) as resp:
            assert resp.status == 403, path
    assert await receiver.app[STORE].list_pauses(T0) == []


async def test_given_no_operator_token_then_the_console_needs_a_login_and_says_writes_are_disabled(
    make_receiver: MakeReceiver,
) -> None:
    client = await make_receiver(OPERATOR_TOKEN="", WEBHOOK_TOKEN="")
    status, html, _ = await page(client, "/ui/login")
    assert "Writes are disabled" in html
    status, _, _ = await page(client, "/ui/")
    assert status == 303

    csrf = await login(client, "")
    _, html, _ = await page(client, "/ui/actions")
    assert "Writes are disabled" in html and "Approve</button>" not in html
    async with client.post("/ui/pause", data={"_csrf": csrf, "duration": "60"}) as resp:
        assert resp.status == 403 and "OPERATOR_TOKEN is not set" in await resp.text()


async def test_an_alarm_message_with_markup_renders_as_text_on_every_page(receiver: Client) -> None:
    payload = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    await record(receiver.app[STORE], {"message": payload, "value": 85}, T0, status=ActionStatus.SKIPPED)
    await login(receiver, OPERATOR_TOKEN)

    _, listing, _ = await page(receiver, "/ui/incidents")
    [incident_id] = re.findall(r'href="/ui/incidents/([0-9a-f]{32})"', listing)
    _, detail, _ = await page(receiver, f"/ui/incidents/{incident_id}")
    for html in (listing, detail):
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


async def test_given_htmx_polling_then_only_the_live_region_is_answered(receiver: Client) -> None:
    await record(receiver.app[STORE], {"message": "polled", "value": 1}, T0)
    await login(receiver, OPERATOR_TOKEN)

    status, html, _ = await page(receiver, "/ui/incidents?status=open", headers={"HX-Request": "true"})

    assert status == 200 and html.lstrip().startswith('<div id="live"') and "<html" not in html
    assert "polled" in html


async def test_given_a_poll_after_the_session_ended_then_htmx_is_sent_to_the_login(receiver: Client) -> None:
    status, _, headers = await page(receiver, "/ui/incidents", headers={"HX-Request": "true"})

    assert status == 401 and headers["HX-Redirect"].startswith("/ui/login")


async def test_an_unknown_console_page_is_an_html_404_and_the_json_views_stay_json(receiver: Client) -> None:
    await login(receiver, OPERATOR_TOKEN)

    status, html, headers = await page(receiver, "/ui/no-such-page")
    assert status == 404 and headers["Content-Type"].startswith("text/html") and "404" in html
    status, html, headers = await page(receiver, "/ui/incidents/0123456789abcdef0123456789abcdef")
    assert status == 404 and "No incident with this id" in html
    status, _, headers = await page(receiver, "/no-such-thing")
    assert status == 404 and headers["Content-Type"].startswith("application/json")


async def test_the_console_pages_page_through_incidents_fifty_at_a_time(receiver: Client) -> None:
    store = receiver.app[STORE]
    for n in range(55):
        await record(store, {"message": f"incident-{n:02d}", "alarm_type": "disk"}, T0 + n)
    await login(receiver, OPERATOR_TOKEN)

    _, first, _ = await page(receiver, "/ui/incidents?alarm_type=disk")
    _, second, _ = await page(receiver, "/ui/incidents?alarm_type=disk&offset=50")
    _, none, _ = await page(receiver, "/ui/incidents?alarm_type=memory")

    assert first.count('href="/ui/incidents/') == 50 and "incident-54" in first and "older →" in first
    assert second.count('href="/ui/incidents/') == 5 and "incident-00" in second and "older →" not in second
    assert "No incidents match these filters" in none


async def test_given_a_session_key_then_logins_survive_a_restart_but_not_a_changed_operator_token(
    make_receiver: MakeReceiver,
) -> None:
    key = "QmVuY2gtY29uc29sZS1zZXNzaW9uLWtleS0zMmJ5dGU="
    first = await make_receiver(CONSOLE_SESSION_KEY=key)
    await login(first, OPERATOR_TOKEN)
    [cookie] = [c for c in first.session.cookie_jar if c.key == "autopilot_console"]
    sent = {"Cookie": f"autopilot_console={cookie.value}"}

    same = await make_receiver(CONSOLE_SESSION_KEY=key)
    rotated = await make_receiver(CONSOLE_SESSION_KEY=key, OPERATOR_TOKEN="another-operator-token-8a7b6c")
    other_key = await make_receiver()

    assert (await page(same, "/ui/", headers=sent))[0] == 200
    assert (await page(rotated, "/ui/", headers=sent))[0] == 303
    assert (await page(other_key, "/ui/", headers=sent))[0] == 303


async def test_the_audit_page_filters_by_act_who_and_target(receiver: Client) -> None:
    store = receiver.app[STORE]
    async with store.unit() as unit:
        await unit.audit(
            AuditEntry("pause:1", T0, "alice", "operator", "pause", SEED_INSTANCE, {"reason": "r1"})
        )
        await unit.audit(
            AuditEntry("resume:1", T0 + 1, "bob", "operator", "resume", SEED_INSTANCE, {"reason": "r2"})
        )
        await unit.audit(AuditEntry("pause:2", T0 + 2, "bob", "operator", "pause", "*", {"reason": "r3"}))
    await login(receiver, OPERATOR_TOKEN)

    async def reasons(query: str) -> list[str]:
        _, html, _ = await page(receiver, f"/ui/audit{query}")
        return re.findall(r"&#34;(r\d)&#34;", html)

    assert await reasons("") == ["r3", "r2", "r1"]
    assert await reasons("?act=pause") == ["r3", "r1"]
    assert await reasons("?actor=bob&act=pause") == ["r3"]
    assert await reasons(f"?target={SEED_INSTANCE}") == ["r2", "r1"]


async def test_the_instance_page_shows_the_watchdogs_sampled_usage_and_the_downgrade_advice(
    receiver: Client,
) -> None:
    mb = 1_000_000
    evidence = {
        "peak_mem_used": 300 * mb,
        "lower_plan_mem_limit_assumed": 500 * mb,
        "peak_of_lower_plan": 0.6,
        "quiet_seconds": 604800.0,
    }
    async with receiver.app[STORE].unit() as unit:
        for slot in range(3):
            sample = watch.Sample("rabbit@n1", (slot + 1) * 100 * mb, 1000 * mb, 5000 * mb, 50 * mb, 10, 2)
            await watch.record_samples(unit.tx, SEED_INSTANCE, [sample], slot, time.time() + slot)
        advice = Advice(SEED_INSTANCE, "hare-1", "bunny-1", evidence)
        await watch.record_advice(unit.tx, "advice-1", "upgrade:x", advice, time.time())
    await login(receiver, WEBHOOK_TOKEN)

    status, html, _ = await page(receiver, f"/ui/instances/{SEED_INSTANCE}")

    assert status == 200
    assert "rabbit@n1" in html and "memory 30.0% of mem_limit" in html and "over 3 samples" in html
    assert html.count('<svg class="spark"') == 1  # one sparkline: one node
    # The chart draws the node's memory and its disk headroom: a line in each.
    assert html.count('<g class="series" data-node="rabbit@n1">') == 2
    assert "hare-1 → bunny-1 would do" in html and "Nothing was changed" in html


async def test_the_instance_page_shows_the_disk_history_beside_the_plan_history(receiver: Client) -> None:
    store = receiver.app[STORE]
    body = {"alarm_type": "disk", "value": 93, "instance_id": SEED_INSTANCE}
    alarm = Alarm(new_id(), T0, body, event_key(body))
    resized = "Automatic disk resize triggered by disk alarm (93%); every node now has 25 GB of extra disk"
    async with store.unit() as unit:  # a resize as the worker records it, and what it read and saw
        recorded = await unit.record_event(alarm, SEED_INSTANCE, plan_incident(alarm, SEED_INSTANCE), T0)
        await unit.write_action(
            ActionRecord(
                alarm, ActionStatus.SUCCEEDED, T0, recorded.incident_id, SEED_INSTANCE, None, resized,
                kind="resize_disk", extra_disk_from=0, extra_disk_to=25,
            )
        )  # fmt: skip
        await unit.record_disk(
            [
                DiskMark("read:x", SEED_INSTANCE, T0 - 60, "read", 0, 0),
                DiskMark("autopilot:x", SEED_INSTANCE, T0, "autopilot", 0, 25, alarm.event_id),
                DiskMark("seen:x", SEED_INSTANCE, T0 + 60, "seen", 25, 50),
            ]
        )
    await login(receiver, WEBHOOK_TOKEN)

    status, html, _ = await page(receiver, f"/ui/instances/{SEED_INSTANCE}")

    assert status == 200
    plan, disk = html.index('id="plan-history"'), html.index('id="disk-history"')
    assert plan < disk and html.index('class="two histories"') < plan  # side by side
    history = html[disk : html.index("</section>", disk)]
    rows = re.findall(r"<tr><td class=\"t\">.*?</tr>", history)
    assert len(rows) == 3  # newest first
    assert "25 → 50 GB" in rows[0] and "resized outside the autopilot (seen)" in rows[0]
    assert "0 → 25 GB" in rows[1] and "resized by the autopilot" in rows[1] and "succeeded" in rows[1]
    assert "0 GB" in rows[2] and "first read" in rows[2]
    assert '<td id="extra-disk">50 GB' in html  # the latest known
    assert "disk 0 → 25 GB" in html  # the recent actions say what the resize asked for
    _, actions, _ = await page(receiver, "/ui/actions")
    assert "disk 0 → 25 GB" in actions


async def test_the_overview_counts_what_waits_in_the_fast_lane(receiver: Client) -> None:
    # No worker runs: the first upgrade-worthy alarm of the instance waits in the fast lane.
    async with receiver.post(f"/cloudamqp/alarm/{WEBHOOK_TOKEN}", json=seed_alarm()) as resp:
        assert resp.status == 202
    await login(receiver, WEBHOOK_TOKEN)

    async def shown() -> bool:
        status, html, _ = await page(receiver, "/ui/")
        return status == 200 and "cloudamqp.alarms.fast</code>: 1 waiting" in html

    await wait_until(shown, timeout=10, what="the fast lane's depth on the overview")


PROXIED = {
    "Origin": "https://autopilot.example.com",
    "X-Forwarded-Host": "autopilot.example.com",
    "X-Forwarded-Proto": "https",
}


async def test_given_forwarded_headers_then_the_console_works_behind_the_proxy_and_shows_its_url(
    make_receiver: MakeReceiver,
) -> None:
    behind = await make_receiver(FORWARDED_HEADERS="true")
    csrf = await login(behind, OPERATOR_TOKEN)
    good = {"duration": "3600", "_csrf": csrf}

    async with behind.post(f"/ui/instances/{SEED_INSTANCE}/pause", data=good, headers=PROXIED) as resp:
        assert resp.status == 200 and "Paused: instance" in await resp.text()
    status, html, _ = await page(behind, "/ui/", headers=PROXIED)
    assert status == 200
    assert "https://autopilot.example.com/cloudamqp/alarm/&lt;WEBHOOK_TOKEN&gt;" in html
    assert WEBHOOK_TOKEN not in html


async def test_without_forwarded_headers_a_proxy_s_origin_is_another_site(
    make_receiver: MakeReceiver,
) -> None:
    direct = await make_receiver()
    csrf = await login(direct, OPERATOR_TOKEN)
    good = {"duration": "3600", "_csrf": csrf}

    async with direct.post(f"/ui/instances/{SEED_INSTANCE}/pause", data=good, headers=PROXIED) as resp:
        assert resp.status == 403
    status, html, _ = await page(direct, "/ui/", headers=PROXIED)
    assert "https://autopilot.example.com" not in html and "/cloudamqp/alarm/&lt;WEBHOOK_TOKEN&gt;" in html
