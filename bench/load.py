"""Load generators: HTTP at a fixed concurrency (closed loop) or a fixed rate (open loop), and
the raw aio-pika publisher with confirms that the receiver is measured against."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import orjson

from bench.harness import percentile
from receiver.lanes import Lanes
from shared import topology
from shared.envelope import alarm_headers
from shared.settings import Settings

BodyFn = Callable[[int], bytes]


@dataclass
class LoadResult:
    """What one measurement window saw: completions, statuses, latencies (ms)."""

    seconds: float
    statuses: Counter[Any] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    late_starts: int = 0  # open loop: requests sent more than 1 ms after their slot
    percentiles_ms: dict[float, float] = field(default_factory=dict)  # when only these are known (wrk)
    client: str = "aiohttp"

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    def rate(self, status: Any = 202) -> float:
        return self.statuses[status] / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        if q in self.percentiles_ms:
            return self.percentiles_ms[q]
        return percentile(self.latencies_ms, q)

    def summary(self, status: Any = 202) -> dict[str, Any]:
        return {
            "rate_per_s": round(self.rate(status), 1),
            "completed": self.completed,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "p50_ms": round(self.p(50), 2),
            "p99_ms": round(self.p(99), 2),
            "max_ms": round(max(self.latencies_ms, default=self.percentiles_ms.get(100, float("nan"))), 2),
            "seconds": round(self.seconds, 2),
            "client": self.client,
        }


async def closed_loop_http(
    url: str, body: BodyFn, *, concurrency: int, duration: float, warmup: float
) -> LoadResult:
    """``concurrency`` clients, each posting as soon as its previous answer came back; only
    requests that start and finish inside the measured window (after ``warmup``) count."""
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    start = time.monotonic()
    window_start, window_end = start + warmup, start + warmup + duration
    result = LoadResult(seconds=duration)
    counter = iter(range(10**9))
    headers = {"Content-Type": "application/json"}

    async def client(session: aiohttp.ClientSession) -> None:
        while (sent := time.monotonic()) < window_end:
            try:
                async with session.post(url, data=body(next(counter)), headers=headers) as resp:
                    await resp.read()
                    status: Any = resp.status
            except aiohttp.ClientError as exc:
                status = type(exc).__name__
            done = time.monotonic()
            if sent >= window_start and done <= window_end:
                result.statuses[status] += 1
                result.latencies_ms.append((done - sent) * 1000)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return result


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str, duration: float) -> LoadResult:
    """Requests, non-2xx count, socket errors and latency percentiles from ``wrk --latency``."""
    result = LoadResult(seconds=duration, client="wrk")
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non2xx = int(bad.group(1)) if bad else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result.statuses["2xx"] = total - non2xx
    if non2xx:
        result.statuses["non-2xx"] = non2xx
    if errors and any(int(g) for g in errors.groups()):
        result.statuses["socket-errors"] = sum(int(g) for g in errors.groups())
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, flags=re.M):
        result.percentiles_ms[float(pct)] = _wrk_ms(value)
    max_match = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
    if max_match:
        result.percentiles_ms[100] = _wrk_ms(max_match.group(1))
    return result


async def wrk_http(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    workdir: Path,
    ok_status: int = 202,
) -> LoadResult:
    """The same closed loop with wrk (C, one thread): far less CPU than a Python client, which
    matters on a small machine where the load generator competes with what it measures."""
    script = workdir / "wrk-post.lua"
    script.write_text(WRK_SCRIPT % body.decode())
    base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script)]
    if warmup:
        await _run(*base, f"-d{max(1, round(warmup))}s", url)
    output = await _run(*base, f"-d{round(duration)}s", "--latency", url)
    result = parse_wrk(output, round(duration))
    # wrk only tells 2xx from the rest; count them as the status the caller expects.
    result.statuses = Counter({(ok_status if k == "2xx" else k): v for k, v in result.statuses.items()})
    return result


async def _run(*cmd: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.decode(errors='replace')[-500:]}")
    return out.decode(errors="replace")


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


async def paced(
    total: int,
    rate: float,
    start_one: Callable[[int, float], Coroutine[Any, Any, None]],
    on_late: Callable[[int], None],
) -> None:
    """Start ``start_one(i, due)`` at ``due = start + i / rate`` whatever happened before
    (open loop), then wait for all of them; ``on_late(i)`` when a start slipped past its due."""
    tasks: list[asyncio.Task[None]] = []
    start = time.monotonic()
    for i in range(total):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.001:
            on_late(i)
        tasks.append(asyncio.create_task(start_one(i, due)))
    await asyncio.gather(*tasks)


async def fixed_rate_http(
    url: str, body: BodyFn, *, rate: float, duration: float, warmup: float
) -> LoadResult:
    """Open loop: request ``i`` is due at ``start + i / rate`` whatever happened before, and
    its latency counts from when it was due (no coordinated omission)."""
    connector = aiohttp.TCPConnector(limit=0)
    result = LoadResult(seconds=duration)
    headers = {"Content-Type": "application/json"}
    total = int((warmup + duration) * rate)
    warm = int(warmup * rate)

    async def one(session: aiohttp.ClientSession, i: int, due: float) -> None:
        try:
            async with session.post(url, data=body(i), headers=headers) as resp:
                await resp.read()
                status: Any = resp.status
        except aiohttp.ClientError as exc:
            status = type(exc).__name__
        if i >= warm:
            result.statuses[status] += 1
            result.latencies_ms.append((time.monotonic() - due) * 1000)

    timeout = aiohttp.ClientTimeout(total=30)

    def late(i: int) -> None:
        if i >= warm:
            result.late_starts += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await paced(total, rate, lambda i, due: one(session, i, due), late)
    return result


def envelope(body: bytes, event_id: str | None = None) -> aio_pika.Message:
    """A message exactly as the receiver publishes one."""
    event_id = event_id or uuid.uuid4().hex
    now = time.time()
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        timestamp=now,
        headers=alarm_headers(event_id, now),
    )


async def raw_publish(
    amqp_url: str, body: BodyFn, *, concurrency: int, duration: float, warmup: float
) -> LoadResult:
    """Baseline (a): ``concurrency`` tasks on one confirming channel, each publishing the
    receiver's envelope (persistent, mandatory) to the work queue and awaiting its confirm."""
    connection = await aio_pika.connect(amqp_url)
    result = LoadResult(seconds=duration, client="aio-pika")
    counter = iter(range(10**9))
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare_topology(channel, (0.2,))
        start = time.monotonic()
        window_start, window_end = start + warmup, start + warmup + duration

        async def publisher() -> None:
            while (sent := time.monotonic()) < window_end:
                message = envelope(body(next(counter)))
                try:
                    await channel.default_exchange.publish(
                        message, routing_key=topology.WORK_QUEUE, mandatory=True
                    )
                    status: Any = "confirmed"
                except aio_pika.exceptions.DeliveryError:
                    status = "nacked"
                done = time.monotonic()
                if sent >= window_start and done <= window_end:
                    result.statuses[status] += 1
                    result.latencies_ms.append((done - sent) * 1000)

        await asyncio.gather(*(publisher() for _ in range(concurrency)))
    return result


async def fixed_rate_raw_publish(
    amqp_url: str, body: BodyFn, *, rate: float, duration: float, warmup: float
) -> LoadResult:
    """Baseline for the latency run: the raw publisher at the same fixed rate, open loop."""
    connection = await aio_pika.connect(amqp_url)
    result = LoadResult(seconds=duration, client="aio-pika")
    total, warm = int((warmup + duration) * rate), int(warmup * rate)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare_topology(channel, (0.2,))

        async def one(i: int, due: float) -> None:
            await channel.default_exchange.publish(
                envelope(body(i)), routing_key=topology.WORK_QUEUE, mandatory=True
            )
            if i >= warm:
                result.statuses["confirmed"] += 1
                result.latencies_ms.append((time.monotonic() - due) * 1000)

        await paced(total, rate, one, lambda i: None)
    return result


async def publish_all(
    amqp_url: str,
    messages: list[aio_pika.Message],
    *,
    concurrency: int = 64,
    queue: str = topology.WORK_QUEUE,
) -> None:
    """Put ``messages`` on ``queue`` in order (confirmed), declaring the topology first."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await topology.declare_topology(channel, (0.2, 0.5))
        for start in range(0, len(messages), concurrency):
            batch = messages[start : start + concurrency]
            await asyncio.gather(*(channel.default_exchange.publish(m, routing_key=queue) for m in batch))


def routed(
    bodies: list[bytes], managed: list[str], *, lanes: bool = True
) -> list[tuple[str, aio_pika.Message]]:
    """(queue, message) for every alarm body, as the receiver publishes it: with ``lanes`` the
    upgrade-worthy first alarm of an instance to the fast lane (``receiver.lanes``), all else
    (and everything without lanes) to the work queue."""
    router = Lanes(Settings(instance_ids=tuple(managed)), None) if lanes else None
    now = time.time()
    out = []
    for body in bodies:
        queue = router.queue_for(orjson.loads(body), now) if router else topology.WORK_QUEUE
        out.append((queue, envelope(body)))
    return out


async def publish_routed(
    amqp_url: str, routed: list[tuple[str, aio_pika.Message]], concurrency: int = 64
) -> None:
    """Onto the queues, in order per queue, confirmed."""
    by_queue: dict[str, list[aio_pika.Message]] = {}
    for queue, message in routed:
        by_queue.setdefault(queue, []).append(message)
    for queue, messages in by_queue.items():
        await publish_all(amqp_url, messages, concurrency=concurrency, queue=queue)
