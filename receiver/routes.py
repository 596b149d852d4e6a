"""Every URL the receiver answers, in one table.

Groups, each a block below: the webhook, the read-only JSON views of the store, the
operator's write endpoints (``receiver.controls``), and the process's own endpoints (health,
metrics, contract). An operator console (HTML pages under ``/ui/``) is a group of its own,
added here beside these with its handlers in a module of its own; ``receiver/openapi.json``
describes every JSON route.
"""

from __future__ import annotations

from aiohttp import web

from receiver import console, controls, views
from receiver.keys import SETTINGS
from shared import metrics


def setup_routes(app: web.Application) -> None:
    router = app.router
    # The webhook CloudAMQP posts to; the token may also be the last path segment.
    router.add_post("/cloudamqp/alarm", views.receive_alarm)
    router.add_post("/cloudamqp/alarm/{token}", views.receive_alarm)
    # Read-only views of the state store.
    router.add_get("/incidents", views.list_incidents)
    router.add_get("/incidents/{incident_id}", views.get_incident)
    router.add_get("/actions", views.list_actions)
    router.add_get("/events", views.list_events)
    router.add_get("/notifications", views.list_notifications)
    router.add_get("/pauses", views.list_pauses)
    router.add_get("/audit", views.list_audit)
    router.add_get("/advice", views.list_advice)
    router.add_get("/instances/{instance}/usage", views.instance_usage)
    # The operator's controls (OPERATOR_TOKEN): pauses and approvals.
    router.add_post("/instances/{instance}/pause", controls.pause)
    router.add_delete("/instances/{instance}/pause", controls.resume)
    router.add_post("/pause", controls.pause)
    router.add_delete("/pause", controls.resume)
    router.add_post("/actions/{action_id}/approve", controls.approve)
    router.add_post("/actions/{action_id}/deny", controls.deny)
    # The process itself.
    router.add_get("/healthz", views.healthz)
    router.add_get("/readyz", views.readyz)
    router.add_get("/metrics", metrics.metrics_view)
    router.add_get("/openapi.json", views.openapi_view)
    # The operator console: HTML pages, a sub-application with its own middlewares (session,
    # CSRF, security headers, HTML errors) that the routes above never pass through.
    router.add_get("/", console.redirect_to_console)
    router.add_get("/ui", console.redirect_to_console)
    app.add_subapp("/ui/", console.console_app(app[SETTINGS]))
