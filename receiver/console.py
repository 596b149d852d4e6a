"""The operator console: server-rendered HTML pages under ``/ui/``.

A sub-application of the receiver (``console_app``), so that its middlewares — the encrypted
session cookie, login, CSRF, the security headers and HTML error pages — cost the webhook and
the JSON views nothing. Templates are Jinja2 with autoescape (``receiver/templates``); the
only script is the vendored htmx (``receiver/static``), which polls each list for its fresh
rows; no inline script or style, so the Content-Security-Policy allows ``'self'`` only.

Who may do what: a login with ``OPERATOR_TOKEN`` may pause, resume, approve, deny, replay and
purge; a login with ``WEBHOOK_TOKEN`` (or with no token, where ``WEBHOOK_TOKEN`` is unset and
the JSON views are open anyway) may only look, and its writes are refused with 403. Every
write is a form POST that carries the session's CSRF token, and goes through the same
``shared.operations.Operations`` as the JSON endpoints (and so into the audit trail).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography import fernet
from markupsafe import Markup

from receiver import console_data
from receiver.keys import LANES, OPERATIONS, PUBLISHER, SETTINGS, STORE
from receiver.views import redact_path, same_secret
from shared.alarm import iso
from shared.controls import GLOBAL, MAX_OPERATOR, ControlError, clean_text, operator_name, pause_until
from shared.errors import BrokerUnavailable
from shared.fields import received_view
from shared.notifications import action_price
from shared.policy import Policy
from shared.settings import Settings
from shared.statuses import IncidentStatus
from shared.store.checks import last_alarms, last_check_run

log = structlog.get_logger("console")

HERE = Path(__file__).parent
PREFIX = "/ui"
STATIC = f"{PREFIX}/static/"
COOKIE = "autopilot_console"
SESSION_SECONDS = 12 * 3600
PAGE_SIZE = 50
DEFAULT_NAME = "console"
PAUSE_CHOICES = ((1800, "30 minutes"), (3600, "1 hour"), (7200, "2 hours"), (14400, "4 hours"),
                 (28800, "8 hours"), (86400, "1 day"), (604800, "1 week"))  # fmt: skip
OPERATOR, VIEWER = "operator", "viewer"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make Chrome send "Origin: null"
}

PROBE = web.AppKey("console_probe", console_data.BrokerProbe)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def public(handler: Handler) -> Handler:
    """Mark a handler that needs no login (the login page, the static files)."""
    handler.console_public = True  # type: ignore[attr-defined]
    return handler


def session_key(settings: Settings) -> tuple[fernet.Fernet, bool]:
    """The cookie's key: ``CONSOLE_SESSION_KEY``, else a fresh one (True: generated)."""
    if settings.console_session_key:
        return fernet.Fernet(settings.console_session_key), False
    return fernet.Fernet(fernet.Fernet.generate_key()), True


# --- the middleware: login, CSRF, headers, HTML errors ------------------------------------------


def _secure(response: web.StreamResponse, *, page: bool) -> None:
    response.headers.update(SECURITY_HEADERS)
    if page:
        response.headers["Cache-Control"] = "no-store"


def _same_origin(request: web.Request) -> bool:
    """A browser's POST names its origin; one from another site is refused (SameSite=Strict
    already keeps the cookie off it — this is the second lock)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


async def _check_post(request: web.Request, session: Session) -> None:
    try:
        # Read once here, for every POST: aiohttp keeps it for the handler's own ``post()``.
        form = await request.post()
    except (UnicodeError, LookupError, ValueError) as exc:  # bytes or a charset that is no text
        raise web.HTTPBadRequest(
            text=f"This form could not be read ({type(exc).__name__}): send it as UTF-8."
        ) from None
    given = form.get("_csrf")
    if not _same_origin(request) or not same_secret(
        given if isinstance(given, str) else None, session.get("csrf")
    ):
        raise web.HTTPForbidden(
            text="This form is stale or did not come from this console (its CSRF token is missing "
            "or wrong). Reload the page and try again."
        )


def _login_redirect(request: web.Request) -> web.StreamResponse:
    target = f"{PREFIX}/login?{urlencode({'next': request.path_qs})}"
    if request.headers.get("HX-Request"):
        # A poll whose session ended: htmx sends the whole page to the login.
        return web.Response(status=401, headers={"HX-Redirect": target})
    raise web.HTTPSeeOther(target)


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Login and CSRF first, then the handler; every answer gets the security headers, and
    every error is an HTML page (never JSON, never a traceback)."""
    is_public = getattr(request.match_info.handler, "console_public", False) or request.path.startswith(
        STATIC
    )
    try:
        session = await get_session(request)
        sid = session.get("sid")
        if sid and await request.config_dict[STORE].session_revoked(str(sid)):
            session.invalidate()  # a copy of a cookie whose session was logged out
        if request.method == "POST":
            await _check_post(request, session)
        if not is_public and not _logged_in(request, session):
            response = _login_redirect(request)
        else:
            response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            _secure(exc, page=True)
            raise
        response = await _error_page(request, exc.status, exc.reason, exc.text or "")
    except Exception:
        log.exception("console.failed", path=redact_path(request.path))
        response = await _error_page(
            request, 500, "Internal error", "Unexpected error; see the receiver log."
        )
    _secure(response, page=not request.path.startswith(STATIC))
    return response


async def _error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    if detail.startswith(f"{status}:"):
        detail = ""  # aiohttp's own text repeats the title
    try:
        session: Session | None = await get_session(request)
    except Exception:
        session = None
    context = {"status": status, "title": title, "detail": detail, **_chrome(request, session)}
    return aiohttp_jinja2.render_template("error.html", request, context, status=status)


# --- shared bits of every page -------------------------------------------------------------------


def _chrome(request: web.Request, session: Session | None) -> dict[str, Any]:
    settings = request.config_dict[SETTINGS]
    role = session.get("role") if session is not None and _logged_in(request, session) else None
    return {
        "user": session.get("name") if session is not None and role else None,
        "role": role,
        "can_write": role == OPERATOR and bool(settings.operator_token),
        "writes_configured": bool(settings.operator_token),
        "csrf": session.get("csrf", "") if session is not None else "",
        "path": request.path,
        "path_qs": request.path_qs,
    }


async def _context(request: web.Request, **values: Any) -> dict[str, Any]:
    return {**_chrome(request, await get_session(request)), **values}


def _render(request: web.Request, page: str, live: str, context: dict[str, Any]) -> web.Response:
    """The whole page, or only its live region when htmx polls for it."""
    name = live if request.headers.get("HX-Request") else page
    return aiohttp_jinja2.render_template(name, request, context)


async def _require_operator(request: web.Request) -> str:
    """The operator's name; 403 for a read-only login or when writes are disabled."""
    session = await get_session(request)
    if not request.config_dict[SETTINGS].operator_token:
        raise web.HTTPForbidden(text="Writes are disabled: OPERATOR_TOKEN is not set on the receiver.")
    if session.get("role") != OPERATOR:
        raise web.HTTPForbidden(
            text="This login is read-only: log in with the operator token to change things."
        )
    return str(session.get("name") or DEFAULT_NAME)


def _query(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value[:200] or None


def _offset(request: web.Request) -> int:
    try:
        return max(0, min(int(request.query.get("offset", "0")), 1_000_000))
    except ValueError:
        return 0


def _pager(request: web.Request, offset: int, more: bool) -> dict[str, Any]:
    def at(where: int) -> str:
        query = {k: v for k, v in request.query.items() if k != "offset" and v}
        if where:
            query["offset"] = str(where)
        return f"{request.path}?{urlencode(query)}" if query else request.path

    return {
        "newer": at(max(0, offset - PAGE_SIZE)) if offset else None,
        "older": at(offset + PAGE_SIZE) if more else None,
        "first": offset + 1,
    }


def _flash(request: web.Request, session: Session) -> str | None:
    message = session.pop("flash", None)
    return str(message) if message else None


def _back(session: Session, to: str, message: str) -> web.HTTPSeeOther:
    session["flash"] = message
    return web.HTTPSeeOther(to)


# --- login ---------------------------------------------------------------------------------------


def _role_for(settings: Settings, token: str) -> str | None:
    if settings.operator_token and same_secret(token, settings.operator_token):
        return OPERATOR
    if settings.webhook_token and same_secret(token, settings.webhook_token):
        return VIEWER
    if not settings.webhook_token and token == "":
        return VIEWER  # the JSON views are open too without a webhook token
    return None


def grant(settings: Settings, role: str | None) -> str | None:
    """What a session's role was granted by: a digest of the token it logged in with, so that
    changing (or unsetting) that token ends every session it opened."""
    if role == OPERATOR:
        token = settings.operator_token
    elif role == VIEWER:
        token = settings.webhook_token or ""
    else:
        return None
    if role == OPERATOR and not token:
        return None
    return hashlib.sha256(f"autopilot-console:{role}:{token}".encode()).hexdigest()[:32]


def _logged_in(request: web.Request, session: Session) -> bool:
    if not session.get("sid"):
        return False  # every login has a session id, which a logout revokes in the store
    role = session.get("role")
    expected = grant(request.config_dict[SETTINGS], role)
    return expected is not None and same_secret(session.get("grant"), expected)


def _next(target: str | None) -> str:
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{PREFIX}/"


@public
async def login_page(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.setdefault("csrf", secrets.token_urlsafe(32))
    settings = request.config_dict[SETTINGS]
    context = await _context(
        request,
        next=_next(request.query.get("next")),
        error=None,
        name=DEFAULT_NAME,
        open_reads=not settings.webhook_token,
    )
    return aiohttp_jinja2.render_template("login.html", request, context)


@public
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    settings = request.config_dict[SETTINGS]
    token = str(form.get("token", ""))
    try:
        name = operator_name(str(form.get("name", "")).strip() or DEFAULT_NAME)
    except ControlError:
        name = DEFAULT_NAME
    role = _role_for(settings, token)
    if role is None:
        log.info("console.login_refused")
        session = await get_session(request)
        context = await _context(
            request,
            next=_next(str(form.get("next", ""))),
            error="That token opens nothing here. Use OPERATOR_TOKEN, or WEBHOOK_TOKEN to look only.",
            name=name,
            open_reads=not settings.webhook_token,
        )
        context["csrf"] = session.get("csrf", "")
        return aiohttp_jinja2.render_template("login.html", request, context, status=401)
    session = await new_session(request)  # a fresh session (and CSRF token) at every login
    session.update(
        {
            "role": role,
            "grant": grant(settings, role),
            "name": name,
            "csrf": secrets.token_urlsafe(32),
            "since": time.time(),
            "sid": secrets.token_urlsafe(18),
        }
    )
    log.info("console.login", role=role, operator=name)
    raise web.HTTPSeeOther(_next(str(form.get("next", ""))))


async def logout(request: web.Request) -> web.Response:
    """End the session for good: the cookie is encrypted, not stored, so a copy of it would
    still open the console; its id is revoked in the store (shared by every receiver)."""
    session = await get_session(request)
    sid, since = session.get("sid"), session.get("since")
    if sid:
        now = time.time()
        started = float(since) if isinstance(since, int | float) else now
        await request.config_dict[STORE].revoke_session(str(sid), started + SESSION_SECONDS, now)
    session.invalidate()
    raise web.HTTPSeeOther(f"{PREFIX}/login")


# --- overview ------------------------------------------------------------------------------------


async def _health(request: web.Request) -> dict[str, Any]:
    broker = await request.config_dict[PUBLISHER].check()
    store_problem = None
    try:
        await request.config_dict[STORE].ping()
    except Exception as exc:
        store_problem = f"{type(exc).__name__}: {exc}"[:200]
    return {"broker": broker, "store": store_problem, "queues": await request.config_dict[PROBE].facts()}


async def overview(request: web.Request) -> web.Response:
    store, settings, now = request.config_dict[STORE], request.config_dict[SETTINGS], time.time()
    health = await _health(request)
    try:
        counts = await console_data.counts(store, now)
        pauses = await store.list_pauses(now)
        upgrades = await console_data.last_upgrades(store, limit=10)
        check = await last_check_run(store.db)
    except Exception as exc:
        raise web.HTTPServiceUnavailable(
            text=f"The state store does not answer: {type(exc).__name__}"
        ) from None
    dry_run = settings.dry_run or counts.last_decision_status == "dry_run"
    context = await _context(
        request,
        flash=_flash(request, await get_session(request)),
        health=health,
        counts=counts,
        pauses=pauses,
        upgrades=upgrades,
        dry_run=dry_run,
        dry_run_setting=settings.dry_run,
        now=now,
        pause_choices=PAUSE_CHOICES,
        webhook_url=webhook_url(request, settings),
        check=check,
    )
    return _render(request, "overview.html", "overview_live.html", context)


def webhook_url(request: web.Request, settings: Settings) -> str:
    """The URL to give CloudAMQP as the webhook recipient, as this request reached the
    receiver (through the proxy in front, with ``FORWARDED_HEADERS``); the token is never shown."""
    tail = "/<WEBHOOK_TOKEN>" if settings.webhook_token else ""
    return f"{request.scheme}://{request.host}/cloudamqp/alarm{tail}"


# --- incidents -----------------------------------------------------------------------------------


async def incidents(request: web.Request) -> web.Response:
    status = _query(request, "status")
    if status not in (None, *IncidentStatus):
        status = None
    filters = {
        "status": status,
        "instance": _query(request, "instance"),
        "alarm_type": _query(request, "alarm_type"),
    }
    offset = _offset(request)
    rows = await request.config_dict[STORE].list_incidents(**filters, limit=PAGE_SIZE + 1, offset=offset)
    context = await _context(
        request, rows=rows[:PAGE_SIZE], filters=filters, pager=_pager(request, offset, len(rows) > PAGE_SIZE)
    )
    return _render(request, "incidents.html", "incidents_live.html", context)


def timeline(events: list[dict[str, Any]], width: int = 640, height: int = 120) -> dict[str, Any] | None:
    """An SVG polyline of the events' numeric ``value`` over time (None: fewer than one)."""
    points = []
    for event in events:
        body = event.get("body")
        value = body.get("value") if isinstance(body, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            points.append((float(event["received_at"]), float(value)))
    if not points:
        return None
    points.sort()
    t0, t1 = points[0][0], points[-1][0]
    low, high = min(0.0, min(v for _, v in points)), max(100.0, max(v for _, v in points))
    span_t, span_v = (t1 - t0) or 1.0, (high - low) or 1.0
    pad = 8

    def xy(t: float, v: float) -> tuple[float, float]:
        x = pad + (t - t0) / span_t * (width - 2 * pad) if t1 > t0 else width / 2
        return round(x, 1), round(height - pad - (v - low) / span_v * (height - 2 * pad), 1)

    coords = [xy(t, v) for t, v in points]
    return {
        "width": width,
        "height": height,
        "polyline": " ".join(f"{x},{y}" for x, y in coords),
        "dots": coords,
        "low": low,
        "high": high,
        "first": iso(t0),
        "last": iso(t1),
        "count": len(points),
    }


INCIDENT_ACTIONS = 20  # the newest actions on an incident's page; the actions page has the rest


async def incident(request: web.Request) -> web.Response:
    """An incident with a page of its events (newest first), its first and last event and its
    newest actions: bounded however many alarms it grouped."""
    offset = _offset(request)
    page = await request.config_dict[STORE].get_incident(
        request.match_info["incident_id"], limit=PAGE_SIZE, offset=offset, actions=INCIDENT_ACTIONS
    )
    if page is None:
        raise web.HTTPNotFound(text="No incident with this id.")
    shown = [*page.events, *(e for e in (page.first_event, page.last_event) if e is not None)]
    for event in shown:
        event["body"] = json.loads(event["body"]) if isinstance(event["body"], str) else event["body"]
    context = await _context(
        request,
        incident=page.incident,
        page=page,
        events=page.events,
        actions=page.actions,
        chart=timeline(page.events),
        pager=_pager(request, offset, offset + len(page.events) < page.events_total),
    )
    return _render(request, "incident.html", "incident_live.html", context)


# --- actions, approvals, audit -----------------------------------------------------------------


async def actions(request: web.Request) -> web.Response:
    store = request.config_dict[STORE]
    filters = {
        "instance": _query(request, "instance"),
        "status": _query(request, "status"),
        "alarm_type": _query(request, "alarm_type"),
        "incident": _query(request, "incident"),
    }
    offset = _offset(request)
    rows = await store.list_actions(**filters, limit=PAGE_SIZE + 1, offset=offset)
    awaiting = await store.list_actions(status="awaiting_approval", limit=100)
    session = await get_session(request)
    context = await _context(
        request,
        flash=_flash(request, session),
        rows=rows[:PAGE_SIZE],
        awaiting=awaiting,
        filters=filters,
        pager=_pager(request, offset, len(rows) > PAGE_SIZE),
        now=time.time(),
    )
    return _render(request, "actions.html", "actions_live.html", context)


async def _decide(request: web.Request, approve: bool) -> web.Response:
    who = await _require_operator(request)
    form = await request.post()
    action_id = request.match_info["action_id"]
    session = await get_session(request)
    operations = request.config_dict[OPERATIONS]
    try:
        why = clean_text(form.get("reason") or None, "reason")
        act = operations.approve if approve else operations.deny
        await act(action_id, operator=who, reason=why, now=time.time())
    except ControlError as exc:
        raise _back(session, f"{PREFIX}/actions", f"Not done: {exc.detail} ({exc.error}).") from None
    done = "Approved" if approve else "Denied"
    raise _back(session, f"{PREFIX}/actions", f"{done} upgrade {action_id}.")


async def approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def deny(request: web.Request) -> web.Response:
    return await _decide(request, False)


async def audit(request: web.Request) -> web.Response:
    offset = _offset(request)
    filters = {
        "act": _query(request, "act"),
        "actor": _query(request, "actor"),
        "target": _query(request, "target"),
    }
    rows = await request.config_dict[STORE].list_audit(**filters, limit=PAGE_SIZE + 1, offset=offset)
    for row in rows:
        row["detail"] = json.loads(row["detail"]) if isinstance(row["detail"], str) else row["detail"]
    context = await _context(
        request, rows=rows[:PAGE_SIZE], filters=filters, pager=_pager(request, offset, len(rows) > PAGE_SIZE)
    )
    return _render(request, "audit.html", "audit_live.html", context)


# --- the alarms received ---------------------------------------------------------------------------


ALARMS_SHOWN = 50


async def alarms(request: web.Request) -> web.Response:
    """The last alarms received as they arrived (escaped), what was read from each (through the
    policy file's ``[fields]``), the keys nothing read, and what became of it."""
    rows = await last_alarms(request.config_dict[STORE].db, ALARMS_SHOWN)
    fields = request.config_dict[LANES].policy.fields
    views = [received_view(row, fields) for row in rows]
    context = await _context(request, alarms=views, mapped=fields.describe())
    return _render(request, "alarms.html", "alarms_live.html", context)


# --- instances -----------------------------------------------------------------------------------


async def instances(request: web.Request) -> web.Response:
    store, settings, now = request.config_dict[STORE], request.config_dict[SETTINGS], time.time()
    pauses = {p.scope: p for p in await store.list_pauses(now)}
    names = await console_data.known_instances(store, settings)
    context = await _context(
        request,
        instances=names,
        pauses=pauses,
        managed=set(settings.instance_ids),
        global_pause=pauses.get(GLOBAL),
    )
    return aiohttp_jinja2.render_template("instances.html", request, context)


async def instance(request: web.Request) -> web.Response:
    store, settings, now = request.config_dict[STORE], request.config_dict[SETTINGS], time.time()
    name = request.match_info["instance"]
    pauses = [p for p in await store.list_pauses(now) if p.scope in (name, GLOBAL)]
    upgrades = await console_data.last_upgrades(store, instance=name, limit=50)
    claims = await console_data.claims_of(store, name)
    recent = await store.list_actions(instance=name, limit=20)
    lanes = request.config_dict.get(LANES)
    # The policy the receiver routes by (the worker's, from the same POLICY_FILE) names the
    # threshold the chart draws.
    policy = lanes.policy if lanes is not None else Policy.default(settings)
    disks = await console_data.disk_history_of(store, name)
    charts = await console_data.charts_of(store, name, policy, settings, upgrades, disks)
    context = await _context(
        request,
        flash=_flash(request, await get_session(request)),
        name=name,
        managed=name in settings.managed,
        pauses=pauses,
        own_pause=next((p for p in pauses if p.scope == name), None),
        upgrades=upgrades,
        disks=disks,
        plan=await console_data.plan_of(store, name, upgrades),
        claims=claims,
        recent=recent,
        usage=await console_data.usage_of(store, name),
        spark=(console_data.SPARK_W, console_data.SPARK_H),
        advice=await console_data.advice_of(store, name),
        # Built and escaped by receiver.chart: markup, not text to escape again.
        charts=charts,
        memory_chart=Markup(charts.memory),
        disk_chart=Markup(charts.disk),
        now=now,
        pause_choices=PAUSE_CHOICES,
    )
    return _render(request, "instance.html", "instance_live.html", context)


def _instance_url(instance: str | None) -> str:
    return f"{PREFIX}/instances/{instance}" if instance else f"{PREFIX}/"


async def pause(request: web.Request) -> web.Response:
    who = await _require_operator(request)
    form = await request.post()
    instance = request.match_info.get("instance")
    session, now = await get_session(request), time.time()
    try:
        seconds = float(str(form.get("duration", "")))
    except ValueError:
        raise _back(session, _instance_url(instance), "Not paused: choose how long.") from None
    try:
        until = pause_until({"duration": seconds}, now)
        why = clean_text(form.get("reason") or None, "reason")
        done = await request.config_dict[OPERATIONS].pause(instance, until, operator=who, reason=why, now=now)
    except ControlError as exc:
        raise _back(session, _instance_url(instance), f"Not paused: {exc.detail}.") from None
    raise _back(session, _instance_url(instance), f"Paused: {done.describe()}.")


async def resume(request: web.Request) -> web.Response:
    who = await _require_operator(request)
    form = await request.post()
    instance = request.match_info.get("instance")
    session = await get_session(request)
    try:
        why = clean_text(form.get("reason") or None, "reason")
        ended = await request.config_dict[OPERATIONS].resume(
            instance, operator=who, reason=why, now=time.time()
        )
    except ControlError as exc:
        raise _back(session, _instance_url(instance), f"Not resumed: {exc.detail}.") from None
    what = "every instance" if instance is None else f"instance {instance}"
    raise _back(session, _instance_url(instance), f"Resumed {what}." if ended else f"{what} was not paused.")


# --- the parking lot -----------------------------------------------------------------------------


async def parked(request: web.Request) -> web.Response:
    try:
        total, messages = await console_data.parked(request.config_dict[PROBE])
        problem = None
    except BrokerUnavailable as exc:
        total, messages, problem = 0, [], str(exc)
    context = await _context(
        request,
        flash=_flash(request, await get_session(request)),
        total=total,
        messages=messages,
        problem=problem,
    )
    return _render(request, "parked.html", "parked_live.html", context)


async def replay(request: web.Request) -> web.Response:
    await _require_operator(request)
    form = await request.post()
    session = await get_session(request)
    every = form.get("all") == "yes"
    ids = None if every else {str(v) for v in form.getall("id", []) if str(v).strip()}
    if ids is not None and not ids:
        raise _back(session, f"{PREFIX}/parked", "Nothing replayed: no message chosen.")
    if every and form.get("confirm") != "yes":
        return await _confirm(request, "replay", "Replay every parked message to cloudamqp.alarms?")
    try:
        replayed, found = await console_data.replay(request.config_dict[PROBE], ids)
    except BrokerUnavailable as exc:
        raise _back(session, f"{PREFIX}/parked", f"Nothing replayed: {exc}") from None
    missing = sorted((ids or set()) - found)
    note = f" Not found (replayed or purged meanwhile?): {', '.join(missing)}." if missing else ""
    log.info("console.replayed", count=len(replayed), operator=session.get("name"))
    raise _back(
        session, f"{PREFIX}/parked", f"Replayed {len(replayed)} message(s) with a fresh attempt count.{note}"
    )


async def purge(request: web.Request) -> web.Response:
    await _require_operator(request)
    form = await request.post()
    session = await get_session(request)
    if form.get("confirm") != "yes":
        return await _confirm(
            request, "purge", "Delete every parked message for good? This cannot be undone."
        )
    try:
        purged = await console_data.purge(request.config_dict[PROBE])
    except BrokerUnavailable as exc:
        raise _back(session, f"{PREFIX}/parked", f"Nothing purged: {exc}") from None
    log.info("console.purged", count=purged, operator=session.get("name"))
    raise _back(session, f"{PREFIX}/parked", f"Purged {purged} message(s).")


async def _confirm(request: web.Request, what: str, question: str) -> web.Response:
    try:
        total, _ = await console_data.parked(request.config_dict[PROBE], limit=0)
    except BrokerUnavailable:
        total = 0
    context = await _context(request, what=what, question=question, total=total)
    return aiohttp_jinja2.render_template("confirm.html", request, context)


# --- the sub-application ---------------------------------------------------------------------------


def _span(seconds: float | None) -> str:
    """A duration as a person reads it: ``60 min``, ``90 s``."""
    if seconds is None:
        return "—"
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _filters() -> dict[str, Callable[..., Any]]:
    def when(ts: float | None) -> str:
        text = iso(ts)
        return text.replace("T", " ")[:19] + "Z" if text else "—"

    def left(until: float | None, now: float) -> str:
        if until is None or until <= now:
            return "—"
        seconds = int(until - now)
        hours, rest = divmod(seconds, 3600)
        return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"

    def pretty(value: Any) -> str:
        # Plain text for autoescape to escape (``tojson`` would show ``<`` as ``\u003c``).
        return json.dumps(value, indent=1, ensure_ascii=False, sort_keys=True, default=str)

    def size(value: float | None) -> str:
        if value is None:
            return "?"
        for unit in ("B", "kB", "MB"):
            if abs(value) < 1000:
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1000
        return f"{value:.1f} GB"

    def price(row: dict[str, Any]) -> str | None:
        """An action row's plan change with its monthly prices, where they are known."""
        found = action_price(row)
        return str(found["text"]) if found else None

    return {"when": when, "left": left, "pretty": pretty, "size": size, "price": price, "span": _span}


async def _probe(app: web.Application) -> Any:
    app[PROBE] = console_data.BrokerProbe(app[SETTINGS].rabbitmq_url)
    yield
    await app[PROBE].close()


def console_app(settings: Settings) -> web.Application:
    """The console, to mount under ``/ui/``; it reads the parent's store, publisher and
    operations through ``request.config_dict``."""
    key, _generated = session_key(settings)
    storage = EncryptedCookieStorage(
        key, cookie_name=COOKIE, max_age=SESSION_SECONDS, path=f"{PREFIX}/", httponly=True, samesite="Strict"
    )
    app = web.Application(middlewares=[session_middleware(storage), console_middleware])
    app[SETTINGS] = settings
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters=_filters(),
    )
    env.globals.update(prefix=PREFIX, max_operator=MAX_OPERATOR)
    app.cleanup_ctx.append(_probe)
    router = app.router
    router.add_get("/", overview)
    router.add_get("/login", login_page)
    router.add_post("/login", login)
    router.add_post("/logout", logout)
    router.add_get("/incidents", incidents)
    router.add_get("/incidents/{incident_id}", incident)
    router.add_get("/actions", actions)
    router.add_post("/actions/{action_id}/approve", approve)
    router.add_post("/actions/{action_id}/deny", deny)
    router.add_get("/audit", audit)
    router.add_get("/alarms", alarms)
    router.add_get("/instances", instances)
    router.add_get("/instances/{instance}", instance)
    router.add_post("/instances/{instance}/pause", pause)
    router.add_post("/instances/{instance}/resume", resume)
    router.add_post("/pause", pause)
    router.add_post("/resume", resume)
    router.add_get("/parked", parked)
    router.add_post("/parked/replay", replay)
    router.add_post("/parked/purge", purge)
    router.add_static("/static/", HERE / "static")
    return app


async def redirect_to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound(f"{PREFIX}/")
