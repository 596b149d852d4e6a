"""Baseline (b): the least an aiohttp webhook can do — parse the JSON body, answer 202.

``python -m bench.bare_app --port P``. No broker, no logging: the ceiling of the HTTP side.
"""

from __future__ import annotations

import argparse
import json
import uuid

from aiohttp import web


async def accept(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    if not isinstance(body, dict):
        return web.json_response({"error": "not_an_object"}, status=400)
    return web.json_response({"status": "accepted", "id": uuid.uuid4().hex}, status=202)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, like the receiver")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    app = web.Application()
    app.router.add_post("/cloudamqp/alarm", accept)
    app.router.add_get("/healthz", healthz)
    print("bare_app.ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
