"""One ``/metrics`` view (``shared.metrics.metrics_view``) for the receiver and every worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from receiver.app import create_app
from shared import metrics
from shared.settings import Settings
from tests.support import free_port
from worker.__main__ import serve_metrics


def metrics_handler(app: web.Application) -> Any:
    [route] = [
        r
        for r in app.router.routes()
        if r.method == "GET" and r.resource is not None and r.resource.canonical == "/metrics"
    ]
    return route.handler


def test_the_receiver_and_the_worker_serve_metrics_with_the_one_shared_view() -> None:
    assert metrics_handler(create_app(Settings())) is metrics.metrics_view


async def test_given_a_worker_metrics_port_then_prometheus_text_and_healthz_that_follows_consuming() -> None:
    port = free_port()
    settings = Settings.from_env({"RECEIVER_HOST": "127.0.0.1", "WORKER_METRICS_PORT": str(port)})
    consumer = SimpleNamespace(consuming=True, processor=SimpleNamespace(client=None))
    runner = await serve_metrics(settings, consumer)  # type: ignore[arg-type]
    base = f"http://127.0.0.1:{port}"
    try:
        assert metrics_handler(runner.app) is metrics.metrics_view
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == metrics.render()[1]
                assert "autopilot_worker_in_flight " in await resp.text()
            async with session.get(f"{base}/healthz") as resp:
                assert (resp.status, await resp.json()) == (200, {"status": "ok", "cloudamqp_api": "dry_run"})
            consumer.consuming = False
            async with session.get(f"{base}/healthz") as resp:
                assert (resp.status, await resp.json()) == (
                    503,
                    {"status": "broker_disconnected", "cloudamqp_api": "dry_run"},
                )
    finally:
        await runner.cleanup()
