"""Context baseline: the CloudAMQP blog's synchronous webhook, as a Flask app.

The upgrade call happens inside the request (``requests.post`` to the API), so a slow API
holds a server thread per alarm and nothing is retried or recorded. Run with Werkzeug's
threaded server: ``python -m bench.flask_app --port P --api http://127.0.0.1:Q``.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import requests
from flask import Flask, jsonify, request

UPGRADE_PLAN = "bunny-2"


def create_app(api_url: str, api_key: str) -> Flask:
    app = Flask(__name__)
    http = requests.Session()
    # One pooled connection per server thread, like a long-running deployment would keep.
    http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=128))

    def trigger_upgrade(instance_id: str, alarm_type: str, alarm_value: Any) -> None:
        url = f"{api_url}/api/instances/{instance_id}/actions/upgrade"
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        payload = {
            "plan": UPGRADE_PLAN,
            "reason": f"Automatic upgrade triggered by {alarm_type} alarm ({alarm_value}%)",
        }
        response = http.post(url, json=payload, headers=headers, timeout=10)
        response.raise_for_status()

    @app.post("/cloudamqp/alarm")
    def alarm() -> Any:
        payload = request.get_json(force=True)
        if payload.get("alarm_type") == "memory" and payload.get("value", 0) > 80:
            trigger_upgrade(payload.get("instance_id", "unknown"), "memory", payload["value"])
        return jsonify({"status": "ok"}), 200

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api", required=True)
    parser.add_argument("--key", default="bench-api-key")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log, like the receiver
    print("flask_app.ready", flush=True)
    create_app(args.api, args.key).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
