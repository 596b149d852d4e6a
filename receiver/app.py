"""The receiver's HTTP application: the webhook, read-only views of the store, health.

``create_app(settings)`` builds it; the broker publisher and the store are opened and closed
in ``cleanup_ctx``. Every error is JSON ``{"error", "detail"}``; never a traceback.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web

from receiver.publisher import Publisher
from shared import metrics
from shared.alarm import iso, new_id
from shared.errors import BrokerUnavailable, StoreError
from shared.settings import Settings
from shared.store import Store

log = structlog.get_logger("receiver")

MAX_BODY = 64 * 1024
RETRY_AFTER_SECONDS = 5
MAX_OFFSET = 1_000_000_000

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", Publisher)
STORE = web.AppKey("store", Store)
OPENAPI = web.AppKey("openapi", bytes)

_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


def json_error(
    cls: type[web.HTTPException],
    error: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> web.HTTPException:
    return cls(
        text=json.dumps({"error": error, "detail": detail}),
        content_type="application/json",
        headers=headers,
        **kwargs,
    )


# (route, status) → its counter: labels() costs a lock and a lookup on every request.
_REQUEST_COUNTERS: dict[tuple[str, int], Any] = {}


def _count(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    child = _REQUEST_COUNTERS.get((route, status))
    if child is None:
        child = _REQUEST_COUNTERS[route, status] = metrics.RECEIVER_REQUESTS.labels(route, str(status))
    child.inc()


@web.middleware
async def middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer is counted, and every error is JSON — aiohttp's own (404, 405, 413 from
    ``client_max_size``, …) and unexpected exceptions (500, never a traceback) included.
    One middleware, not two: each layer costs every request a coroutine (docs/benchmarks.md)."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            _count(request, exc.status)
            raise
        # aiohttp's own errors (404, 405, 413 from client_max_size, …) become JSON too.
        detail = exc.text or exc.reason
        if exc.status == 413:
            detail = f"the body must be at most {MAX_BODY} bytes"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in {"allow", "retry-after"}}
        response = web.json_response(
            {"error": _ERROR_NAMES.get(exc.status, "error"), "detail": detail},
            status=exc.status,
            headers=headers,
        )
    except Exception:
        log.exception("request.failed", path=request.path)
        response = web.json_response(
            {"error": "internal_error", "detail": "unexpected error; see the receiver log"},
            status=500,
        )
    _count(request, response.status)
    return response


def check_token(request: web.Request) -> None:
    """401 unless the configured token is in the path, ``?token=`` or a Bearer header."""
    expected = request.app[SETTINGS].webhook_token
    if not expected:
        return
    header = request.headers.get("Authorization", "")
    candidates = [
        request.match_info.get("token"),
        request.query.get("token"),
        header[7:] if header[:7].lower() == "bearer " else None,
    ]
    ok = False
    for given in candidates:
        if given is not None:
            # Compare every candidate in constant time; never short-circuit on content.
            ok |= hmac.compare_digest(given.encode(), expected.encode())
    if not ok:
        raise json_error(
            web.HTTPUnauthorized,
            "unauthorized",
            "missing or wrong token: pass it as ?token=, 'Authorization: Bearer', or in the path",
        )


def _is_json_type(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def receive_alarm(request: web.Request) -> web.Response:
    started = time.perf_counter()
    check_token(request)
    if not _is_json_type(request.content_type):
        raise json_error(
            web.HTTPUnsupportedMediaType,
            "unsupported_media_type",
            f"Content-Type is {request.content_type!r}; send application/json",
        )
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise json_error(
            web.HTTPRequestEntityTooLarge,
            "payload_too_large",
            f"the body must be at most {MAX_BODY} bytes",
            max_size=MAX_BODY,
            actual_size=request.content_length,
        )
    body = await request.read()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise json_error(web.HTTPBadRequest, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise json_error(
            web.HTTPBadRequest,
            "not_an_object",
            f"the body is a JSON {type(parsed).__name__}; send one JSON object per alarm",
        )
    event_id = new_id()
    received_at = time.time()
    try:
        await request.app[PUBLISHER].publish(body, event_id, received_at)
    except BrokerUnavailable as exc:
        metrics.PUBLISH_FAILURES.inc()
        log.warning("alarm.rejected", reason="broker_unavailable", error=str(exc))
        raise json_error(
            web.HTTPServiceUnavailable,
            "broker_unavailable",
            "the alarm was not stored; retry later",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None
    log.info(
        "alarm.accepted",
        event_id=event_id,
        alarm_type=parsed.get("alarm_type"),
        instance=parsed.get("instance_id"),
    )
    metrics.ACCEPT_LATENCY.observe(time.perf_counter() - started)
    return web.Response(
        body=orjson.dumps({"status": "accepted", "id": event_id}), status=202, content_type="application/json"
    )


# --- read-only views -------------------------------------------------------------------------


def _page(request: web.Request) -> tuple[int, int]:
    try:
        limit = int(request.query.get("limit", "100"))
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        raise json_error(web.HTTPBadRequest, "bad_query", "limit and offset must be integers") from None
    if not 1 <= limit <= 500 or not 0 <= offset <= MAX_OFFSET:
        raise json_error(web.HTTPBadRequest, "bad_query", f"limit must be 1..500 and offset 0..{MAX_OFFSET}")
    return limit, offset


def _loads(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def incident_json(row: dict[str, Any]) -> dict[str, Any]:
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
        "attempts": row["attempts"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
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


async def list_incidents(request: web.Request) -> web.Response:
    check_token(request)
    limit, offset = _page(request)
    status = request.query.get("status")
    if status not in (None, "open", "resolved"):
        raise json_error(web.HTTPBadRequest, "bad_query", "status must be open or resolved")
    rows = await request.app[STORE].list_incidents(
        status=status, instance=request.query.get("instance"), limit=limit, offset=offset
    )
    return web.json_response(
        {"incidents": [incident_json(r) for r in rows], "limit": limit, "offset": offset}
    )


async def get_incident(request: web.Request) -> web.Response:
    check_token(request)
    found = await request.app[STORE].get_incident(request.match_info["incident_id"])
    if found is None:
        raise json_error(web.HTTPNotFound, "not_found", "no incident with this id")
    incident, events, actions = found
    body = incident_json(incident)
    body["events"] = [event_json(e) for e in events]
    body["actions"] = [action_json(a) for a in actions]
    return web.json_response(body)


async def list_events(request: web.Request) -> web.Response:
    """Recent events with the incident change each made, including the ones that made none
    (and why, for an alarm with nothing to group by)."""
    check_token(request)
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
    return web.json_response({"events": events, "limit": limit, "offset": offset})


async def list_actions(request: web.Request) -> web.Response:
    check_token(request)
    limit, offset = _page(request)
    rows = await request.app[STORE].list_actions(
        instance=request.query.get("instance"), limit=limit, offset=offset
    )
    return web.json_response({"actions": [action_json(r) for r in rows], "limit": limit, "offset": offset})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


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
        return web.json_response(
            {"error": "not_ready", "detail": "; ".join(f"{k}: {v}" for k, v in problems.items())},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return web.json_response({"status": "ready"})


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


async def openapi_view(request: web.Request) -> web.Response:
    """The checked-in OpenAPI document describing every endpoint."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def metrics_view(request: web.Request) -> web.Response:
    body, content_type = metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/cloudamqp/alarm", receive_alarm)
    app.router.add_post("/cloudamqp/alarm/{token}", receive_alarm)
    app.router.add_get("/incidents", list_incidents)
    app.router.add_get("/incidents/{incident_id}", get_incident)
    app.router.add_get("/actions", list_actions)
    app.router.add_get("/events", list_events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/openapi.json", openapi_view)


def create_app(settings: Settings) -> web.Application:
    """The receiver application; broker and store are opened when it starts."""
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[OPENAPI] = OPENAPI_PATH.read_bytes()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        store = await Store.open(settings.database_url)
        publisher = Publisher(settings.rabbitmq_url, settings.retry_delays)
        app[STORE], app[PUBLISHER] = store, publisher
        problem = await publisher.check()
        if problem:
            log.warning("receiver.broker_not_ready", detail=problem)
        yield
        await publisher.close()
        await store.close()

    app.cleanup_ctx.append(resources)
    setup_routes(app)
    return app


__all__ = ["StoreError", "create_app"]
