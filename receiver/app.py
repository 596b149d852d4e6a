"""The receiver's HTTP application: ``create_app(settings)`` builds it.

The broker publisher and the store are opened and closed in ``cleanup_ctx``; the routes are
in ``receiver.routes``, the handlers and their JSON in ``receiver.views``, the typed app keys
in ``receiver.keys``. One middleware counts every answer and makes every error JSON
``{"error", "detail"}``; never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from receiver.keys import ACCEPT_LOG, LANES, OPENAPI, OPERATIONS, PUBLISHER, SETTINGS, STORE
from receiver.lanes import Lanes
from receiver.routes import setup_routes
from receiver.views import MAX_BODY, redact_path
from shared import envelope, metrics
from shared.envelope import ApprovalCheck
from shared.errors import StoreError
from shared.operations import Operations
from shared.policy_file import load_policy
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store
from shared.store.retention import Gauges

log = structlog.get_logger("receiver")
access_log = structlog.get_logger("receiver.access")

OPENAPI_PATH = Path(__file__).with_name("openapi.json")

_ERROR_NAMES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    503: "unavailable",
}


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access log, when one is enabled, as structlog events with the token redacted
    (aiohttp's default format prints the request line as sent)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        access_log.debug(
            "http.access",
            method=request.method,
            path=redact_path(request.path_qs),
            status=response.status,
            seconds=round(time, 6),
        )

    @property
    def enabled(self) -> bool:
        return True


def _count(request: web.Request, status: int) -> None:
    resource = request.match_info.route.resource
    metrics.RECEIVER_REQUESTS.inc((resource.canonical if resource is not None else "unmatched", status))


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
    except UnicodeError as exc:
        # Bytes that are not text where text was expected (a header, a query, a body): the
        # sender's to fix, never a 500.
        detail = f"the request holds bytes that are not valid text: {type(exc).__name__}"
        response = web.json_response({"error": "bad_encoding", "detail": detail}, status=400)
    except Exception:
        log.exception("request.failed", path=redact_path(request.path))
        response = web.json_response(
            {"error": "internal_error", "detail": "unexpected error; see the receiver log"},
            status=500,
        )
    _count(request, response.status)
    return response


async def broker_and_store(app: web.Application) -> AsyncIterator[None]:
    """Open the store and the publisher when the app starts; close both when it stops."""
    settings = app[SETTINGS]
    store = await Store.open(settings.database_url)
    publisher = Publisher(settings.rabbitmq_url, settings.delay_queues)
    app[STORE], app[PUBLISHER] = store, publisher

    async def nudge(check: ApprovalCheck) -> None:
        await publisher.publish_message(envelope.check_message(check))

    app[OPERATIONS] = Operations(store, settings, nudge)
    problem = await publisher.check()
    if problem:
        log.warning("receiver.broker_not_ready", detail=problem)
    with metrics.read_on_scrape(Gauges(store.db).refresh):
        yield
    await publisher.close()
    await store.close()


# A connection still waiting for a complete request this long after it opened (or after its
# previous answer) is closed: a client trickling its headers cannot hold it open (aiohttp's own
# default is an hour). Also the idle keep-alive time.
HEADER_TIMEOUT_SECONDS = 15.0


def make_runner(
    app: web.Application, *, header_timeout: float = HEADER_TIMEOUT_SECONDS, access_log: Any = None
) -> web.AppRunner:
    """The runner the receiver serves ``app`` with: headers bounded in time, and aiohttp's access
    log (when ``access_log`` is a logger) written with the token redacted."""
    return web.AppRunner(
        app, access_log=access_log, access_log_class=AccessLogger, keepalive_timeout=header_timeout
    )


# A host as a proxy may name it: a name or address, and a port.
_FORWARDED_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


@web.middleware
async def forwarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """``FORWARDED_HEADERS=true``: the scheme and host the client used, as the proxy in front
    says them (its first value: the one the proxy nearest the client wrote), for the URLs
    the receiver shows and the console's Origin check. A malformed value is ignored."""
    changes: dict[str, str] = {}
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
    if host and _FORWARDED_HOST.match(host):
        changes["host"] = host
    return await handler(request.clone(**changes) if changes else request)  # type: ignore[arg-type]


def create_app(settings: Settings) -> web.Application:
    """The receiver application; broker and store are opened when it starts."""
    middlewares = [forwarded, middleware] if settings.forwarded_headers else [middleware]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    # Resolved once: the module's lazy proxy resolves the configured logger on every call.
    app[ACCEPT_LOG] = structlog.get_logger("receiver").bind()
    # The worker's rules, to send upgrade-worthy alarms ahead of the others (PolicyError: a bad
    # POLICY_FILE stops the receiver at start, as it stops the worker).
    app[LANES] = Lanes(settings, load_policy(settings.policy_file) if settings.policy_file else None)
    app.cleanup_ctx.append(broker_and_store)
    setup_routes(app)
    return app


__all__ = ["StoreError", "create_app"]
