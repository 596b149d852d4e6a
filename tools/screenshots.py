"""``python -m tools.screenshots``: the console's screenshots in ``docs/console/``;
``python -m tools.screenshots chart``: the README's picture of the instance page's usage chart.

Runs what an operator would: a receiver and a worker (``python -m receiver`` / ``worker``) on a
vhost of their own of the local RabbitMQ (created and deleted through the management API), a
throw-away SQLite store, and a stand-in CloudAMQP API on loopback that accepts upgrades (and
refuses one instance's, so that an alarm is parked). It posts a morning's alarms, pauses one
instance, then photographs every page with Debian's headless chromium through Playwright
(never a downloaded browser). Everything it starts is stopped, and the vhost removed.

The chart needs hours of samples and a forecast: a steady climb of 0.5 %/min is replayed
through the worker's watchdog, forecast, upgrade and follow-up at accelerated time, as
benchmark 8 does (``bench.forecast``, against the CloudAMQP stand-in's management API), on a
clock that ends now; then ``python -m receiver`` serves the page from that store.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "console"
AMQP = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT = "http://127.0.0.1:15672"
OPERATOR_TOKEN = "screenshot-operator-token-1f2e3d"
INSTANCES = ("prod-eu-1", "prod-eu-2", "prod-us-1", "staging-1")
POLICY = """
[[rules]]
name = "memory"
alarm_type = "memory"
above = 80
plan = "rabbit-1"

[[rules]]
name = "disk-careful"
alarm_type = "disk"
above = 90
plan = "panda-1"
approve = true
approve_timeout = 3600

[[rules]]
alarm_type = "queue"
action = "none"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@asynccontextmanager
async def _vhost() -> AsyncIterator[str]:
    name = f"screenshots-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.put(f"{MANAGEMENT}/api/vhosts/{name}") as resp:
            resp.raise_for_status()
        permissions = {"configure": ".*", "write": ".*", "read": ".*"}
        async with http.put(f"{MANAGEMENT}/api/permissions/{name}/guest", json=permissions) as resp:
            resp.raise_for_status()
        try:
            yield AMQP.rstrip("/") + "/" + quote(name, safe="")
        finally:
            async with http.delete(f"{MANAGEMENT}/api/vhosts/{name}"):
                pass


@asynccontextmanager
async def _stand_in_api() -> AsyncIterator[str]:
    """Accepts every upgrade, except prod-eu-2's (a 400: the alarm is parked)."""

    async def upgrade(request: web.Request) -> web.Response:
        if request.match_info["instance"] == "prod-eu-2":
            return web.json_response({"error": "plan rabbit-1 is not available in this region"}, status=400)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/api/instances/{instance}/actions/upgrade", upgrade)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _processes(
    env: dict[str, str], workdir: Path, modules: tuple[str, ...] = ("receiver", "worker")
) -> AsyncIterator[None]:
    full = {**os.environ, **env, "LOG_FORMAT": "json"}
    procs = []
    for module in modules:
        with (workdir / f"{module}.log").open("wb") as log:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", module, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT
                )
            )
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _until(what: str, check: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = await check()
        except aiohttp.ClientError:
            found = None
        if found:
            return found
        await asyncio.sleep(0.2)
    raise SystemExit(f"screenshots: timed out waiting for {what}")


async def _morning(http: aiohttp.ClientSession, base: str) -> None:
    """A morning's alarms: upgrades, reminders, a parked one, one awaiting approval, noise."""

    async def post(body: dict[str, Any]) -> None:
        async with http.post(f"{base}/cloudamqp/alarm", json={**body, "triggered_at": _now()}) as resp:
            assert resp.status == 202, await resp.text()

    for value in (82, 86, 89, 93):
        await post({"alarm_type": "memory", "value": value, "instance_id": "prod-eu-1"})
        await asyncio.sleep(0.4)
    await post({"alarm_type": "memory", "value": 88, "instance_id": "prod-eu-2"})
    await post({"alarm_type": "memory", "value": 84, "instance_id": "prod-us-1"})
    await post({"alarm_type": "disk", "value": 94, "instance_id": "staging-1"})
    await post({"alarm_type": "queue", "value": 12000, "instance_id": "prod-us-1",
                "message": "Queue orders.retry has 12000 messages"})  # fmt: skip
    await post(
        {"alarm_type": "cpu", "value": 71, "instance_id": "prod-eu-1", "message": "CPU above 70 % on node 2"}
    )
    await post({"message": "CPU above 70 % on node 2", "resolved": True})
    await post({"alarm_type": "connections", "value": 950, "instance_id": "staging-1"})


async def _settled(http: aiohttp.ClientSession, base: str) -> bool:
    async with http.get(f"{base}/actions?limit=100") as resp:
        actions = (await resp.json())["actions"]
    statuses = [a["status"] for a in actions]
    return len(actions) >= 11 and "failed" in statuses and "awaiting_approval" in statuses


async def _photograph(base: str, incident_id: str) -> list[Path]:
    from playwright.async_api import async_playwright

    chromium = _chromium()
    shots = {
        "login": "/ui/login",
        "overview": "/ui/",
        "incidents": "/ui/incidents",
        "incident": f"/ui/incidents/{incident_id}",
        "actions": "/ui/actions",
        "audit": "/ui/audit",
        "instance": "/ui/instances/prod-eu-1",
        "parked": "/ui/parked",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 860})
        page = await context.new_page()
        await page.goto("/ui/login")
        await page.screenshot(path=str(OUT / "login.png"))
        written.append(OUT / "login.png")
        await _login(page)
        for name, path in shots.items():
            if name == "login":
                continue
            await page.goto(path)
            await page.wait_for_load_state("networkidle")
            target = OUT / f"{name}.png"
            await page.screenshot(path=str(target), full_page=True)
            written.append(target)
        await browser.close()
    return written


def _chromium() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("screenshots: no chromium (apt-get install chromium)")
    return chromium


async def _login(page: Any) -> None:
    await page.fill("input[name=token]", OPERATOR_TOKEN)
    await page.fill("input[name=name]", "alice")
    await page.click("main button[type=submit]")
    await page.wait_for_url("**/ui/")


async def _replayed_climb(workdir: Path) -> tuple[str, str]:
    """A steady climb replayed until now (bench.forecast): the store's URL and the instance.
    The forecast comes at minute 31 (the lead time assumed while no plan change was measured,
    30 min), its plan change is done at minute 45; the picture is taken at minute 50."""
    from bench.forecast import MIN, PRE_ROLL, climb, world
    from bench.suite import Config
    from shared.logs import configure_logging

    configure_logging("json", "warning")
    minutes = 50 * MIN
    start = time.time() - PRE_ROLL - minutes
    async with world(Config(workdir), climb(0.5), "default", start) as replay:
        while replay.clock() < start + PRE_ROLL + minutes:
            await replay.step()
        return replay.database_url, replay.instance.providerid


async def _photograph_chart(base: str, instance: str) -> Path:
    from playwright.async_api import async_playwright

    target = OUT / "instance-chart.png"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=_chromium(), headless=True)
        context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 860})
        page = await context.new_page()
        await page.goto("/ui/login")
        await _login(page)
        await page.goto(f"/ui/instances/{instance}")
        await page.wait_for_selector("#forecast-why")
        await page.locator("#usage-chart").screenshot(path=str(target))
        await browser.close()
    return target


async def chart() -> int:
    """docs/console/instance-chart.png: the instance page's usage chart after a forecast."""
    _chromium()
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-chart-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        database_url, instance = await _replayed_climb(workdir)
        async with _vhost() as amqp_url:
            env = {
                "RABBITMQ_URL": amqp_url,
                "DATABASE_URL": database_url,
                "RECEIVER_HOST": "127.0.0.1",
                "RECEIVER_PORT": str(port),
                "OPERATOR_TOKEN": OPERATOR_TOKEN,
                "CONSOLE_SESSION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "CLOUDAMQP_INSTANCE_ID": instance,
            }
            async with _processes(env, workdir, ("receiver",)), aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    async with http.get(f"{base}/readyz") as resp:
                        return resp.status == 200

                await _until("the receiver", ready)
                target = await _photograph_chart(base, instance)
        print(f"[screenshots] {target.relative_to(ROOT)}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


async def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-screens-"))
    policy = workdir / "policy.toml"
    policy.write_text(POLICY)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        async with _vhost() as amqp_url, _stand_in_api() as api_url:
            env = {
                "RABBITMQ_URL": amqp_url,
                "DATABASE_URL": f"sqlite:///{workdir}/autopilot.db",
                "RECEIVER_HOST": "127.0.0.1",
                "RECEIVER_PORT": str(port),
                "WEBHOOK_TOKEN": "",
                "OPERATOR_TOKEN": OPERATOR_TOKEN,
                "CONSOLE_SESSION_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                "CLOUDAMQP_API_URL": api_url,
                "CLOUDAMQP_API_KEY": "screenshot-api-key",
                "CLOUDAMQP_INSTANCE_ID": ",".join(INSTANCES),
                "POLICY_FILE": str(policy),
                "RETRY_DELAYS": "0.2,0.5",
            }
            async with _processes(env, workdir), aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    async with http.get(f"{base}/readyz") as resp:
                        return resp.status == 200

                await _until("the receiver", ready)
                await asyncio.sleep(1.0)  # the worker declares and consumes within a second
                await _morning(http, base)
                await _until("the alarms to be decided", lambda: _settled(http, base))
                operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator": "bob"}
                pause = {"duration": 7200, "reason": "broker maintenance window"}
                async with http.post(
                    f"{base}/instances/prod-us-1/pause", json=pause, headers=operator
                ) as resp:
                    assert resp.status == 200, await resp.text()
                async with http.get(f"{base}/incidents?instance=prod-eu-1&status=open") as resp:
                    incidents = (await resp.json())["incidents"]
                incident = next(i for i in incidents if i["alarm_type"] == "memory")
                for path in await _photograph(base, incident["id"]):
                    print(f"[screenshots] {path.relative_to(ROOT)}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(chart() if sys.argv[1:] == ["chart"] else main()))
