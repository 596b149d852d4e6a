"""Prometheus metrics of both processes, defined in one place, and the one ``/metrics`` view
that the receiver's and each worker's HTTP server answer with.

Each process exposes only what it touches: a metric family appears in a scrape once it has
a sample. Label values are bounded: HTTP statuses, skip reasons, outcome names, instance ids
of managed instances.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

# --- receiver ------------------------------------------------------------------------------
RECEIVER_REQUESTS = Counter(
    "autopilot_receiver_requests", "HTTP requests answered by the receiver", ["route", "status"]
)
ACCEPT_LATENCY = Histogram(
    "autopilot_receiver_accept_seconds",
    "Time from request to 202 (validation, publish, broker confirm)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PUBLISH_FAILURES = Counter(
    "autopilot_receiver_publish_failures", "Alarms the broker did not take (answered 503)"
)

# --- worker --------------------------------------------------------------------------------
MESSAGES = Counter(
    "autopilot_worker_messages",
    "Messages settled by outcome: upgraded, dry_run, each skip reason, retried, deferred, parked, …",
    ["outcome"],
)
API_LATENCY = Histogram(
    "autopilot_worker_api_request_seconds",
    "CloudAMQP API request latency",
    ["method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_RESPONSES = Counter(
    "autopilot_worker_api_responses", "CloudAMQP API responses by status (or network/timeout)", ["status"]
)
IN_FLIGHT = Gauge("autopilot_worker_in_flight", "Messages being processed right now")
BATCH_SIZE = Histogram(
    "autopilot_worker_batch_size",
    "Alarms whose first steps committed in one transaction (group commit)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
BATCH_FALLBACKS = Counter(
    "autopilot_worker_batch_fallbacks", "Batches whose transaction failed and were tried one by one"
)
LAST_UPGRADE = Gauge(
    "autopilot_worker_last_upgrade_timestamp_seconds",
    "Unix time of the last upgrade CloudAMQP accepted, per instance",
    ["instance"],
)

# --- notifications (worker) ------------------------------------------------------------------
# Labelled by channel kind (webhook, slack, pagerduty); an endpoint's id (a digest, no secret)
# only where it is the point (the endpoint disabled).
NOTIFY_SENT = Counter("autopilot_notify_sent", "Notifications delivered (2xx)", ["channel"])
NOTIFY_FAILED = Counter(
    "autopilot_notify_failed", "Delivery attempts that failed (then retried or parked)", ["channel"]
)
NOTIFY_PARKED = Counter(
    "autopilot_notify_parked", "Notifications given up, in cloudamqp.notifications.dead", ["channel"]
)
NOTIFY_DISABLED = Counter(
    "autopilot_notify_endpoints_disabled",
    "Endpoints disabled after answering 410 Gone",
    ["channel", "endpoint"],
)
NOTIFY_LATENCY = Histogram(
    "autopilot_notify_latency_seconds",
    "Time from the state change to its notification's delivery",
    ["channel"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
NOTIFY_REQUEST_SECONDS = Histogram(
    "autopilot_notify_request_seconds",
    "Duration of one delivery request",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


async def metrics_view(request: web.Request) -> web.Response:
    """``GET /metrics``: this process's samples in the Prometheus text format."""
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})
