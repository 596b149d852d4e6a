"""The receiver's handlers and the JSON they answer with.

Handlers read what they need from the request and the app's typed keys (``receiver.keys``);
the shaping of store rows into JSON (``incident_json``, ``action_json``, ``event_json``) is
kept apart from the handlers so that other views of the same rows can reuse it. Every error
a handler raises is JSON ``{"error", "detail"}`` that says what to fix.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from receiver.keys import ACCEPT_LOG, LANES, OPENAPI, PUBLISHER, SETTINGS, STORE
from shared import contract, metrics, topology, watch
from shared.alarm import iso, new_id
from shared.controls import GLOBAL, Pause
from shared.errors import BrokerUnavailable
from shared.notifications import action_price
from shared.statuses import IncidentStatus
from shared.store.incidents import flap_mark

log = structlog.get_logger("receiver")

MAX_BODY = 64 * 1024
RETRY_AFTER_SECONDS = 5
MAX_OFFSET = 1_000_000_000


# --- errors and the token ---------------------------------------------------------------------


def json_error(
    cls: type[web.HTTPException],
    error: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> web.HTTPException:
    """An HTTP error to raise whose body is JSON ``{"error", "detail"}``."""
    return cls(
        text=json.dumps({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
        **kwargs,
    )


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:] if header[:7].lower() == "bearer " else None


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; never short-circuits on content."""
    if given is None or not expected:
        return False
    # aiohttp hands over undecodable header bytes as surrogates: compare them as the bytes sent.
    try:
        sent = given.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(sent, expected.encode())


def check_token(request: web.Request, *, operator_too: bool = False) -> None:
    """401 unless the configured token is in the path, ``?token=`` or a Bearer header (for
    the read views, ``operator_too``: the operator token as a Bearer header does as well)."""
    settings = request.app[SETTINGS]
    expected = settings.webhook_token
    if not expected:
        return
    # Without a query string there is no ?token= to parse (aiohttp builds a dict for it).
    query = request.query.get("token") if request.query_string else None
    candidates = [request.match_info.get("token"), query, bearer(request)]
    ok = False
    for given in candidates:
        ok |= same_secret(given, expected)
    if operator_too:
        ok |= same_secret(bearer(request), settings.operator_token)
    if not ok:
        raise json_error(
            web.HTTPUnauthorized,
            "unauthorized",
            "missing or wrong token: pass it as ?token=, 'Authorization: Bearer', or in the path",
        )


_TOKEN_IN_PATH = re.compile(r"^(/cloudamqp/alarm/)[^/?]+")
_TOKEN_IN_QUERY = re.compile(r"(?i)((?:^|[?&])token=)[^&]*")


def redact_path(path: str) -> str:
    """A path (with its query, if any) as a log line may carry it: the webhook token, whether in
    the path or in ``?token=``, replaced by ``<redacted>``."""
    path = _TOKEN_IN_PATH.sub(r"\1<redacted>", path)
    return _TOKEN_IN_QUERY.sub(r"\1<redacted>", path)


# --- the webhook ------------------------------------------------------------------------------


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


# Content-Type header as sent → is it JSON: the header is parsed once per distinct value, not
# on every request (aiohttp parses it into a new dict per request). Bounded: values beyond
# the first few are parsed each time.
_JSON_HEADER: dict[str, bool] = {}


def _sends_json(request: web.Request) -> bool:
    raw = request.headers.get("Content-Type")
    known = _JSON_HEADER.get(raw) if raw is not None else None
    if known is None:
        known = _is_json_type(request.content_type)
        if raw is not None and len(_JSON_HEADER) < 64:
            _JSON_HEADER[raw] = known
    return known


async def receive_alarm(request: web.Request) -> web.Response:
    started = time.perf_counter()
    check_token(request)
    if not _sends_json(request):
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "unsupported_media_type",
            f"Content-Type is {request.content_type!r}; send application/json",
        )
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise json_error(
            web.HTTPRequestEntityTooLarge,
            "payload_too_large",
            f"the body must be at most {MAX_BODY} bytes",
            max_size=MAX_BODY,
            actual_size=length,
        )
    body = await request.read()
    try:
        parsed = contract.parse(body)
    except contract.ContractError as exc:
        raise json_error(web.HTTPBadRequest, exc.error, exc.detail) from None
    event_id = new_id()
    received_at = time.time()
    app = request.app
    try:
        await app[PUBLISHER].publish(body, event_id, received_at, _lane(app, parsed, received_at))
    except BrokerUnavailable as exc:
        metrics.PUBLISH_FAILURES.inc()
        log.warning("alarm.rejected", reason="broker_unavailable", error=str(exc))
        raise json_error(
            web.HTTPServiceUnavailable,
            "broker_unavailable",
            "the alarm was not stored; retry later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    # The broker has it: from here on nothing may turn the 202 into an error (a retry by
    # CloudAMQP would record the alarm twice).
    try:
        app[ACCEPT_LOG].info(
            "alarm.accepted",
            event_id=event_id,
            alarm_type=_loggable(parsed.get("alarm_type")),
            instance=_loggable(parsed.get("instance_id")),
        )
        metrics.ACCEPT_LATENCY.observe(time.perf_counter() - started)
    except Exception as exc:  # a log or metrics failure must not fail an accepted alarm
        log.warning("alarm.accept_log_failed", event_id=event_id, error=type(exc).__name__)
    return web.Response(
        body=orjson.dumps({"status": "accepted", "id": event_id}), status=202, content_type="application/json"
    )


def _lane(app: web.Application, parsed: dict[str, Any], received_at: float) -> str:
    """The fast lane is a shortcut, never a reason to refuse: any surprise goes the usual way."""
    try:
        return app[LANES].queue_for(parsed, received_at)
    except Exception as exc:
        log.warning("alarm.lane_failed", error=type(exc).__name__)
        return topology.WORK_QUEUE


def _loggable(value: Any) -> Any:
    """A field as a log line carries it: a short string, a number, or its type's name."""
    if isinstance(value, str):
        return value[:200]
    if value is None or isinstance(value, bool | int | float):
        return value
    return f"<{type(value).__name__}>"


# --- JSON shaping of store rows ---------------------------------------------------------------


def _loads(text: Any) -> Any:
    """A stored JSON column as JSON; a row written before the input contract that no longer
    reads back (nested past the parser's depth) is shown as its text."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _finite(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth > 200:
        return "…"
    if isinstance(value, dict):
        return {str(k): _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v, depth + 1) for v in value]
    return value


def json_text(value: Any) -> str:
    """JSON as RFC 8259 has it, whatever a stored row holds: NaN and infinities (recorded before
    the input contract refused them) are written as null, never as ``NaN``."""
    try:
        return orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # wider than 64-bit integers, deeper than orjson writes
        return json.dumps(_finite(value), default=str, allow_nan=False)


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=json_text)


def incident_json(row: dict[str, Any]) -> dict[str, Any]:
    mark = flap_mark(row)
    return {
        "id": row["incident_id"],
        "key": row["incident_key"],
        "title": row["title"],
        "status": row["status"],
        "instance": row["instance_id"],
        "alarm_type": row["alarm_type"],
        "first_seen": iso(row["first_seen"]),
        "last_seen": iso(row["last_seen"]),
        "count": row["event_count"],
        "last_value": _loads(row["last_value"]),
        "resolved_at": iso(row["resolved_at"]),
        # Marked flapping (shared.flapping): how, and its pending resolve ("resolves at …, if quiet").
        "flapping": mark is not None,
        "flap": None if mark is None else mark.json(),
        "resolves_at": iso(row["resolves_at"]),
    }


def action_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["action_id"],
        "event_id": row["event_id"],
        "incident_id": row["incident_id"],
        "instance": row["instance_id"],
        "alarm_type": row["alarm_type"],
        "status": row["status"],
        "reason": row["reason"],
        "detail": row["detail"],
        "plan": row["plan"],
        "from_plan": row.get("from_plan"),
        "price": action_price(row),
        "kind": row.get("kind") or "upgrade",
        "extra_disk_from": row.get("extra_disk_from"),
        "extra_disk_to": row.get("extra_disk_to"),
        "reconfigure_seconds": row.get("reconfigure_seconds"),
        "asked_at": iso(row.get("asked_at")),
        "verification": _loads(row.get("verification")),
        "attempts": row["attempts"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "approval": None
        if row.get("approval_deadline") is None
        else {
            "deadline": iso(row["approval_deadline"]),
            "decided_by": row.get("approval_decided_by"),
            "decided_at": iso(row.get("approval_decided_at")),
            "reason": row.get("approval_reason"),
        },
    }


def pause_json(pause: Pause) -> dict[str, Any]:
    return {
        "scope": pause.scope,
        "instance": None if pause.scope == GLOBAL else pause.scope,
        "until": iso(pause.until),
        "operator": pause.operator,
        "reason": pause.reason,
        "since": iso(pause.created_at),
    }


def audit_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["audit_id"],
        "at": iso(row["at"]),
        "actor": row["actor"],
        "kind": row["kind"],
        "act": row["act"],
        "target": row["target"],
        "detail": _loads(row["detail"]),
    }


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["event_id"],
        "received_at": iso(row["received_at"]),
        "recorded_at": iso(row["recorded_at"]),
        "instance": row["instance_id"],
        "alarm_type": row["alarm_type"],
        "change": row["incident_change"],
        "body": _loads(row["body"]),
    }


# --- read-only views of the store -------------------------------------------------------------


def _page(request: web.Request) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        raise json_error(web.HTTPBadRequest, "bad_query", "limit and offset must be integers") from None
    if not 1 <= limit <= 500 or not 0 <= offset <= MAX_OFFSET:
        raise json_error(web.HTTPBadRequest, "bad_query", f"limit must be 1..500 and offset 0..{MAX_OFFSET}")
    return limit, offset


async def list_incidents(request: web.Request) -> web.Response:
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    status = request.query.get("status")
    if status not in (None, *IncidentStatus):
        raise json_error(web.HTTPBadRequest, "bad_query", "status must be open or resolved")
    rows = await request.app[STORE].list_incidents(
        status=status, instance=request.query.get("instance"), limit=limit, offset=offset
    )
    return json_response({"incidents": [incident_json(r) for r in rows], "limit": limit, "offset": offset})


# The newest actions of an incident shown with it (``GET /actions?incident=…`` has them all).
INCIDENT_ACTIONS = 100


async def get_incident(request: web.Request) -> web.Response:
    """One incident with a page of its events (``limit``, ``offset``; newest first), their
    count, its first and last event (kept even once its events were pruned) and its newest
    actions."""
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    page = await request.app[STORE].get_incident(
        request.match_info["incident_id"], limit=limit, offset=offset, actions=INCIDENT_ACTIONS
    )
    if page is None:
        raise json_error(web.HTTPNotFound, "not_found", "no incident with this id")
    body = incident_json(page.incident)
    body["events"] = [event_json(e) for e in page.events]
    body["events_total"] = page.events_total
    body["limit"], body["offset"] = limit, offset
    body["first_event"] = event_json(page.first_event) if page.first_event is not None else None
    body["last_event"] = event_json(page.last_event) if page.last_event is not None else None
    body["actions"] = [action_json(a) for a in page.actions]
    body["actions_total"] = page.actions_total
    return json_response(body)


async def list_events(request: web.Request) -> web.Response:
    """Recent events with the incident change each made, including the ones that made none
    (and why, for an alarm with nothing to group by)."""
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    rows = await request.app[STORE].list_events(limit=limit, offset=offset)
    events = [
        {
            **event_json(r),
            "incident_id": r["incident_id"],
            "incident_key": r["incident_key"],
            "ungroupable": r["ungroupable"],
        }
        for r in rows
    ]
    return json_response({"events": events, "limit": limit, "offset": offset})


async def list_actions(request: web.Request) -> web.Response:
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    rows = await request.app[STORE].list_actions(
        instance=request.query.get("instance"),
        incident=request.query.get("incident"),
        limit=limit,
        offset=offset,
    )
    return json_response({"actions": [action_json(r) for r in rows], "limit": limit, "offset": offset})


async def list_pauses(request: web.Request) -> web.Response:
    """Pauses still running (the global one first)."""
    check_token(request, operator_too=True)
    pauses = await request.app[STORE].list_pauses(time.time())
    return json_response({"pauses": [pause_json(p) for p in pauses]})


async def list_audit(request: web.Request) -> web.Response:
    """Every operator act and every automatic upgrade, newest first; nothing here can be
    changed through the API."""
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    rows = await request.app[STORE].list_audit(limit=limit, offset=offset)
    return json_response({"audit": [audit_json(r) for r in rows], "limit": limit, "offset": offset})


async def list_advice(request: web.Request) -> web.Response:
    """Downgrade advice, newest first: recorded and notified, never carried out."""
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    rows = await watch.list_advice(
        request.app[STORE].db, instance=request.query.get("instance"), limit=limit, offset=offset
    )
    advice = [watch.advice_view(r) for r in rows]
    return json_response({"advice": advice, "limit": limit, "offset": offset})


async def instance_usage(request: web.Request) -> web.Response:
    """The sampled usage of an instance's nodes (the watchdog's ring of samples), oldest first."""
    check_token(request, operator_too=True)
    instance = request.match_info["instance"]
    nodes = await watch.samples_by_node(request.app[STORE].db, instance)
    return json_response({"instance": instance, "nodes": nodes})


def notification_json(row: dict[str, Any], deliveries: list[dict[str, Any]]) -> dict[str, Any]:
    """A notification and each endpoint's delivery (endpoints by id: never a URL or secret)."""
    return {
        "id": row["notification_id"],
        "type": row["event_type"],
        "subject": row["subject"],
        "instance": row["instance_id"],
        "created_at": iso(row["created_at"]),
        "published_at": iso(row["published_at"]),
        "data": _loads(row["data"]),
        "deliveries": [
            {
                "endpoint": d["endpoint"],
                "channel": d["channel"],
                "status": d["status"],
                "attempts": d["attempts"],
                "last_error": d["last_error"],
                "latency_ms": d["latency_ms"],
                "updated_at": iso(d["updated_at"]),
                "delivered_at": iso(d["delivered_at"]),
            }
            for d in deliveries
        ],
    }


async def list_notifications(request: web.Request) -> web.Response:
    """Recent notifications, newest first, with each endpoint's delivery status."""
    check_token(request, operator_too=True)
    limit, offset = _page(request)
    found = await request.app[STORE].list_notifications(limit=limit, offset=offset)
    body = {"notifications": [notification_json(r, d) for r, d in found], "limit": limit, "offset": offset}
    return json_response(body)


# --- the process itself -----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems: dict[str, str] = {}
    broker = await request.app[PUBLISHER].check()
    if broker is not None:
        problems["broker"] = broker
    try:
        await request.app[STORE].ping()
    except Exception as exc:
        problems["store"] = f"{type(exc).__name__}: {exc}"
    if problems:
        return json_response(
            {"error": "not_ready", "detail": "; ".join(f"{k}: {v}" for k, v in problems.items())},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return json_response({"status": "ready"})


async def openapi_view(request: web.Request) -> web.Response:
    """The checked-in OpenAPI document describing every endpoint."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")
