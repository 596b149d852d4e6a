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


async def _post(http: aiohttp.ClientSession, base: str, samples: list[dict[str, Any]]) -> list[str]:
    """Post each sample; the event ids the receiver accepted."""
    ids: list[str] = []
    for alarm in samples:
        async with http.post(f"{base}/cloudamqp/alarm", json=alarm) as resp:
            body = await resp.text()
            print(f"POST {json.dumps(alarm)} -> {resp.status} {body}")
            if resp.status == 202:
                ids.append(json.loads(body)["id"])
    return ids


async def _actions_for(http: aiohttp.ClientSession, base: str, ids: list[str]) -> list[dict[str, Any]]:
    """The actions the workers recorded for these events (waiting up to 10 s for all of them)."""
    deadline = time.monotonic() + 10
    ours: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(ours) < len(ids):
        await asyncio.sleep(0.3)
        async with http.get(f"{base}/actions?limit=100") as resp:
            ours = [a for a in (await resp.json())["actions"] if a["event_id"] in ids]
    return ours


def _report(settings: Settings, incidents: list[dict[str, Any]], actions: list[dict[str, Any]]) -> None:
    print("\nincidents:")
    for incident in incidents:
        print(f"  [{incident['status']:8}] {incident['title']}  (count {incident['count']})")
    print("actions:")
    for action in actions:
        print(f"  {action['status']:12} {action['reason'] or action['plan'] or ''}  {action['detail'] or ''}")
    reasons = {a["reason"] for a in actions}
    if reasons & {"not_managed", "no_instance"}:
        print("\n(no upgrade decided: start `make run` with CLOUDAMQP_INSTANCE_ID=demo-instance)")
    elif "cooling_down" in reasons and not any(a["status"] in {"dry_run", "succeeded"} for a in actions):
        store = settings.database_url.removeprefix("sqlite:///")
        where = f"remove {store}*" if store != settings.database_url else "use a fresh DATABASE_URL"
        print(
            "\n(no upgrade this time: an earlier run upgraded the instance within COOLDOWN_SECONDS. "
            f"To start the demo afresh, stop `make run`, {where} — incidents, actions and "
            "cooldowns — and start it again)"
        )


async def run(settings: Settings) -> int:
    host = "127.0.0.1" if settings.receiver_host in {"0.0.0.0", "::"} else settings.receiver_host
    base = f"http://{host}:{settings.receiver_port}"
    headers = {"Authorization": f"Bearer {settings.webhook_token}"} if settings.webhook_token else {}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            ids = await _post(http, base, _samples())
        except aiohttp.ClientError as exc:
            print(f"the receiver at {base} does not answer ({exc}); start it with `make run`")
            return 1
        actions = await _actions_for(http, base, ids)
        async with http.get(f"{base}/incidents?limit=100") as resp:
            touched = {a["incident_id"] for a in actions}
            incidents = [i for i in (await resp.json())["incidents"] if i["id"] in touched]
    _report(settings, incidents, actions)
    return 0


def main() -> int:
    settings = load_settings_or_exit("demo")
    return asyncio.run(run(settings))


if __name__ == "__main__":
    raise SystemExit(main())
