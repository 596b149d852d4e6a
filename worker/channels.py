"""What each channel is sent, and what its answer means.

Pure builders turn a notification (its id and ``{"type", "timestamp", "data"}`` body) into
one HTTP request per channel: a Standard Webhooks delivery, a Slack incoming-webhook message,
a PagerDuty Events API v2 event. ``verdict`` classifies the answer; ``send`` is the thin
adapter that makes the request. Errors and logs never carry a URL, secret or routing key.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp

from shared.errors import RetryableError
from shared.notifications import ChannelKind, Endpoint, EventType, parse_webhook_secret

USER_AGENT = "cloudamqp-autopilot"
SUMMARY_LIMIT = 1024  # PagerDuty's limit on payload.summary
DEDUP_KEY_LIMIT = 255  # PagerDuty's limit on dedup_key
# Slack's: a message's text (40,000; longer is cut by Slack, we cut it first), a section's text
# 3,000, each of at most 10 fields 2,000. Past them Slack refuses the whole message with a 400,
# which would park the notification; the alarm's text is cut instead.
SLACK_TEXT_LIMIT = 3000
SLACK_FIELD_LIMIT = 2000
# PagerDuty refuses an event over 512 KB; custom_details is the alarm's data, cut past this.
DETAILS_LIMIT = 64 * 1024


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _details(data: Any) -> Any:
    """PagerDuty's custom_details: the data as is, or its JSON cut to ``DETAILS_LIMIT``."""
    text = _json(data).decode()
    return data if len(text) <= DETAILS_LIMIT else {"truncated": cut(text, DETAILS_LIMIT)}


@dataclass(frozen=True)
class Request:
    url: str
    headers: dict[str, str]
    body: bytes


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed by the ``whsec_`` secret."""
    key = parse_webhook_secret(secret)
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def webhook_request(endpoint: Endpoint, msg_id: str, payload: dict[str, Any], now: float) -> Request:
    """Standard Webhooks: the body as is; the timestamp is the send time (receivers reject old ones)."""
    assert endpoint.secret is not None
    body = _json(payload)
    timestamp = int(now)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(endpoint.secret, msg_id, timestamp, body),
    }
    return Request(endpoint.url, headers, body)


# The test notification ``autopilot check --send-test`` sends (its type: ``autopilot.test``).
TEST_EVENT = "autopilot.test"
TEST_TEXT = "Test notification from `autopilot check --send-test`: nothing happened, no action is needed"

# --- what happened, in words ---------------------------------------------------------------


def _facts(payload: dict[str, Any]) -> dict[str, Any]:
    data = payload.get("data") or {}
    action = data.get("action") or {}
    incident = data.get("incident") or {}
    alarm = data.get("alarm") or {}
    return {
        "instance": action.get("instance_id")
        or incident.get("instance_id")
        or alarm.get("instance_id")
        or "?",
        "alarm_type": alarm.get("alarm_type") or action.get("alarm_type") or incident.get("alarm_type"),
        "value": alarm.get("value"),
        "title": incident.get("title") or alarm.get("message"),
        "from": action.get("from_plan"),
        "to": action.get("to_plan"),
        "detail": action.get("detail") or data.get("error"),
        "incident_id": incident.get("id") or action.get("incident_id"),
        "reason": action.get("reason"),
        # "bunny-1 → rabbit-1, $99 → $299 a month, +$200", where the prices are known
        "price": price.get("text") if isinstance(price := action.get("price"), dict) else None,
        "flap": incident.get("flap") or {},
        "kind": action.get("kind"),
        "disk_from": action.get("extra_disk_from"),
        "disk_to": action.get("extra_disk_to"),
    }


def _flapping(flap: dict[str, Any]) -> str:
    """``9 transitions in 60 min; resolves after 15 min quiet``."""
    window, quiet = flap.get("window_seconds") or 0, flap.get("quiet_seconds") or 0
    return f"{flap.get('transitions')} transitions in {_span(window)}; resolves after {_span(quiet)} quiet"


def _span(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _disk_sizes(f: dict[str, Any]) -> str:
    """``extra disk 25 → 50 GB``: a disk resize's sizes, as far as they are known."""
    before = f"{f['disk_from']}" if f["disk_from"] is not None else "?"
    after = f"{f['disk_to']} GB" if f["disk_to"] is not None else "the next size up"
    return f"extra disk {before} → {after}"


def _disk_summary(event_type: str, f: dict[str, Any], cause: str) -> str | None:
    """What a disk resize's event says (None: not a disk resize, or no action event)."""
    if f["kind"] != "resize_disk":
        return None
    sizes, instance = _disk_sizes(f), f["instance"]
    lines: dict[str, str] = {
        EventType.ACTION_SUCCEEDED: f"Resized the disk of {instance}: {sizes}{cause}",
        EventType.ACTION_DRY_RUN: f"Dry run: would resize the disk of {instance}: {sizes}{cause}",
        EventType.ACTION_FAILED: f"Disk resize of {instance} ({sizes}) failed: {f['detail']}",
        EventType.ACTION_UNCONFIRMED: f"Disk resize of {instance} ({sizes}) unconfirmed: {f['detail']}",
        EventType.ACTION_AWAITING_APPROVAL: f"Disk resize of {instance} ({sizes}) awaits approval",
    }
    return lines.get(event_type)


def summary(payload: dict[str, Any]) -> str:
    """One line on what happened (Slack's text, PagerDuty's summary)."""
    f = _facts(payload)
    plans = f["price"] or f"{f['from'] or '?'} → {f['to'] or '?'}"
    cause = f" ({f['alarm_type']} alarm, value {f['value']})" if f["alarm_type"] else ""
    lines: dict[str, str] = {
        EventType.INCIDENT_OPENED: f"Incident opened on {f['instance']}: {f['title']}",
        EventType.INCIDENT_RESOLVED: f"Incident resolved on {f['instance']}: {f['title']}"
        + (f" (after flapping: quiet for {_span(f['flap'].get('quiet_seconds') or 0)})" if f["flap"] else ""),
        EventType.INCIDENT_FLAPPING: f"Incident flapping on {f['instance']}: {f['title']}"
        + (f" ({_flapping(f['flap'])})" if f["flap"] else ""),
        EventType.ACTION_SUCCEEDED: f"Upgraded {f['instance']}: {plans}{cause}",
        EventType.ACTION_DRY_RUN: f"Dry run: would upgrade {f['instance']}: {plans}{cause}",
        EventType.ACTION_FAILED: f"Upgrade of {f['instance']} to {f['to']} failed: {f['detail']}",
        EventType.ACTION_UNCONFIRMED: f"Upgrade of {f['instance']} to {f['to']} unconfirmed: {f['detail']}",
        EventType.ALARM_PARKED: f"Alarm parked in cloudamqp.alarms.dead: {f['detail']}",
        EventType.ACTION_AWAITING_APPROVAL: f"Upgrade of {f['instance']} ({plans}) awaits approval",
        EventType.ACTION_SKIPPED: f"Upgrade of {f['instance']} not made ({f['reason']}): {f['detail']}",
        TEST_EVENT: TEST_TEXT,
        EventType.ADVICE_DOWNGRADE: f"{f['instance']} could move down: {plans}",
    }
    event_type = str(payload.get("type"))
    text = _disk_summary(event_type, f, cause) or lines.get(event_type, f"{event_type} on {f['instance']}")
    return cut(text, SUMMARY_LIMIT)


def console_link(payload: dict[str, Any], public_url: str | None) -> str | None:
    """The console page of the incident (or the actions page) when ``PUBLIC_URL`` is set."""
    if not public_url:
        return None
    incident_id = _facts(payload)["incident_id"]
    return f"{public_url}/ui/incidents/{incident_id}" if incident_id else f"{public_url}/ui/actions"


def slack_request(endpoint: Endpoint, payload: dict[str, Any], public_url: str | None) -> Request:
    """``text`` (the notification preview) plus ``blocks`` laid out for a phone."""
    f = _facts(payload)
    text = summary(payload)
    texts = [f"*Instance*\n{f['instance']}", f"*What*\n{payload.get('type')}"]
    if f["to"]:
        plans = f["price"] or f"{f['from'] or '?'} → {f['to']}"
        texts.append(f"*Plan*\n{plans}")
    if f["kind"] == "resize_disk":
        texts.append(f"*Disk*\n{_disk_sizes(f)}")
    if f["alarm_type"]:
        value = "" if f["value"] is None else f" {f['value']}"
        texts.append(f"*Alarm*\n{f['alarm_type']}{value}")
    fields = [{"type": "mrkdwn", "text": cut(t, SLACK_FIELD_LIMIT)} for t in texts]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{cut(text, SLACK_TEXT_LIMIT - 2)}*"}},
        {"type": "section", "fields": fields},
    ]
    link = console_link(payload, public_url)
    if link:
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in autopilot>"}]}
        )
    return Request(
        endpoint.url,
        {"content-type": "application/json"},
        _json({"text": cut(text, SLACK_TEXT_LIMIT), "blocks": blocks}),
    )


# PagerDuty severity by alarm type: down or split is critical, resources running out an error.
SEVERITY = {
    "server_unreachable": "critical",
    "netsplit": "critical",
    "memory": "error",
    "disk": "error",
    "cpu": "warning",
    "queue": "warning",
    "connection": "warning",
    "flow": "warning",
    "consumer": "warning",
    "notice": "info",
}


def severity(alarm_type: str | None) -> str:
    return SEVERITY.get(alarm_type or "", "warning")


def pagerduty_request(endpoint: Endpoint, payload: dict[str, Any], public_url: str | None) -> Request:
    """``trigger`` / ``resolve`` for incidents (``dedup_key`` = our incident id: a flapping
    incident's ``incident.flapping`` triggers it again, its final resolve resolves it); every
    other event is a change event (on the service's timeline, never a page)."""
    assert endpoint.secret is not None
    f = _facts(payload)
    dedup_key = cut(str(f["incident_id"]), DEDUP_KEY_LIMIT) if f["incident_id"] is not None else None
    link = console_link(payload, public_url)
    links = [{"href": link, "text": "cloudamqp-autopilot"}] if link else []
    event_type = payload.get("type")
    headers = {"content-type": "application/json"}
    if event_type == EventType.INCIDENT_RESOLVED:
        event: dict[str, Any] = {
            "routing_key": endpoint.secret,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }
        return Request(f"{endpoint.url}/v2/enqueue", headers, _json(event))
    source = cut(str(f["instance"]), 255) if f["instance"] != "?" else "cloudamqp-autopilot"
    if event_type in (EventType.INCIDENT_OPENED, EventType.INCIDENT_FLAPPING):
        event = {
            "routing_key": endpoint.secret,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": {
                "summary": summary(payload),
                "severity": severity(f["alarm_type"]),
                "source": source,
                "component": cut(str(f["alarm_type"] or "unknown"), 255),
                "class": cut(str(f["alarm_type"] or "unknown"), 255),
                "timestamp": payload.get("timestamp"),
                "custom_details": _details(payload.get("data")),
            },
            "links": links,
        }
        return Request(f"{endpoint.url}/v2/enqueue", headers, _json(event))
    change = {
        "routing_key": endpoint.secret,
        "payload": {
            "summary": summary(payload),
            "source": source,
            "timestamp": payload.get("timestamp"),
            "custom_details": _details(payload.get("data")),
        },
        "links": links,
    }
    return Request(f"{endpoint.url}/v2/change/enqueue", headers, _json(change))


def build(
    endpoint: Endpoint, msg_id: str, payload: dict[str, Any], now: float, public_url: str | None
) -> Request:
    if endpoint.kind is ChannelKind.WEBHOOK:
        return webhook_request(endpoint, msg_id, payload, now)
    if endpoint.kind is ChannelKind.SLACK:
        return slack_request(endpoint, payload, public_url)
    return pagerduty_request(endpoint, payload, public_url)


# --- the answer --------------------------------------------------------------------------------


class Verdict(Enum):
    DELIVERED = "delivered"
    GONE = "gone"  # 410: the receiver says this endpoint is no more
    RETRY = "retry"  # 429, 408, 5xx
    PERMANENT = "permanent"  # any other answer: retrying will not help


def verdict(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    if status in {408, 425, 429} or status >= 500:
        return Verdict.RETRY
    return Verdict.PERMANENT


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` in seconds (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: float | None
    seconds: float


async def send(session: aiohttp.ClientSession, request: Request, limit_seconds: float) -> Answer:
    """POST the request; ``RetryableError`` (no URL in it) on a timeout or a network error."""
    started = time.monotonic()
    try:
        async with session.post(
            request.url,
            data=request.body,
            headers=request.headers,
            timeout=aiohttp.ClientTimeout(total=limit_seconds),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            return Answer(
                resp.status,
                retry_after(resp.headers.get("Retry-After"), time.time()),
                time.monotonic() - started,
            )
    except TimeoutError:
        raise RetryableError(f"no answer within {limit_seconds:g}s") from None
    except aiohttp.ClientError as exc:
        raise RetryableError(f"network error: {type(exc).__name__}") from None
