"""Outbound notifications: the one vocabulary of events, their deterministic ids, the
payloads built from the state change that causes each, and the routing decision.

Pure: no I/O. The store writes a notification (``Unit.notify``) in the same transaction as
the change that causes it (the outbox); ``worker.notify`` publishes and delivers it. The id
is derived from the cause (``sha256(type:key)``), so a redelivered alarm or a repeated write
can never create a second notification, and the id is the ``webhook-id`` receivers dedupe on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from shared.alarm import Alarm, iso
from shared.flapping import FlapMark
from shared.pricing import PlanChange, Refusal
from shared.statuses import IncidentStatus


class EventType(StrEnum):
    """Every event a notification can be about."""

    INCIDENT_OPENED = "incident.opened"
    INCIDENT_RESOLVED = "incident.resolved"
    INCIDENT_FLAPPING = "incident.flapping"  # a flap episode began; then only its final resolve
    ACTION_SUCCEEDED = "action.succeeded"  # an upgrade done (from/to plan or disk, the alarm behind it)
    ACTION_DRY_RUN = "action.dry_run"  # an upgrade decided, not called (dry run)
    ACTION_FAILED = "action.failed"  # an upgrade given up (its alarm is parked)
    ACTION_UNCONFIRMED = "action.unconfirmed"  # accepted, the plan did not show in time
    ALARM_PARKED = "alarm.parked"  # a message moved to cloudamqp.alarms.dead
    ACTION_AWAITING_APPROVAL = "action.awaiting_approval"  # an upgrade waits for a person
    ACTION_SKIPPED = "action.skipped"  # an upgrade refused for its plan or price (NOTIFIED_SKIPS)
    ADVICE_DOWNGRADE = "advice.downgrade"  # a smaller plan would do


EVENT_TYPES: frozenset[str] = frozenset(t.value for t in EventType)

# The action statuses that are news, and the event each becomes.
ACTION_EVENTS: Mapping[str, EventType] = {
    "succeeded": EventType.ACTION_SUCCEEDED,
    "dry_run": EventType.ACTION_DRY_RUN,
    "failed": EventType.ACTION_FAILED,
    "unconfirmed": EventType.ACTION_UNCONFIRMED,
    "awaiting_approval": EventType.ACTION_AWAITING_APPROVAL,
}
# The skips a person must hear of: an upgrade the alarm called for was refused for what it
# would buy or cost (not sold, not in place, over budget). Other skips are "nothing to do".
NOTIFIED_SKIPS = frozenset(r.value for r in Refusal)


class ChannelKind(StrEnum):
    WEBHOOK = "webhook"  # Standard Webhooks
    SLACK = "slack"  # incoming webhook
    PAGERDUTY = "pagerduty"  # Events API v2


def notification_id(event_type: str, key: str) -> str:
    """The id of the notification about ``key`` (an incident id, an action id, …): the same
    cause always gives the same id — the outbox's primary key and the ``webhook-id``."""
    return "msg_" + hashlib.sha256(f"{event_type}:{key}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Notice:
    """A notification to write: what happened (``type``), about what (``key``), and its data."""

    type: EventType
    key: str
    data: dict[str, Any]
    instance_id: str | None = None

    @property
    def id(self) -> str:
        return notification_id(self.type, self.key)


def body(event_type: str, created_at: float, data: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON every channel's message is made from (the webhook sends exactly this; the id
    travels as ``webhook-id``)."""
    return {"type": event_type, "timestamp": iso(created_at), "data": dict(data)}


# --- payloads of each event ------------------------------------------------------------------


def alarm_data(alarm: Alarm) -> dict[str, Any]:
    """What a notification says about the alarm behind it."""
    return {
        "event_id": alarm.event_id,
        "alarm_type": alarm.alarm_type,
        "instance_id": alarm.instance_id,
        "value": alarm.raw("value"),
        "message": alarm.message,
        "triggered_at": alarm.raw("triggered_at"),
        "received_at": iso(alarm.received_at),
    }


# The incident changes that are news, and the event each becomes.
INCIDENT_EVENTS: Mapping[str, EventType] = {
    "opened": EventType.INCIDENT_OPENED,
    "resolved": EventType.INCIDENT_RESOLVED,
    "reopened": EventType.INCIDENT_FLAPPING,
}


def incident_data(
    incident_id: str,
    key: str | None,
    status: IncidentStatus,
    instance_id: str | None,
    alarm_type: str | None,
    at: float,
    mark: FlapMark | None = None,
) -> dict[str, Any]:
    """What a notification says about an incident (``flapping`` and ``flap``: its marking)."""
    return {
        "id": incident_id,
        "key": key,
        "title": key,
        "status": status.value,
        "instance_id": instance_id,
        "alarm_type": alarm_type,
        "at": iso(at),
        "flapping": mark is not None,
        "flap": None if mark is None else mark.json(),
    }


def incident_notice_key(incident_id: str, mark: FlapMark | None) -> str:
    """A flapping incident is told of once per episode and resolved once per episode: its
    notifications are keyed by the episode too (its first opening and resolve were not)."""
    return incident_id if mark is None else f"{incident_id}:{mark.episodes}"


def incident_notice(
    change: str | None,
    incident_id: str | None,
    key: str | None,
    alarm: Alarm,
    instance_id: str | None,
    now: float,
    *,
    mark: FlapMark | None = None,
) -> Notice | None:
    """``incident.opened`` / ``incident.resolved`` / ``incident.flapping`` (a re-opening by
    the flap rule) for an event's incident change, else None."""
    event_type = INCIDENT_EVENTS.get(change or "")
    if event_type is None or incident_id is None:
        return None
    status = IncidentStatus.RESOLVED if change == "resolved" else IncidentStatus.OPEN
    incident = incident_data(incident_id, key, status, instance_id, alarm.alarm_type, now, mark)
    data = {"incident": incident, "alarm": alarm_data(alarm)}
    return Notice(event_type, incident_notice_key(incident_id, mark), data, instance_id)


def quiet_resolve_notice(
    incident_id: str, key: str, instance_id: str | None, alarm_type: str | None, at: float, mark: FlapMark
) -> Notice:
    """``incident.resolved`` of a flapping incident whose quiet period passed at ``at``: no
    alarm caused it (``alarm`` is null)."""
    incident = incident_data(incident_id, key, IncidentStatus.RESOLVED, instance_id, alarm_type, at, mark)
    data = {"incident": incident, "alarm": None}
    return Notice(EventType.INCIDENT_RESOLVED, incident_notice_key(incident_id, mark), data, instance_id)


def action_notice(action: Mapping[str, Any], alarm: Mapping[str, Any]) -> Notice | None:
    """The notification about an action row that reached a status worth telling, else None.
    ``alarm`` is what ``alarm_data`` says about the alarm that caused it."""
    status = str(action.get("status"))
    event_type = ACTION_EVENTS.get(status)
    if status == "skipped" and action.get("reason") in NOTIFIED_SKIPS:
        event_type = EventType.ACTION_SKIPPED
    if event_type is None:
        return None
    data = {
        "action": {
            "id": action["action_id"],
            "status": action["status"],
            "reason": action.get("reason"),
            "detail": action.get("detail"),
            "instance_id": action.get("instance_id"),
            "alarm_type": action.get("alarm_type"),
            "incident_id": action.get("incident_id"),
            "from_plan": action.get("from_plan"),
            "to_plan": action.get("plan"),
            "attempts": action.get("attempts"),
            "reconfigure_seconds": action.get("reconfigure_seconds"),
            "price": action_price(action),
            # A disk resize (``resize_disk``): its extra disk before and asked for, in GB.
            "kind": action.get("kind"),
            "extra_disk_from": action.get("extra_disk_from"),
            "extra_disk_to": action.get("extra_disk_to"),
        },
        "alarm": dict(alarm),
    }
    return Notice(event_type, str(action["action_id"]), data, action.get("instance_id"))


def action_price(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """The plan change an action row records, with its monthly prices and the difference
    (``text``: ``bunny-1 → rabbit-1, $99 → $299 a month, +$200``); None where no price is
    known."""
    to_price, plan = action.get("to_price"), action.get("plan")
    if to_price is None or not isinstance(plan, str):
        return None
    from_price = action.get("from_price")
    change = PlanChange(
        action.get("from_plan"), plan, float(from_price) if from_price is not None else None, float(to_price)
    )
    return change.as_dict()


def parked_notice(
    message_id: str, status: str, error: str, attempts: int, alarm: Mapping[str, Any] | None
) -> Notice:
    """``alarm.parked``: a message moved to the parking lot, and why."""
    data = {"message_id": message_id, "status": status, "error": error, "attempts": attempts, "alarm": alarm}
    instance = alarm.get("instance_id") if alarm else None
    return Notice(EventType.ALARM_PARKED, message_id, data, instance if isinstance(instance, str) else None)


# --- channel configuration and routing ---------------------------------------------------------


def parse_webhook_secret(raw: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret (Standard Webhooks); ValueError otherwise.
    Messages never include the secret itself."""
    if not raw.startswith("whsec_"):
        raise ValueError("expected whsec_ followed by base64")
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("the key must be 24 to 64 bytes (Standard Webhooks)")
    return key


def parse_event_types(raw: Iterable[str]) -> frozenset[str] | None:
    """Event names (``*`` = all, also ``action.*``-style prefixes) → the set they name, or
    None for all; ValueError naming an unknown one."""
    names: set[str] = set()
    for item in raw:
        name = item.strip()
        if not name:
            continue
        if name == "*":
            return None
        if name.endswith(".*"):
            matched = {t for t in EVENT_TYPES if t.startswith(name[:-1])}
            if not matched:
                raise ValueError(f"{name!r} matches no event type")
            names |= matched
        elif name in EVENT_TYPES:
            names.add(name)
        else:
            raise ValueError(f"{name!r} is not an event type (known: {', '.join(sorted(EVENT_TYPES))})")
    return frozenset(names) if names else None


@dataclass(frozen=True)
class Endpoint:
    """One place notifications go. ``id`` is stable and safe to show (no secret in it)."""

    id: str
    kind: ChannelKind
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)  # webhook: whsec_…; pagerduty: routing key
    events: frozenset[str] | None = None  # None = every event
    instances: frozenset[str] | None = None  # None = every instance

    def wants(self, event_type: str, instance_id: str | None) -> bool:
        if self.events is not None and event_type not in self.events:
            return False
        return self.instances is None or instance_id in self.instances


def endpoint_id(kind: ChannelKind, *identity: str) -> str:
    """``webhook-3f2a9c1d``: a short digest of what identifies the endpoint (URL, secret,
    routing key), stable across restarts and workers, revealing none of it."""
    digest = hashlib.sha256("\n".join((kind.value, *identity)).encode()).hexdigest()[:8]
    return f"{kind.value}-{digest}"


def route(endpoints: Iterable[Endpoint], event_type: str, instance_id: str | None) -> list[Endpoint]:
    """The endpoints a notification goes to (one message each, so one's failure never
    retries another's)."""
    return [e for e in endpoints if e.wants(event_type, instance_id)]
