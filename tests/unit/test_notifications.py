"""The pure parts of notifications: ids, signatures (checked against the ``standardwebhooks``
package), channel formats, routing, the answer's verdict, and configuration mistakes."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

import pytest
import standardwebhooks

from shared.alarm import Alarm
from shared.flapping import FlapMark
from shared.notifications import (
    ChannelKind,
    Endpoint,
    EventType,
    action_notice,
    alarm_data,
    endpoint_id,
    incident_notice,
    notification_id,
    parse_event_types,
    parse_webhook_secret,
    quiet_resolve_notice,
    route,
)
from shared.policy_file import PolicyError
from shared.settings import ConfigError, Settings
from tests.support import verify_standard_webhook
from worker import channels
from worker.notify_config import env_endpoints, parse_notify

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
ALARM = Alarm("ev-1", 1_700_000_000.0, {"alarm_type": "memory", "value": 85, "instance_id": "i-1"}, "key")


def payload(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": event_type, "timestamp": "2026-12-03T10:00:00.000Z", "data": data}


def succeeded() -> dict[str, Any]:
    action = {
        "action_id": "ev-1",
        "status": "succeeded",
        "instance_id": "i-1",
        "alarm_type": "memory",
        "incident_id": "inc-1",
        "from_plan": "bunny-1",
        "plan": "bunny-2",
        "attempts": 1,
    }
    notice = action_notice(action, alarm_data(ALARM))
    assert notice is not None
    return payload(notice.type, notice.data)


def test_a_notification_id_is_the_same_for_the_same_cause_and_differs_by_event_type() -> None:
    assert notification_id("incident.opened", "inc-1") == notification_id("incident.opened", "inc-1")
    assert notification_id("incident.opened", "inc-1") != notification_id("incident.resolved", "inc-1")
    assert notification_id("incident.opened", "inc-1").startswith("msg_")


def test_given_a_webhook_request_then_the_standardwebhooks_package_and_our_own_check_accept_it() -> None:
    endpoint = Endpoint("webhook-x", ChannelKind.WEBHOOK, "http://127.0.0.1/hook", SECRET)
    body = succeeded()

    request = channels.webhook_request(endpoint, "msg_1", body, time.time())

    assert standardwebhooks.Webhook(SECRET).verify(request.body, request.headers) == body
    assert verify_standard_webhook(SECRET, request.headers, request.body, time.time()) is None
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["webhook-signature"].startswith("v1,")


def test_given_another_secret_or_a_changed_body_then_the_signature_does_not_verify() -> None:
    endpoint = Endpoint("webhook-x", ChannelKind.WEBHOOK, "http://127.0.0.1/hook", SECRET)
    request = channels.webhook_request(endpoint, "msg_1", succeeded(), time.time())
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()

    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(request.body, request.headers)
    assert verify_standard_webhook(SECRET, request.headers, request.body + b" ", time.time()) is not None


def test_an_incident_notice_is_made_only_for_opened_and_resolved() -> None:
    opened = incident_notice("opened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 1.0)
    assert opened is not None and opened.type is EventType.INCIDENT_OPENED and opened.key == "inc-1"
    assert incident_notice("grouped", "inc-1", "k", ALARM, "i-1", 1.0) is None
    assert incident_notice("none", None, "k", ALARM, "i-1", 1.0) is None


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("succeeded", "action.succeeded"),
        ("dry_run", "action.dry_run"),
        ("failed", "action.failed"),
        ("unconfirmed", "action.unconfirmed"),
        ("skipped", None),
        ("retrying", None),
        ("in_progress", None),
    ],
)
def test_which_action_statuses_are_news(status: str, event: str | None) -> None:
    notice = action_notice({"action_id": "a", "status": status}, {})
    assert (notice.type.value if notice else None) == event


def test_slack_says_instance_what_and_plans_and_links_to_the_incident_when_public_url_is_set() -> None:
    endpoint = Endpoint("slack-x", ChannelKind.SLACK, "https://hooks.slack.com/services/T/B/secret")

    request = channels.slack_request(endpoint, succeeded(), "https://autopilot.example.com")
    message = json.loads(request.body)

    assert message["text"] == "Upgraded i-1: bunny-1 → bunny-2 (memory alarm, value 85)"
    blocks = json.dumps(message["blocks"], ensure_ascii=False)
    assert "i-1" in blocks and "bunny-1 → bunny-2" in blocks
    assert "https://autopilot.example.com/ui/incidents/inc-1" in blocks
    plain = json.loads(channels.slack_request(endpoint, succeeded(), None).body)
    assert "autopilot.example.com" not in json.dumps(plain)


def test_pagerduty_triggers_and_resolves_incidents_by_dedup_key_and_sends_actions_as_change_events() -> None:
    endpoint = Endpoint("pd-x", ChannelKind.PAGERDUTY, "http://pd", "ROUTING")
    opened = incident_notice("opened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 1.0)
    resolved = incident_notice("resolved", "inc-1", "memory alarm on i-1", ALARM, "i-1", 2.0)
    assert opened is not None and resolved is not None

    trigger = channels.pagerduty_request(endpoint, payload(opened.type, opened.data), None)
    resolve = channels.pagerduty_request(endpoint, payload(resolved.type, resolved.data), None)
    change = channels.pagerduty_request(endpoint, succeeded(), None)

    t = json.loads(trigger.body)
    assert (
        trigger.url == "http://pd/v2/enqueue" and t["event_action"] == "trigger" and t["dedup_key"] == "inc-1"
    )
    assert (
        t["payload"]["severity"] == "error"
        and t["payload"]["source"] == "i-1"
        and t["routing_key"] == "ROUTING"
    )
    assert json.loads(resolve.body) == {
        "routing_key": "ROUTING",
        "event_action": "resolve",
        "dedup_key": "inc-1",
    }
    assert (
        change.url == "http://pd/v2/change/enqueue"
        and "Upgraded" in json.loads(change.body)["payload"]["summary"]
    )


MARK = FlapMark(since=1_700_000_000.0, transitions=9, window=3600.0, quiet=900.0, episodes=1)


def test_a_flapping_incident_is_told_once_per_episode_and_resolved_once_per_episode() -> None:
    opened = incident_notice("opened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 1.0)
    resolved = incident_notice("resolved", "inc-1", "memory alarm on i-1", ALARM, "i-1", 2.0)
    flapping = incident_notice("reopened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 3.0, mark=MARK)
    final = quiet_resolve_notice("inc-1", "memory alarm on i-1", "i-1", "memory", 4.0, MARK)
    again = incident_notice(
        "reopened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 5.0, mark=replace(MARK, episodes=2)
    )
    assert opened is not None and resolved is not None and flapping is not None and again is not None

    assert flapping.type is EventType.INCIDENT_FLAPPING and final.type is EventType.INCIDENT_RESOLVED
    assert len({n.id for n in (opened, resolved, flapping, final, again)}) == 5
    incident = flapping.data["incident"]
    assert (incident["status"], incident["flapping"]) == ("open", True)
    assert incident["flap"] == {
        "since": "2023-11-14T22:13:20.000Z",
        "transitions": 9,
        "window_seconds": 3600.0,
        "quiet_seconds": 900.0,
        "episodes": 1,
    }
    assert (opened.data["incident"]["flapping"], opened.data["incident"]["flap"]) == (False, None)
    assert final.data["alarm"] is None and final.data["incident"]["status"] == "resolved"
    assert final.data["incident"]["at"] == "1970-01-01T00:00:04.000Z"
    assert incident_notice("refired", "inc-1", "k", ALARM, "i-1", 1.0, mark=MARK) is None
    assert incident_notice("resolving", "inc-1", "k", ALARM, "i-1", 1.0, mark=MARK) is None
    assert parse_event_types(["incident.*"]) == frozenset(
        {"incident.opened", "incident.resolved", "incident.flapping"}
    )


def test_pagerduty_is_triggered_by_incident_flapping_and_resolved_by_its_final_resolve_under_one_key() -> (
    None
):
    endpoint = Endpoint("pd-x", ChannelKind.PAGERDUTY, "http://pd", "ROUTING")
    flapping = incident_notice("reopened", "inc-1", "memory alarm on i-1", ALARM, "i-1", 3.0, mark=MARK)
    final = quiet_resolve_notice("inc-1", "memory alarm on i-1", "i-1", "memory", 4.0, MARK)
    assert flapping is not None

    trigger = json.loads(
        channels.pagerduty_request(endpoint, payload(flapping.type, flapping.data), None).body
    )
    resolve = json.loads(channels.pagerduty_request(endpoint, payload(final.type, final.data), None).body)

    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", "inc-1")
    assert trigger["payload"]["summary"] == (
        "Incident flapping on i-1: memory alarm on i-1 (9 transitions in 60 min; resolves after 15 min quiet)"
    )
    assert resolve == {"routing_key": "ROUTING", "event_action": "resolve", "dedup_key": "inc-1"}
    slack = json.loads(
        channels.slack_request(
            Endpoint("s", ChannelKind.SLACK, "http://s"), payload(final.type, final.data), None
        ).body
    )
    assert slack["text"] == "Incident resolved on i-1: memory alarm on i-1 (after flapping: quiet for 15 min)"
    assert "None" not in json.dumps(slack["blocks"])


@pytest.mark.parametrize(
    ("alarm_type", "severity"),
    [("server_unreachable", "critical"), ("netsplit", "critical"), ("memory", "error"), ("disk", "error"),
     ("cpu", "warning"), ("queue", "warning"), ("notice", "info"), (None, "warning"), ("odd", "warning")],
)  # fmt: skip
def test_pagerduty_severity_by_alarm_type(alarm_type: str | None, severity: str) -> None:
    assert channels.severity(alarm_type) == severity


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (202, "delivered"), (204, "delivered"), (410, "gone"), (429, "retry"),
     (408, "retry"), (500, "retry"), (503, "retry"), (400, "permanent"), (401, "permanent"),
     (404, "permanent"), (301, "permanent")],
)  # fmt: skip
def test_what_an_answer_means(status: int, verdict: str) -> None:
    assert channels.verdict(status).value == verdict


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert channels.retry_after("7", 0.0) == 7.0
    assert channels.retry_after("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert channels.retry_after(None, 0.0) is None and channels.retry_after("soon", 0.0) is None


def test_routing_by_event_type_and_instance() -> None:
    everything = Endpoint("a", ChannelKind.WEBHOOK, "u", SECRET)
    incidents = Endpoint("b", ChannelKind.SLACK, "u", events=parse_event_types(["incident.*"]))
    prod = Endpoint("c", ChannelKind.PAGERDUTY, "u", "k", instances=frozenset({"prod"}))

    def ids(event: str, instance: str | None) -> list[str]:
        return [e.id for e in route([everything, incidents, prod], event, instance)]

    assert ids("incident.opened", "prod") == ["a", "b", "c"]
    assert ids("action.succeeded", "dev") == ["a"]
    assert ids("incident.resolved", None) == ["a", "b"]


def test_an_endpoint_id_reveals_neither_url_nor_secret_and_is_stable() -> None:
    made = endpoint_id(ChannelKind.SLACK, "https://hooks.slack.com/services/T/B/secret")
    assert made == endpoint_id(ChannelKind.SLACK, "https://hooks.slack.com/services/T/B/secret")
    assert made.startswith("slack-") and "secret" not in made and "hooks" not in made


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NOTIFY_WEBHOOK_URL": "http://a/h"}, "NOTIFY_WEBHOOK_SECRET"),
        ({"NOTIFY_WEBHOOK_URL": "ftp://a/h", "NOTIFY_WEBHOOK_SECRET": SECRET}, "NOTIFY_WEBHOOK_URL"),
        ({"NOTIFY_WEBHOOK_URL": "http://a/h", "NOTIFY_WEBHOOK_SECRET": "whsec_!!"}, "NOTIFY_WEBHOOK_SECRET"),
        ({"NOTIFY_WEBHOOK_SECRET": "plain-secret"}, "NOTIFY_WEBHOOK_SECRET"),
        ({"NOTIFY_SLACK_URL": "hooks.slack.com/T/B/secret"}, "NOTIFY_SLACK_URL"),
        ({"NOTIFY_PAGERDUTY_ROUTING_KEY": "has space"}, "NOTIFY_PAGERDUTY_ROUTING_KEY"),
        ({"NOTIFY_EVENTS": "incident.opened,upgrade.done"}, "NOTIFY_EVENTS"),
        ({"NOTIFY_TIMEOUT": "0"}, "NOTIFY_TIMEOUT"),
        ({"NOTIFY_MAX_ATTEMPTS": "0"}, "NOTIFY_MAX_ATTEMPTS"),
        ({"PUBLIC_URL": "autopilot.example.com"}, "PUBLIC_URL"),
    ],
)
def test_a_bad_channel_setting_stops_at_start_naming_the_variable_and_never_the_secret(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)

    message = str(raised.value)
    assert message.startswith(named) and "\n" not in message
    secrets = {
        "NOTIFY_WEBHOOK_URL",
        "NOTIFY_WEBHOOK_SECRET",
        "NOTIFY_SLACK_URL",
        "NOTIFY_PAGERDUTY_ROUTING_KEY",
    }
    for name, value in env.items():
        if name in secrets:
            assert value not in message


def test_public_dict_shows_whether_secrets_are_set_and_webhook_urls_without_path() -> None:
    settings = Settings.from_env(
        {
            "NOTIFY_WEBHOOK_URL": "https://hooks.example.com/t0ken?k=v",
            "NOTIFY_WEBHOOK_SECRET": SECRET,
            "NOTIFY_SLACK_URL": "https://hooks.slack.com/services/T/B/slacksecret",
            "NOTIFY_PAGERDUTY_ROUTING_KEY": "routingsecret",
        }
    )

    shown = json.dumps(settings.public_dict(), default=str)
    for secret in (SECRET, "t0ken", "slacksecret", "routingsecret"):
        assert secret not in shown
    assert "slacksecret" not in repr(settings) and "routingsecret" not in repr(settings)
    assert [e.kind.value for e in env_endpoints(settings)] == ["webhook", "slack", "pagerduty"]


def test_whsec_secrets_must_be_base64_of_a_key_of_reasonable_length() -> None:
    assert len(parse_webhook_secret(SECRET)) == 32
    for bad in ("whsec_", "whsec_" + base64.b64encode(b"short").decode(), "abc"):
        with pytest.raises(ValueError):
            parse_webhook_secret(bad)


def test_notify_tables_route_by_event_and_instance() -> None:
    [hook, slack, pd] = parse_notify(
        [
            {"channel": "webhook", "url": "https://a/h", "secret": SECRET, "events": ["action.*"]},
            {"channel": "slack", "url": "https://hooks.slack.com/x", "instances": ["prod"]},
            {"channel": "pagerduty", "routing_key": "k", "events": ["incident.opened", "incident.resolved"]},
        ]
    )

    assert (
        hook.events is not None and "action.succeeded" in hook.events and "incident.opened" not in hook.events
    )
    assert slack.instances == frozenset({"prod"}) and slack.events is None
    assert pd.url == "https://events.pagerduty.com" and pd.secret == "k"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"channel": "email", "url": "https://a"}, "notify 1: key 'channel'"),
        ({"channel": "webhook", "url": "https://a"}, "notify 1: key 'secret'"),
        ({"channel": "webhook", "url": "https://a", "secret": "whsec_nope!"}, "notify 1: key 'secret'"),
        ({"channel": "slack", "url": "hooks.slack.com"}, "notify 1: key 'url'"),
        ({"channel": "pagerduty"}, "notify 1: key 'routing_key'"),
        ({"channel": "slack", "url": "https://a", "events": ["nope"]}, "notify 1: key 'events'"),
        ({"channel": "slack", "url": "https://a", "instances": "prod"}, "notify 1: key 'instances'"),
        ({"channel": "slack", "url": "https://a", "colour": "red"}, "notify 1: key 'colour'"),
    ],
)
def test_a_bad_notify_table_is_one_line_naming_file_table_and_key_never_the_secret(
    table: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_notify([table], "policy.toml")

    message = str(raised.value)
    assert message.startswith("POLICY_FILE policy.toml: ") and expected in message
    assert "whsec_nope!" not in message


def test_given_the_longest_texts_the_contract_allows_then_each_channel_fits_its_limits() -> None:
    long_alarm = Alarm(
        "ev-2",
        1_700_000_000.0,
        {"alarm_type": "m" * 300, "value": "v" * 8000, "instance_id": "i" * 300, "message": "x" * 600},
        "key",
    )
    opened = incident_notice("opened", "inc-" + "9" * 400, "k" * 600, long_alarm, "i" * 300, 1.0)
    assert opened is not None
    body = payload(opened.type, opened.data)
    slack = json.loads(channels.slack_request(Endpoint("s", ChannelKind.SLACK, "http://s"), body, None).body)
    pd_endpoint = Endpoint("pd", ChannelKind.PAGERDUTY, "http://pd", "ROUTING")
    trigger = json.loads(channels.pagerduty_request(pd_endpoint, body, None).body)

    assert len(slack["text"]) <= 3000
    for block in slack["blocks"]:
        assert len(block.get("text", {}).get("text", "")) <= 3000
        assert len(block.get("fields", [])) <= 10
        assert all(len(field["text"]) <= 2000 for field in block.get("fields", []))
    assert len(trigger["payload"]["summary"]) <= 1024 and len(trigger["dedup_key"]) <= 255
    assert len(trigger["payload"]["source"]) <= 255


def priced(status: str = "succeeded", **more: Any) -> dict[str, Any]:
    action = {
        "action_id": "ev-2", "status": status, "instance_id": "i-1", "alarm_type": "memory",
        "from_plan": "bunny-1", "plan": "rabbit-1", "from_price": 99.0, "to_price": 299.0, **more,
    }  # fmt: skip
    notice = action_notice(action, alarm_data(ALARM))
    assert notice is not None
    return payload(notice.type, notice.data)


PRICE = "bunny-1 → rabbit-1, $99 → $299 a month, +$200"


def test_an_upgrades_price_is_in_every_channels_payload() -> None:
    body = priced()
    assert body["data"]["action"]["price"] == {
        "from_plan": "bunny-1", "to_plan": "rabbit-1", "from_price": 99.0, "to_price": 299.0,
        "difference": 200.0, "text": PRICE,
    }  # fmt: skip
    webhook = Endpoint("webhook-x", ChannelKind.WEBHOOK, "http://127.0.0.1/hook", SECRET)
    sent = json.loads(channels.webhook_request(webhook, "msg_2", body, time.time()).body)
    assert sent["data"]["action"]["price"]["text"] == PRICE
    slack = Endpoint("slack-x", ChannelKind.SLACK, "https://hooks.slack.com/services/T/B/secret")
    message = json.loads(channels.slack_request(slack, body, None).body)
    assert message["text"] == f"Upgraded i-1: {PRICE} (memory alarm, value 85)"
    assert PRICE in json.dumps(message["blocks"], ensure_ascii=False)
    pagerduty = Endpoint("pd-x", ChannelKind.PAGERDUTY, "http://pd", "ROUTING")
    event = json.loads(channels.pagerduty_request(pagerduty, body, None).body)
    assert event["payload"]["custom_details"]["action"]["price"]["text"] == PRICE
    assert PRICE in event["payload"]["summary"]


@pytest.mark.parametrize(
    ("reason", "event"),
    [
        ("over_budget", "action.skipped"),
        ("unknown_plan", "action.skipped"),
        ("not_in_place", "action.skipped"),
        ("below_threshold", None),
        ("cooling_down", None),
    ],
)
def test_a_skip_for_what_the_upgrade_would_buy_or_cost_is_news(reason: str, event: str | None) -> None:
    notice = action_notice({"action_id": "a", "status": "skipped", "reason": reason}, {})
    assert (notice.type.value if notice else None) == event


def test_an_over_budget_skip_says_why_in_its_text() -> None:
    detail = "rabbit-1 costs $299 a month, over MAX_MONTHLY_PRICE $200"
    body = priced("skipped", reason="over_budget", detail=detail)
    assert body["type"] == "action.skipped" and body["data"]["action"]["price"]["text"] == PRICE
    assert channels.summary(body) == f"Upgrade of i-1 not made (over_budget): {detail}"
