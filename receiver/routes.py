"""Every URL the receiver answers, in one table.

Groups, each a block below: the webhook, the read-only JSON views of the store, and the
process's own endpoints (health, metrics, contract). An operator console (HTML pages under
``/ui/``) and operator write endpoints are groups of their own, added here beside these with
their handlers in a module of their own; ``receiver/openapi.json`` describes every JSON route.
"""

from __future__ import annotations

from aiohttp import web

from receiver import views
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
    # The process itself.
    router.add_get("/healthz", views.healthz)
    router.add_get("/readyz", views.readyz)
    router.add_get("/metrics", metrics.metrics_view)
    router.add_get("/openapi.json", views.openapi_view)
