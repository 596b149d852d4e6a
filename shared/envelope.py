"""The message envelope: the one owner of what travels on the broker besides the alarm.

An alarm message's body is the alarm exactly as CloudAMQP posted it (so the management UI and
the parking lot show the original); the event id, received-at time and attempt count travel
as message properties and headers of our own. A check message (the follow-up of an upgrade
CloudAMQP accepted) is marked by a header and carries a ``Check`` as JSON.

Everything that writes, reads or copies those headers is here: adding a header touches this
file only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pamqp import encode as pamqp_encode

from shared import contract
from shared.alarm import Alarm, event_key, iso, parse_timestamp
from shared.errors import DecodeError

# Headers of our own; RabbitMQ 4 no longer counts x-death on re-publish, so we carry ours.
H_EVENT_ID = "x-autopilot-event-id"
H_RECEIVED_AT = "x-autopilot-received-at"
H_ATTEMPTS = "x-autopilot-attempts"
H_REPLAYED = "x-autopilot-replayed"
H_ERROR = "x-autopilot-error"
H_STATUS = "x-autopilot-status"
H_FAILED_AT = "x-autopilot-failed-at"
H_CHECK = "x-autopilot-check"  # marks a follow-up check of an accepted upgrade, not an alarm
H_NOTIFICATION = "x-autopilot-notification-id"  # a notification on its way to one endpoint
H_ENDPOINT = "x-autopilot-endpoint"
# When CloudAMQP first answered "busy" (still configuring) to this alarm's plan change: the
# wait for it to be ready spends no attempt, and ends at UPGRADE_CONFIRM_TIMEOUT_SECONDS.
H_BUSY_SINCE = "x-autopilot-busy-since"

# The parking explanation (and a busy wait's start), dropped from a replayed copy.
PARK_HEADERS = frozenset({H_ERROR, H_STATUS, H_FAILED_AT, H_BUSY_SINCE})
# Written by the broker on dead-lettering and redelivery; stale on any copy we publish.
BROKER_HEADER_PREFIXES = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")

_ERROR_LIMIT = 1000  # characters of an error kept in a header (the management UI shows it)
_ID = re.compile(r"[\x21-\x7e]{1,200}")
_MAX_ATTEMPTS_SEEN = 1_000_000
_PLAUSIBLE_SINCE = 946_684_800.0  # 2000-01-01: no alarm of ours was received before
_CLOCK_SKEW = 86_400.0  # a received-at this far ahead of the worker's clock is not believed


def _text(value: Any) -> str | None:
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


def attempts(headers: Mapping[str, Any]) -> int:
    """The attempt count a message carries (0 when absent or unreadable, capped)."""
    value = headers.get(H_ATTEMPTS)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace")
    try:
        return min(max(int(value), 0), _MAX_ATTEMPTS_SEEN) if value is not None else 0
    except (TypeError, ValueError, OverflowError, ArithmeticError):
        return 0


def busy_since(headers: Mapping[str, Any]) -> float | None:
    """When a busy wait started (epoch seconds), or None when there is none or it is unreadable.
    Written as ISO 8601 text (``retry_copy``); a number is read too (a message deferred
    before, whose float the broker carried in 32 bits: to the nearest 128 seconds)."""
    value = headers.get(H_BUSY_SINCE)
    text = _text(value)
    if text is not None:
        try:
            value = parse_timestamp(text)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 1e11 else None


def event_id_of(headers: Mapping[str, Any]) -> str | None:
    """The receiver's event id header, when the message has one that can be an id."""
    return identifier(_text(headers.get(H_EVENT_ID)))


def identifier(value: str | None) -> str | None:
    """An id a message brought, when it is printable ASCII of a sane length: it becomes a key
    in the store (where a NUL is refused by PostgreSQL) and a word in log lines."""
    if value is None or not _ID.fullmatch(value):
        return None
    return value


def alarm_headers(event_id: str, received_at: float) -> dict[str, Any]:
    """The headers the receiver puts on an accepted alarm."""
    return {H_EVENT_ID: event_id, H_RECEIVED_AT: iso(received_at)}


def decode_alarm(
    body: bytes, headers: Mapping[str, Any], message_id: str | None, fallback_time: float
) -> Alarm:
    """Turn a broker message into an ``Alarm``; raise ``DecodeError`` when it is not one."""
    # The receiver's parser and limits: whatever it accepted decodes here (shared.contract).
    parsed = contract.parse(body)
    key = event_key(parsed)
    received_raw = _text(headers.get(H_RECEIVED_AT))
    received_at = fallback_time
    if received_raw:
        try:
            received_at = parse_timestamp(received_raw)
        except (ValueError, OverflowError):
            received_at = fallback_time
        # A header of ours that says "year 9999" (or 1900) was not written by the receiver.
        if not _PLAUSIBLE_SINCE <= received_at <= fallback_time + _CLOCK_SKEW:
            received_at = fallback_time
    return Alarm(
        # A message published by hand without our headers still gets a stable id.
        event_id=event_id_of(headers) or identifier(message_id) or f"key-{key[:32]}",
        received_at=received_at,
        body=parsed,
        event_key=key,
        attempts=attempts(headers),
        replayed=_text(headers.get(H_REPLAYED)) is not None,
        busy_since=busy_since(headers),
    )


def is_check(headers: Mapping[str, Any]) -> bool:
    return bool(headers.get(H_CHECK))


@dataclass(frozen=True)
class Check:
    """A follow-up on an upgrade CloudAMQP accepted: read the instance until it is ready on
    ``plan`` — for a disk resize (``extra_disk`` set), until its nodes have that extra disk —
    or give up at ``deadline`` (CloudAMQP applies the change asynchronously)."""

    action_id: str
    instance_id: str
    plan: str
    deadline: float
    checks: int = 0
    accepted_at: float | None = None  # when CloudAMQP took it (None: not known to this check)
    extra_disk: int | None = None  # a disk resize's extra disk asked for (GB)

    KIND: ClassVar[str] = "plan"


@dataclass(frozen=True)
class ApprovalCheck:
    """A follow-up on an upgrade that awaits approval: carry it out once approved, close it
    at ``deadline``. Sent after a delay (the periodic look) and at once by an approval."""

    action_id: str
    deadline: float
    checks: int = 0

    KIND: ClassVar[str] = "approval"


AnyCheck = Check | ApprovalCheck


def check_message(check: AnyCheck) -> aio_pika.Message:
    return aio_pika.Message(
        body=json.dumps(asdict(check)).encode(),
        headers={H_CHECK: check.KIND},
        content_type="application/json",
        message_id=f"{check.KIND}-check-{check.action_id}-{check.checks}",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def decode_check(body: bytes, headers: Mapping[str, Any] | None = None) -> AnyCheck:
    kind = _text((headers or {}).get(H_CHECK)) or Check.KIND
    try:
        data = orjson.loads(body)
        if kind == ApprovalCheck.KIND:
            return ApprovalCheck(str(data["action_id"]), float(data["deadline"]), int(data.get("checks", 0)))
        return Check(
            str(data["action_id"]),
            str(data["instance_id"]),
            str(data["plan"]),
            float(data["deadline"]),
            int(data.get("checks", 0)),
            float(data["accepted_at"]) if data.get("accepted_at") is not None else None,
            int(data["extra_disk"]) if data.get("extra_disk") is not None else None,
        )
    except Exception as exc:  # whatever the bytes: not a check of ours
        raise DecodeError(f"not an upgrade check: {type(exc).__name__}: {exc}") from None


def replayed_at(headers: Mapping[str, Any]) -> str | None:
    """When a replay put this message back (None for an original)."""
    return _text(headers.get(H_REPLAYED))


@dataclass(frozen=True)
class Delivery:
    """A notification message for one endpoint: the notification id (the ``webhook-id``),
    the endpoint's id, and the body every channel is made from."""

    notification_id: str
    endpoint: str
    body: dict[str, Any]
    attempts: int


def notification_message(notification_id: str, endpoint: str, body: Mapping[str, Any]) -> aio_pika.Message:
    """One copy of a notification for one endpoint: its body is ``{"type", "timestamp", "data"}``,
    exactly what a webhook receives, so the parking lot shows what was to be sent."""
    return aio_pika.Message(
        body=json.dumps(body, ensure_ascii=False, default=str).encode(),
        headers={H_NOTIFICATION: notification_id, H_ENDPOINT: endpoint, H_ATTEMPTS: 0},
        content_type="application/json",
        message_id=f"{notification_id}:{endpoint}",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def decode_delivery(body: bytes, headers: Mapping[str, Any]) -> Delivery:
    """``DecodeError`` when the message is not a notification for an endpoint."""
    notification_id, endpoint = _text(headers.get(H_NOTIFICATION)), _text(headers.get(H_ENDPOINT))
    if notification_id is None or endpoint is None:
        raise DecodeError(f"a notification message needs {H_NOTIFICATION} and {H_ENDPOINT}")
    try:
        parsed = orjson.loads(body)
    except Exception as exc:
        raise DecodeError(f"body is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
        raise DecodeError("body is not a notification ({type, timestamp, data})")
    return Delivery(notification_id, endpoint, parsed, attempts(headers))


def _without(headers: Mapping[str, Any], names: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k not in names and not k.startswith(BROKER_HEADER_PREFIXES)}


def copy_of(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """The same body and identity, persistent, with these headers."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type or "application/json",
        message_id=message.message_id,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def retry_copy(
    message: AbstractIncomingMessage, attempts_so_far: int | None = None, busy_from: float | None = None
) -> aio_pika.Message:
    """The copy for a delay queue: our headers kept, the attempt count (and the start of a
    busy wait) updated when given."""
    headers = _without(message.headers or {})
    if attempts_so_far is not None:
        headers[H_ATTEMPTS] = attempts_so_far
    if busy_from is not None:
        # As text: a float in a header table is a 32-bit one on the wire (pamqp), which holds
        # today's epoch seconds to the nearest 128 — a busy wait could end a minute early.
        headers[H_BUSY_SINCE] = iso(busy_from)
    return copy_of(message, headers)


def park_headers(error: str, status: str, attempts_so_far: int, failed_at: float) -> dict[str, Any]:
    """What explains a parked message in the management UI."""
    when = datetime.fromtimestamp(failed_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return {
        H_ERROR: error[:_ERROR_LIMIT],
        H_ATTEMPTS: attempts_so_far,
        H_STATUS: status,
        H_FAILED_AT: when,
    }


def park_copy(
    message: AbstractIncomingMessage, error: str, status: str, attempts_so_far: int, failed_at: float
) -> aio_pika.Message:
    """The copy for the parking lot: the original body, with why it was parked."""
    headers = _without(message.headers or {})
    headers.update(park_headers(error, status, attempts_so_far, failed_at))
    return copy_of(message, headers)


def shown_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    """Any headers as short printable strings: shown, never parsed (for a message whose own
    headers cannot be copied as they are)."""
    shown: dict[str, str] = {}
    for name, value in list(headers.items())[:64]:
        raw = value if isinstance(value, bytes | bytearray) else repr(value).encode("utf-8", "replace")
        shown[contract.shown_text(str(name).encode("utf-8", "replace"), 120)] = contract.shown_text(
            bytes(raw), 500
        )
    return shown


def plain_park_copy(
    message: AbstractIncomingMessage, error: str, status: str, attempts_so_far: int, failed_at: float
) -> aio_pika.Message:
    """The parking copy of last resort: the original body, its headers shown as text, and only
    the properties that are known to be well formed."""
    headers: dict[str, Any] = {"x-autopilot-original-headers": shown_headers(message.headers or {})}
    event_id = event_id_of(message.headers or {})
    if event_id is not None:
        headers[H_EVENT_ID] = event_id
    headers.update(park_headers(error, status, attempts_so_far, failed_at))
    return aio_pika.Message(
        body=bytes(message.body),
        headers=headers,
        content_type="application/json",
        message_id=identifier(message.message_id),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def encodable(copy: aio_pika.Message) -> bool:
    """Whether the broker client can write this copy's headers (the same encoder aiormq uses)."""
    try:
        pamqp_encode.field_table(copy.headers)
    except Exception:
        return False
    return True


def replay_headers(headers: Mapping[str, Any], replayed_at: str) -> dict[str, Any]:
    """Headers of a replayed copy: ours kept, parking and broker ones dropped, attempts reset."""
    kept = _without(headers, PARK_HEADERS)
    kept[H_ATTEMPTS] = 0
    kept[H_REPLAYED] = replayed_at
    return kept


def replay_copy(message: AbstractIncomingMessage, replayed_at: str) -> aio_pika.Message:
    """The copy a replay publishes to the work queue (a fresh attempt count)."""
    return copy_of(message, replay_headers(message.headers or {}, replayed_at))
