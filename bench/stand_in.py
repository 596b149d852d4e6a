"""A stand-in CloudAMQP API in its own process, for benchmarks: answers every upgrade with 200
after ``--latency`` seconds and records when each request arrived.

``python -m bench.stand_in --port P --latency 0.05``; ``GET /_bench/arrivals`` returns the
recorded ``[[epoch_seconds, method, path], …]``; ``DELETE /_bench/arrivals`` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiohttp import web

ARRIVALS = web.AppKey("arrivals", list)


async def upgrade(request: web.Request) -> web.Response:
    request.app[ARRIVALS].append((time.time(), request.method, request.path))
    await request.read()
    latency = request.app["latency"]
    if latency:
        await asyncio.sleep(latency)
    return web.json_response({"status": "ok"})


async def arrivals(request: web.Request) -> web.Response:
    if request.method == "DELETE":
        request.app[ARRIVALS].clear()
    return web.json_response(request.app[ARRIVALS])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    app = web.Application()
    app["latency"] = args.latency
    app[ARRIVALS] = []
    app.router.add_route("*", "/_bench/arrivals", arrivals)
    app.router.add_route("*", "/api/{tail:.*}", upgrade)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print("stand_in.ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
