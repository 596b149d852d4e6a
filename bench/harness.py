"""What every benchmark needs: a fresh vhost or database (always removed), our processes and
the baseline processes, resident memory, percentiles and the machine's facts.

Benchmarks report; they do not assert. Everything here is loopback-only and bounded.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil

from tests.support import ROOT, Proc, Services, free_port, management_request, wait_until

SERVICES = Services(
    amqp_url=os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    management_url=os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"),
    postgres_url=os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
API_KEY = "bench-api-key"
# The plan the benchmarks' upgrades ask for: one CloudAMQP sells, as the worker checks it against
# the stand-in's GET /api/plans (the default, the blog's bunny-2, is refused as unknown_plan).
PLAN = "hare-1"


def stand_in_args(port: int, latency: float) -> list[str]:
    """Arguments of the CloudAMQP stand-in (``tests.cloudamqp_stand_in``) in its own process:
    the blog's endpoint answering, as the benchmarks' instances are not in its account."""
    return ["--port", str(port), "--latency", str(latency), "--key", API_KEY]


def plan_changes(rows: list[list[Any]]) -> list[list[Any]]:
    """The stand-in's recorded requests ``[epoch, method, path, status]`` that asked for a plan change."""
    return [r for r in rows if r[2].endswith("/actions/upgrade") or (r[1] == "PUT" and r[2].count("/") == 3)]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@asynccontextmanager
async def fresh_vhost(services: Services = SERVICES) -> AsyncIterator[str]:
    """A vhost of its own for one run (deleted afterwards, whatever happens); yields its URL."""
    name = f"bench-{uuid.uuid4().hex[:10]}"
    await management_request(services, "PUT", f"/api/vhosts/{name}")
    try:
        await management_request(
            services,
            "PUT",
            f"/api/permissions/{name}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield urlsplit(services.amqp_url)._replace(path="/" + quote(name, safe="")).geturl()
    finally:
        await management_request(services, "DELETE", f"/api/vhosts/{name}")


@asynccontextmanager
async def fresh_postgres(services: Services = SERVICES) -> AsyncIterator[str]:
    """A PostgreSQL database of its own (dropped afterwards); yields its URL."""
    import asyncpg

    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(services.postgres_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlsplit(services.postgres_url)._replace(path=f"/{name}").geturl()
    finally:
        admin = await asyncpg.connect(services.postgres_url, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MiB."""
    return float(psutil.Process(pid).memory_info().rss) / (1024 * 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def machine_cpu() -> tuple[float, float]:
    """Busy and total CPU seconds of the whole machine so far (all cores)."""
    times = psutil.cpu_times()
    total = float(sum(times))
    return total - float(times.idle + getattr(times, "iowait", 0.0)), total


@dataclass
class Processes:
    """Our processes and the baselines', all stopped when the run ends."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self, module: str, env: dict[str, str], args: list[str] | None = None, *, cwd: Path | None = None
    ) -> Proc:
        """``cwd``: run another checkout's ``module`` (default: this one's). Always a new
        interpreter, as an operator starts it: a benchmark measures the program's own start,
        memory and speed, never a child of the tests' fork server."""
        log_path = self.workdir / f"{module.replace('.', '-')}-{uuid.uuid4().hex[:8]}.log"
        proc = Proc(module, {"LOG_LEVEL": "info", **env}, log_path, args, cwd=cwd or ROOT, fork=False)
        self.procs.append(proc)
        return proc

    async def start(
        self, module: str, env: dict[str, str], ready: str, args: list[str] | None = None
    ) -> tuple[Proc, float]:
        """Start ``module`` and wait for its ``ready`` log event; returns (proc, seconds)."""
        started = time.monotonic()
        proc = self.spawn(module, env, args)
        await proc.wait_event(ready, timeout=60)
        return proc, time.monotonic() - started

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                try:
                    await proc.stop(timeout=30)
                except AssertionError:
                    await proc.kill()
        self.procs.clear()


async def wait_http_ready(url: str, timeout: float = 30.0) -> None:
    """Until ``url`` answers at all (for the baselines, which log nothing)."""
    import aiohttp

    async def answers() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(url) as resp:
                return resp.status < 500
        except aiohttp.ClientError:
            return False

    await wait_until(answers, timeout=timeout, interval=0.02, what=url)


def machine_facts() -> dict[str, Any]:
    """What a reader needs to compare numbers: CPU, memory, versions, load."""
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aio_pika
    import aiohttp

    rabbit = "unknown"
    with suppress(OSError, subprocess.SubprocessError):
        rabbit = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return {
        "cpu": cpu_model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "aio_pika": aio_pika.__version__,
        "rabbitmq": rabbit,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_revision() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


async def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


__all__ = ["ROOT", "free_port", "sys", "wait_until"]
