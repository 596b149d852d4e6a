"""``make demo``: post sample alarms to a running receiver and show what became of them."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp

from shared.runtime import load_settings_or_exit
from shared.settings import Settings


def _samples() -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return [
        # CloudAMQP's own example: no instance_id means the first of CLOUDAMQP_INSTANCE_ID.
        {"alarm_type": "memory", "value": 85, "triggered_at": now},
        {"alarm_type": "memory", "value": 88, "triggered_at": now},  # within the cooldown
        {"message": "Queue depth above 10000 on orders", "alarm_type": "queue", "value": 12000},
        {"message": "Queue depth above 10000 on orders", "resolved": True},
    ]


async def run(settings: Settings) -> int:
    host = "127.0.0.1" if settings.receiver_host in {"0.0.0.0", "::"} else settings.receiver_host
    base = f"http://{host}:{settings.receiver_port}"
    headers = {"Authorization": f"Bearer {settings.webhook_token}"} if settings.webhook_token else {}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as http:
        samples = _samples()
        for alarm in samples:
            try:
                async with http.post(f"{base}/cloudamqp/alarm", json=alarm) as resp:
                    print(f"POST {json.dumps(alarm)} -> {resp.status} {await resp.text()}")
            except aiohttp.ClientError as exc:
                print(f"the receiver at {base} does not answer ({exc}); start it with `make run`")
                return 1
        deadline = time.monotonic() + 10
        actions: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(actions) < len(samples):
            await asyncio.sleep(0.3)
            async with http.get(f"{base}/actions?limit=10") as resp:
                actions = (await resp.json())["actions"]
        async with http.get(f"{base}/incidents?limit=10") as resp:
            incidents = (await resp.json())["incidents"]
    print("\nincidents:")
    for incident in incidents:
        print(f"  [{incident['status']:8}] {incident['title']}  (count {incident['count']})")
    print("actions:")
    for action in actions:
        print(f"  {action['status']:12} {action['reason'] or action['plan'] or ''}  {action['detail'] or ''}")
    if any(a["reason"] in {"not_managed", "no_instance"} for a in actions):
        print("\n(no upgrade decided: start `make run` with CLOUDAMQP_INSTANCE_ID=demo-instance)")
    return 0


def main() -> int:
    settings = load_settings_or_exit("demo")
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
