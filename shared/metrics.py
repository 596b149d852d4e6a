"""Prometheus metrics of both processes, defined in one place, and the one ``/metrics`` view
that the receiver's and each worker's HTTP server answer with.

Each process exposes only what it touches: a metric family appears in a scrape once it has
a sample. Label values are bounded: HTTP statuses, skip reasons, outcome names, instance ids
of managed instances.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class HotCounter(Collector):
    """A labelled counter for the receiver's per-request path: an increment is one dict
    update, where prometheus_client's ``Counter`` takes a lock behind three calls; the samples
    (``_total`` and ``_created`` per label set, as ``Counter`` exposes them) are built when
    scraped. Label values are ``str()`` of the key's parts. One thread (the event loop) only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry | None = REGISTRY,
    ):
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._counts: dict[tuple[object, ...], int] = {}
        self._created: dict[tuple[object, ...], float] = {}
        if registry is not None:
            registry.register(self)

    def inc(self, key: tuple[object, ...]) -> None:
        counts = self._counts
        if key in counts:
            counts[key] += 1
        else:
            counts[key] = 1
            self._created[key] = time.time()

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for key, count in list(self._counts.items()):
            family.add_metric([str(part) for part in key], count, created=self._created[key])
        yield family


class HotHistogram(Collector):
    """A histogram without labels for the same path: an observation is a ``bisect`` and two
    additions, where ``Histogram`` takes two locks and walks its buckets in Python; the samples
    (cumulative ``_bucket``, ``_count``, ``_sum``, ``_created``) are built when scraped, the
    same as ``Histogram``'s. One thread (the event loop) only."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Iterable[float],
        registry: CollectorRegistry | None = REGISTRY,
    ):
        self._name, self._documentation = name, documentation
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        # Histogram's own spelling of the bounds ("1.0", "+Inf"); the helper has no annotations.
        self._le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._created = time.time()
        if registry is not None:
            registry.register(self)

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is >= amount, as Histogram.observe picks it.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self._name, self._documentation, "histogram")
        total = 0
        for le, count in zip(self._le, self._counts, strict=True):
            total += count
            metric.add_sample(f"{self._name}_bucket", {"le": le}, total)
        metric.add_sample(f"{self._name}_count", {}, total)
        metric.add_sample(f"{self._name}_sum", {}, self._sum)
        metric.add_sample(f"{self._name}_created", {}, self._created)
        yield metric


# --- receiver ------------------------------------------------------------------------------
# Touched on every request: the cheap kinds above (docs/benchmarks.md, the receiver's cost).
RECEIVER_REQUESTS = HotCounter(
    "autopilot_receiver_requests", "HTTP requests answered by the receiver", ["route", "status"]
)
ACCEPT_LATENCY = HotHistogram(
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
UNHANDLED = Counter(
    "autopilot_worker_unhandled",
    "Messages parked because they could not be handled (an unexpected error), by queue",
    ["queue"],
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

WATCHDOG_POLLS = Counter(
    "autopilot_watchdog_polls",
    "Reads of a managed instance's /api/nodes by the watchdog, by outcome (ok, unreachable)",
    ["outcome"],
)
WATCHDOG_ALARMS = Counter("autopilot_watchdog_alarms", "Alarms the watchdog raised itself", ["alarm_type"])
BROKER_CHECKS = Counter(
    "autopilot_broker_checks",
    "Broker checks before an upgrade, by result (verified, cleared, unverified)",
    ["result"],
)
ADVICE = Counter("autopilot_advice", "Downgrade advice recorded", ["kind"])

# --- the store (shared.store.retention) --------------------------------------------------------
RETENTION_PRUNED = Counter(
    "autopilot_retention_pruned",
    "Rows pruned past their retention limit, by kind (events, notifications, incidents, actions, audit)",
    ["kind"],
)
# Read from the store when scraped: every process that has the store says the same.
STORE_OLDEST = Gauge(
    "autopilot_store_oldest_age_seconds",
    "Age of the oldest row of each kind, kept ones included (0: none)",
    ["kind"],
)
STORE_SIZE = Gauge(
    "autopilot_store_size_bytes", "Size of the store: the SQLite file, or the PostgreSQL database"
)
STORE_FREE = Gauge(
    "autopilot_store_free_bytes", "SQLite: free pages in the file, which incremental vacuum hands back"
)


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


# What brings the gauges read at scrape time up to date (the store's, ``shared.store.retention``).
_ON_SCRAPE: list[Callable[[], Awaitable[None]]] = []


@contextmanager
def read_on_scrape(refresh: Callable[[], Awaitable[None]]) -> Iterator[None]:
    """While inside, every scrape of this process awaits ``refresh`` first."""
    _ON_SCRAPE.append(refresh)
    try:
        yield
    finally:
        _ON_SCRAPE.remove(refresh)


async def metrics_view(request: web.Request) -> web.Response:
    """``GET /metrics``: this process's samples in the Prometheus text format."""
    for refresh in list(_ON_SCRAPE):
        await refresh()
    body, content_type = render()
    return web.Response(body=body, headers={"Content-Type": content_type})
