"""Baseline (c): the least receiver — read the body, parse it, publish it with the receiver's
own ``Publisher`` (persistent, mandatory, confirmed), answer 202. No token, no validation
beyond "is JSON", no log line, no metrics, no middleware.

``python -m bench.least_receiver [AMQP_URL] [--port P]`` (defaults: ``RABBITMQ_URL`` and
``RECEIVER_PORT`` from the environment, as the receiver reads them). What is left between it and the receiver
is what the receiver does for its operators; what is left between it and the raw publisher is
the HTTP server's share.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import AsyncIterator

import orjson
import uvloop
from aiohttp import web

from shared.alarm import new_id
from shared.publisher import Publisher
from shared.settings import Settings

PUBLISHER = web.AppKey("publisher", Publisher)


async def accept(request: web.Request) -> web.Response:
    body = await request.read()
    orjson.loads(body)
    event_id = new_id()
    await request.app[PUBLISHER].publish(body, event_id, time.time())
    return web.Response(
        body=orjson.dumps({"status": "accepted", "id": event_id}), status=202, content_type="application/json"
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="?", default=os.environ.get("RABBITMQ_URL"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("RECEIVER_PORT", "8080")))
    args = parser.parse_args()
    if not args.url:
        parser.error("no AMQP URL (argument or RABBITMQ_URL)")
    uvloop.install()
    app = web.Application()
    app.router.add_post("/cloudamqp/alarm", accept)
    app.router.add_get("/healthz", healthz)

    async def publisher(app: web.Application) -> AsyncIterator[None]:
        app[PUBLISHER] = Publisher(args.url, Settings().retry_delays)
        if problem := await app[PUBLISHER].check():
            raise SystemExit(f"least_receiver: {problem}")
        print(json.dumps({"event": "least_receiver.ready"}), flush=True)
        yield
        await app[PUBLISHER].close()

    app.cleanup_ctx.append(publisher)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
