"""The benchmarks of ``make bench``. Each measures ours and a baseline in the same run and
reports the ratio; nothing here asserts (targets are compared in the printed table)."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

from bench.harness import (
    API_KEY,
    PLAN,
    Processes,
    cpu_seconds,
    free_port,
    fresh_postgres,
    fresh_vhost,
    machine_cpu,
    percentile,
    plan_changes,
    rss_mb,
    stand_in_args,
    wait_http_ready,
    wait_until,
)
from bench.load import (
    LoadResult,
    closed_loop_http,
    envelope,
    fixed_rate_http,
    fixed_rate_raw_publish,
    have_wrk,
    publish_all,
    publish_routed,
    raw_publish,
    routed,
    wrk_http,
)
from shared import topology
from shared.db import open_database
from tests.support import Proc


@dataclass
class Config:
    """Sizes and durations; ``quick`` shrinks them for a smoke run."""

    workdir: Path
    concurrency: int = 64
    duration: float = 10.0
    warmup: float = 2.0
    fixed_rate: float = 500.0
    worker_messages: int = 3000
    worker_mix: str = "all"  # benchmark 2's alarms: all of the mix, or one part (worker_mix)
    worker_scales: tuple[int, ...] = (1, 2, 4)
    stores: tuple[str, ...] = ("sqlite", "postgresql")
    e2e_rate: float = 20.0
    e2e_count: int = 200
    profile: bool = False
    rounds: int = 3
    use_wrk: bool = True
    compare_root: Path | None = None
    compare_worker: Path | None = None  # benchmark 2 against another checkout's worker, ABBA BAAB
    worker_root: Path | None = None  # benchmark 2's own worker from another checkout (None: this one)
    # 7: the storm (bench/storm.py): its size, the (store, processes) runs, the arrival rate
    storm_alarms: int = 100_000
    storm_instances: int = 10_000
    storm_runs: tuple[tuple[str, int], ...] = (
        ("sqlite", 1),
        ("postgresql", 1),
        ("postgresql", 2),
        ("postgresql", 4),
    )
    storm_arrivals_per_s: float = 2.0
    storm_timeout: float = 900.0
    # 8: the forecast (bench/forecast.py): four curves instead of eight
    forecast_quick: bool = False
    # 8: pruning while alarms arrive (bench/retention.py): old rows, incidents they group into,
    # the arrival rate, and the seconds of the phases before and after pruning
    retention_rows: int = 1_000_000
    retention_incidents: int = 2_000
    retention_rate: float = 50.0
    retention_phase: float = 60.0
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, workdir: Path) -> Config:
        return cls(
            workdir,
            duration=3.0,
            warmup=1.0,
            worker_messages=600,
            worker_scales=(1, 2),
            e2e_count=40,
            storm_alarms=10_000,
            storm_instances=1_000,
            storm_runs=(("sqlite", 1), ("postgresql", 1)),
            forecast_quick=True,
            retention_rows=100_000,
            retention_incidents=200,
            retention_phase=20.0,
        )


def alarm_body(i: int, instance: str | None = None, value: float = 85) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return json.dumps(
        {"alarm_type": "memory", "value": value, "instance_id": instance or f"bench-{i}", "triggered_at": now}
    ).encode()


def receiver_env(amqp_url: str, workdir: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "RABBITMQ_URL": amqp_url,
        "DATABASE_URL": f"sqlite:///{workdir}/receiver-{port}.db",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(port),
        "WEBHOOK_TOKEN": "",
        **extra,
    }


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[Processes]:
    procs = Processes(cfg.workdir)
    try:
        yield procs
    finally:
        await procs.stop_all()


async def measure_http(
    cfg: Config, url: str, pid: int, *, fixed_rate: float | None = None, ok_status: int = 202
) -> tuple[LoadResult, float]:
    """One load run against ``url``; returns the result and the server's CPU use (cores)."""
    before, started = cpu_seconds(pid), time.monotonic()
    if fixed_rate is None and cfg.use_wrk and have_wrk():
        result = await wrk_http(
            url,
            alarm_body(0),
            concurrency=cfg.concurrency,
            duration=cfg.duration,
            warmup=cfg.warmup,
            workdir=cfg.workdir,
            ok_status=ok_status,
        )
    elif fixed_rate is None:
        result = await closed_loop_http(
            url, alarm_body, concurrency=cfg.concurrency, duration=cfg.duration, warmup=cfg.warmup
        )
    else:
        result = await fixed_rate_http(
            url, alarm_body, rate=fixed_rate, duration=cfg.duration, warmup=cfg.warmup
        )
    cores = (cpu_seconds(pid) - before) / (time.monotonic() - started)
    return result, round(cores, 2)


# --- 1. receiver accept rate ------------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate, with every round's rate alongside."""
    ranked = sorted(runs, key=lambda r: r["rate_per_s"])
    return {**ranked[len(ranked) // 2], "rounds": [r["rate_per_s"] for r in runs]}


def code_root_env(root: Path | None) -> dict[str, str]:
    """Run ``python -m receiver`` from another checkout (for before/after comparisons)."""
    return {} if root is None else {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(root)}


async def accept_bare(cfg: Config, fixed_rate: float | None = None) -> dict[str, Any]:
    async with running(cfg) as procs:
        port = free_port()
        bare = procs.spawn("bench.bare_app", {}, ["--port", str(port), "--uvloop"])
        await wait_http_ready(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/cloudamqp/alarm"
        result, cores = await measure_http(cfg, url, bare.popen.pid, fixed_rate=fixed_rate)
    return {**result.summary(), "server_cpu_cores": cores, "cpu_us_per_request": _per_request(cores, result)}


async def accept_least(cfg: Config) -> dict[str, Any]:
    """Baseline (c): read, parse, publish with the receiver's ``Publisher``, 202 — nothing else."""
    async with fresh_vhost() as amqp_url, running(cfg) as procs:
        port = free_port()
        least, _ = await procs.start(
            "bench.least_receiver", {}, "least_receiver.ready", [amqp_url, "--port", str(port)]
        )
        url = f"http://127.0.0.1:{port}/cloudamqp/alarm"
        result, cores = await measure_http(cfg, url, least.popen.pid)
    return {**result.summary(), "server_cpu_cores": cores, "cpu_us_per_request": _per_request(cores, result)}


def _per_request(cores: float, result: LoadResult) -> float | None:
    """Server CPU microseconds per answered request (the measure that a busy machine moves least)."""
    rate = result.rate()
    return round(cores * 1e6 / rate) if rate else None


async def accept_raw(cfg: Config) -> dict[str, Any]:
    async with fresh_vhost() as amqp_url:
        before = time.process_time()
        result = await raw_publish(
            amqp_url, alarm_body, concurrency=cfg.concurrency, duration=cfg.duration, warmup=cfg.warmup
        )
        cores = (time.process_time() - before) / (cfg.duration + cfg.warmup)
    rate = result.rate("confirmed")
    return {
        **result.summary("confirmed"),
        "client_cpu_cores": round(cores, 2),
        "cpu_us_per_request": round(cores * 1e6 / rate) if rate else None,
    }


async def accept_receiver(
    cfg: Config, root: Path | None, *, fixed_rate: float | None = None, profile: str | None = None
) -> dict[str, Any]:
    async with fresh_vhost() as amqp_url, running(cfg) as procs:
        port = free_port()
        env = receiver_env(amqp_url, cfg.workdir, port, **code_root_env(root))
        receiver, _ = await procs.start("receiver", env, "receiver.ready")
        url = f"http://127.0.0.1:{port}/cloudamqp/alarm"
        profiler = start_profiler(cfg, receiver.popen.pid, profile) if profile else None
        result, cores = await measure_http(cfg, url, receiver.popen.pid, fixed_rate=fixed_rate)
        out = {
            **result.summary(),
            "server_cpu_cores": cores,
            "cpu_us_per_request": _per_request(cores, result),
        }
        if fixed_rate is not None:
            out |= {"target_rate": fixed_rate, "late_starts": result.late_starts}
            out["in_server"] = await accept_histogram(f"http://127.0.0.1:{port}/metrics")
        if profiler is not None:
            out["profile"] = finish_profiler(profiler)
    return out


async def bench_accept(cfg: Config) -> dict[str, Any]:
    """Receiver vs raw publish-confirm, bare aiohttp and the least receiver, interleaved over
    ``cfg.rounds`` rounds (the machine is shared: interleaving spreads its noise evenly);
    medians reported."""
    runs: dict[str, list[dict[str, Any]]] = {
        "bare_aiohttp": [],
        "raw_publish_confirm": [],
        "least_receiver": [],
        "receiver": [],
    }
    if cfg.compare_root:
        runs["receiver_compare"] = []
    for n in range(cfg.rounds):
        runs["bare_aiohttp"].append(await accept_bare(cfg))
        runs["raw_publish_confirm"].append(await accept_raw(cfg))
        runs["least_receiver"].append(await accept_least(cfg))
        profile = "receiver-c64" if n == 0 and cfg.profile else None
        runs["receiver"].append(await accept_receiver(cfg, None, profile=profile))
        if cfg.compare_root:
            profile = "compare-c64" if n == 0 and cfg.profile else None
            runs["receiver_compare"].append(await accept_receiver(cfg, cfg.compare_root, profile=profile))
    out: dict[str, Any] = {name: _median_run(r) for name, r in runs.items()}
    out["receiver_fixed_rate"] = await accept_receiver(cfg, None, fixed_rate=cfg.fixed_rate)
    async with fresh_vhost() as amqp_url:
        raw_fixed = await fixed_rate_raw_publish(
            amqp_url, alarm_body, rate=cfg.fixed_rate, duration=cfg.duration, warmup=cfg.warmup
        )
    out["raw_publish_fixed_rate"] = raw_fixed.summary("confirmed")
    out["bare_fixed_rate"] = await accept_bare(cfg, fixed_rate=cfg.fixed_rate)
    if cfg.compare_root:
        out["receiver_compare_fixed_rate"] = await accept_receiver(
            cfg, cfg.compare_root, fixed_rate=cfg.fixed_rate
        )
        out["compare_root"] = str(cfg.compare_root)
    raw = out["raw_publish_confirm"]["rate_per_s"]
    bare_rate = out["bare_aiohttp"]["rate_per_s"]
    ours = out["receiver"]["rate_per_s"]
    out["ratio_vs_raw_publish"] = round(ours / raw, 3) if raw else None
    out["ratio_vs_bare_aiohttp"] = round(ours / bare_rate, 3) if bare_rate else None
    least = out["least_receiver"]["rate_per_s"]
    out["least_ratio_vs_raw_publish"] = round(least / raw, 3) if least and raw else None
    out["ratio_vs_least_receiver"] = round(ours / least, 3) if least else None
    if cfg.compare_root and raw:
        out["compare_ratio_vs_raw_publish"] = round(out["receiver_compare"]["rate_per_s"] / raw, 3)
    return out


async def accept_histogram(url: str) -> dict[str, Any]:
    """The receiver's own accept-latency histogram (request in → 202 out), from /metrics."""
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
    except aiohttp.ClientError as exc:
        return {"error": str(exc)}
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("autopilot_receiver_accept_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or not buckets[-1][1]:
        return {}
    total = buckets[-1][1]
    out = {}
    for q in (50, 99):
        bound = next(le for le, count in buckets if count >= total * q / 100)
        out[f"p{q}_ms_at_most"] = bound * 1000
    return out


def start_profiler(
    cfg: Config, pid: int, name: str, *, until_exit: bool = False
) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy on a process for the measured window (``--profile``): the receiver's c=64 run,
    or (``until_exit``) a one-process worker run, from its ``worker.ready`` until it stops."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not cfg.profile or not Path(spy).exists():
        return None
    path = cfg.workdir / f"{name}.collapsed"
    cmd = [spy, "record", "--pid", str(pid), "--rate", "500", "--format", "raw"]
    if not until_exit:
        cmd += ["--duration", str(int(cfg.duration + cfg.warmup))]
    proc = subprocess.Popen(
        [*cmd, "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return proc, path


def finish_profiler(
    profiler: tuple[subprocess.Popen[bytes], Path] | None, top: int = 15
) -> dict[str, Any] | None:
    """Wait for py-spy and summarise: where the samples are, by frame, inclusive."""
    if profiler is None:
        return None
    proc, path = profiler
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if not path.exists():
        return {"error": "py-spy wrote nothing (ptrace not permitted?)"}
    return {"file": str(path), "top_inclusive": summarise_collapsed(path, top)}


def summarise_collapsed(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """Share of samples in which each function appears (once per stack), largest first."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        for frame in set(stack.split(";")):
            name = frame.split(" (", 1)[0] + " (" + frame.split(" (", 1)[-1].rsplit(":", 1)[0].split("/")[-1]
            inclusive[name] = inclusive.get(name, 0) + count
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return [(name, round(100 * n / total, 1)) for name, n in ranked] if total else []


# --- 5. the blog's synchronous Flask handler -------------------------------------------------


async def bench_flask(cfg: Config, receiver_rate: float | None) -> dict[str, Any]:
    async with running(cfg) as procs:
        api_port, port = free_port(), free_port()
        procs.spawn("tests.cloudamqp_stand_in", {}, stand_in_args(api_port, 0.2))
        await wait_http_ready(f"http://127.0.0.1:{api_port}/_stand_in/requests")
        flask = procs.spawn(
            "bench.flask_app", {}, ["--port", str(port), "--api", f"http://127.0.0.1:{api_port}"]
        )
        await wait_http_ready(f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}/cloudamqp/alarm"
        result, cores = await measure_http(cfg, url, flask.popen.pid, ok_status=200)
    out: dict[str, Any] = {"flask_sync": {**result.summary(200), "server_cpu_cores": cores}}
    flask_rate = out["flask_sync"]["rate_per_s"]
    if receiver_rate and flask_rate:
        out["receiver_vs_flask"] = round(receiver_rate / flask_rate, 2)
    return out


# --- 2. worker throughput ---------------------------------------------------------------------

DECISIONS = frozenset({"upgrade.skipped", "upgrade.succeeded", "upgrade.failed", "alarm.already_processed"})


MIXES = ("all", "skips", "upgrades")


def worker_mix(n: int, seed: int = 8, mix: str = "all") -> tuple[list[bytes], list[str]]:
    """20 % upgrades (distinct instances), then 80 % skips in a shuffled mix: 30 % identical
    re-sends (duplicate), 25 % reminders of an upgraded instance (cooling down), 25 % below
    threshold. Upgrades come first, as the first alarm of a problem does. ``mix``: ``all`` of
    that, only its ``upgrades`` (the first fifth), or ``skips`` alone (``n`` alarms below the
    threshold, over the same instances) — where a worker's time goes, part by part."""
    rng = random.Random(seed)
    upgrades = n // 5
    instances = [f"inst-{i:05d}" for i in range(upgrades)]
    firsts = [alarm_body(i, inst) for i, inst in enumerate(instances)]
    if mix == "upgrades":
        return firsts, instances
    if mix == "skips":
        below = [alarm_body(k, instances[rng.randrange(upgrades)], value=40 + rng.random()) for k in range(n)]
        return below, instances
    rest: list[bytes] = []
    for k in range(n - upgrades):
        kind = k % 16
        if kind < 6:
            rest.append(firsts[rng.randrange(upgrades)])
        elif kind < 11:
            rest.append(alarm_body(k, instances[rng.randrange(upgrades)], value=90 + rng.random()))
        else:  # a managed instance, below the threshold
            rest.append(alarm_body(k, instances[rng.randrange(upgrades)], value=40 + rng.random()))
    rng.shuffle(rest)
    return firsts + rest, instances


@asynccontextmanager
async def store_url(kind: str, workdir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        path = workdir / f"worker-{uuid.uuid4().hex[:8]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            _remove_sqlite(path)
        return
    async with fresh_postgres() as url:
        yield url


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def log_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


async def decided_count(url: str) -> int:
    db = await open_database(url)
    try:
        async with db.transaction(write=False) as tx:
            row = await tx.fetchrow(
                "SELECT COUNT(*) AS n FROM actions "
                "WHERE status IN ('succeeded', 'skipped', 'failed', 'dry_run')"
            )
        return int(row["n"]) if row else 0
    except Exception:  # the schema is not there yet
        return 0
    finally:
        await db.close()


async def run_workers(
    cfg: Config,
    api_url: str,
    kind: str,
    k: int,
    extra: dict[str, str] | None = None,
    *,
    lanes: bool = True,
    root: Path | None = None,
    profiling: bool = True,
) -> dict[str, Any]:
    """Alarms decided per second by ``k`` worker processes, counted from the moment the last
    of them was ready (so start-up is not in the number) to the last decision. The alarms are
    queued as the receiver queues them (``lanes``: the upgrade-worthy first alarms in the fast
    lane), or all in the work queue. ``root``: another checkout's worker."""
    bodies, instances = worker_mix(cfg.worker_messages, mix=cfg.worker_mix)
    async with fresh_vhost() as amqp_url, store_url(kind, cfg.workdir) as db_url, running(cfg) as procs:
        await publish_routed(amqp_url, routed(bodies, instances, lanes=lanes))
        env = {
            "RABBITMQ_URL": amqp_url,
            "DATABASE_URL": db_url,
            "CLOUDAMQP_API_URL": api_url,
            "CLOUDAMQP_API_KEY": API_KEY,
            "UPGRADE_PLAN": PLAN,
            "CLOUDAMQP_INSTANCE_ID": ",".join(instances),
            "RETRY_DELAYS": "0.2,0.5",
            **(extra or {}),
        }
        ports = [free_port() for _ in range(k)]
        workers = [
            procs.spawn("worker", env | {"WORKER_METRICS_PORT": str(port)}, cwd=root) for port in ports
        ]
        machine_before = machine_cpu()
        ready, cpu_before = [], 0.0
        for worker in workers:
            ready.append((await worker.wait_event("worker.ready", timeout=60))[0])
            cpu_before += cpu_seconds(worker.popen.pid)  # start-up (imports) excluded
        all_ready = max(log_time(r) for r in ready)
        name = f"worker-{kind}" + ("-compared" if root else "")
        profile = name if k == 1 and not extra and lanes and profiling else None
        profiler = start_profiler(cfg, workers[0].popen.pid, profile, until_exit=True) if profile else None

        # Done when the workers' logs show a decision for every alarm: read from the logs, as
        # they grow, not from the store — a reader of the SQLite file every poll (its own
        # connections, its snapshot holding the checkpoints back) would weigh on the run.
        def done() -> bool:
            return len({e["event_id"] for e in decisions(workers) if "event_id" in e}) >= len(bodies)

        await wait_until(done, timeout=180, interval=0.1, what=f"{len(bodies)} decisions")
        cpu = sum(cpu_seconds(w.popen.pid) for w in workers) - cpu_before
        busy, elapsed = (after - before for after, before in zip(machine_cpu(), machine_before, strict=True))
        batches = [await batch_sizes(port) for port in ports]
        for worker in workers:
            await worker.stop()
        profiled = finish_profiler(profiler)
        fallbacks = sum(len(w.events("batch.fallback")) for w in workers)
        first_decision = decided(workers)
    return (
        rate_after(first_decision.values(), all_ready)
        | {
            "lanes": lanes,
            "messages": len(bodies),
            "upgrades": len(instances),
            # Approximate (from each worker's "ready" to the poll that saw the last decision):
            # where the time went, and whether the machine had anything left to give.
            "cpu_us_per_alarm": round(cpu / len(bodies) * 1e6),
            "machine_cpu_busy": round(busy / elapsed, 2) if elapsed else None,
            "batch_fallbacks": fallbacks,
            # First steps per transaction (group commit), over the whole run.
            "mean_batch": round(sum(s for s, _ in batches) / max(1, sum(n for _, n in batches)), 1),
        }
        | ({"profile": profiled} if profiled else {})
    )


def decisions(workers: list[Proc]) -> list[dict[str, Any]]:
    """The workers' log lines that say what became of an alarm."""
    return [entry for worker in workers for name in DECISIONS for entry in worker.events(name)]


def decided(workers: list[Proc]) -> dict[str, float]:
    """When each alarm was first decided, by event id."""
    first: dict[str, float] = {}
    for entry in decisions(workers):
        if "event_id" in entry:
            t = log_time(entry)
            first[entry["event_id"]] = min(t, first.get(entry["event_id"], t))
    return first


async def batch_sizes(port: int) -> tuple[float, int]:
    """A worker's group commit so far, from its ``/metrics``: the alarms its batches held, and
    how many batches (``autopilot_worker_batch_size``'s sum and count)."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("autopilot_worker_batch_size_sum", "autopilot_worker_batch_size_count"):
            values[name] = float(value)
    return values.get("autopilot_worker_batch_size_sum", 0.0), int(
        values.get("autopilot_worker_batch_size_count", 0)
    )


def rate_after(times: Any, start: float) -> dict[str, Any]:
    counted = sorted(t for t in times if t >= start)
    if len(counted) < 2:
        return {"rate_per_s": None, "counted": len(counted)}
    seconds = counted[-1] - start
    return {
        "rate_per_s": round(len(counted) / seconds, 1),
        "counted": len(counted),
        "seconds": round(seconds, 2),
    }


async def run_raw_consumers(cfg: Config, k: int) -> dict[str, Any]:
    """The baseline: ``k`` consume-and-ack processes, started together on the same backlog."""
    bodies, _ = worker_mix(cfg.worker_messages, mix=cfg.worker_mix)
    tag = uuid.uuid4().hex[:8]
    go = cfg.workdir / f"go-{tag}"
    outs = [cfg.workdir / f"raw-{tag}-{n}.json" for n in range(k)]
    async with fresh_vhost() as amqp_url, running(cfg) as procs:
        await publish_all(amqp_url, [envelope(b) for b in bodies])
        consumers = [
            procs.spawn("bench.raw_consumer", {}, [amqp_url, "--out", str(out), "--go", str(go)])
            for out in outs
        ]
        for consumer in consumers:
            await consumer.wait_event("consumer.ready", timeout=60)
        started = time.time()
        go.touch()
        for consumer in consumers:
            await consumer.wait(timeout=120)
    results = [json.loads(out.read_text()) for out in outs]
    for path in (*outs, go):
        path.unlink()
    acks = [t for result in results for t in result["acks"]]
    cpu = sum(result["cpu_s"] for result in results)
    return rate_after(acks, started) | {
        "messages": len(bodies),
        "cpu_us_per_message": round(cpu / len(bodies) * 1e6),
    }


async def bench_workers(cfg: Config) -> dict[str, Any]:
    """Each worker row between raw runs of as many processes, two before, one after and one
    between each of its runs, its baseline their median: a raw run drains the backlog in half
    a second, and its rate moves by a third from one run to the next (5,750–8,060/s in eight
    runs in a row on a quiet machine). A row with the worker as configured is the median of
    ``rounds`` runs. One process is also run (once each) with everything in one queue (no fast
    lane) and with ``WORKER_BATCH=1``."""
    out: dict[str, Any] = {"raw": {}, "worker": {}, "mix": cfg.worker_mix}
    async with running(cfg) as procs:
        api_port = free_port()
        procs.spawn("tests.cloudamqp_stand_in", {}, stand_in_args(api_port, 0.05))
        api_url = f"http://127.0.0.1:{api_port}"
        await wait_http_ready(f"{api_url}/_stand_in/requests")

        async def bracketed(k: int, extra: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
            raws = [await run_raw_consumers(cfg, k) for _ in range(2)]
            # The bar's runs (the worker as configured): ``cfg.rounds`` worker runs with raw
            # runs between them, the median of each side, as benchmarks 1 and 3 report their
            # median round — one run drains 3,000 alarms in 2-3 s, and one run's rate moves
            # by 15 % from the next on this machine. The other rows: one run.
            main = extra is None and kw.get("lanes", True) and cfg.compare_worker is None
            results = []
            for n in range(cfg.rounds if main else 1):
                if n:
                    raws.append(await run_raw_consumers(cfg, k))
                run = await run_workers(
                    cfg, api_url, kind, k, extra, root=cfg.worker_root, profiling=not main, **kw
                )
                results.append(run)
            result = _median_run(results) | {"round_cpu_us": [r.get("cpu_us_per_alarm") for r in results]}
            if main and cfg.profile:  # py-spy slows what it samples: a run of its own, not counted
                profiled = await run_workers(cfg, api_url, kind, k, extra, root=cfg.worker_root, **kw)
                result["profile"] = profiled.get("profile")
            if cfg.compare_worker is not None and extra is None and kw.get("lanes", True):
                # ABBA BAAB: the run above, then both in turn — four runs each, so that a drift
                # through the sequence weighs on both alike (runs of one revision moved by
                # 10-25 % from one to the next).
                ours, theirs = [result], list[dict[str, Any]]()
                for who in "BBABAAB":
                    mine = who == "A"
                    root = cfg.worker_root if mine else cfg.compare_worker
                    profiling = not mine and not theirs  # the other's first run (with --profile)
                    run = await run_workers(cfg, api_url, kind, k, root=root, profiling=profiling, **kw)
                    (ours if mine else theirs).append(run)
                result["compare"] = _compared(ours, theirs, cfg.compare_worker)
            raw = _median_raw([*raws, await run_raw_consumers(cfg, k)])
            out["raw"].setdefault(k, raw)
            return _against(result, raw, k)

        for kind in cfg.stores:
            out["worker"][kind] = {}
            for k in cfg.worker_scales:
                out["worker"][kind][k] = await bracketed(k)
            out.setdefault("one_queue", {})[kind] = await bracketed(1, lanes=False)
            # One transaction per alarm (as before group commit), for the difference.
            out.setdefault("unbatched", {})[kind] = await bracketed(1, {"WORKER_BATCH": "1"})
    return out


def _compared(ours: list[dict[str, Any]], theirs: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    """Benchmark 2's own worker runs (this checkout's, or ``--worker-root``'s) against another
    checkout's, interleaved: the mean of each, and the ratios (rate: ours ÷ theirs; CPU per
    alarm: theirs ÷ ours, above 1 when ours costs less)."""

    def mean(runs: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key)]
        return statistics.mean(values) if len(values) == len(runs) else None

    rate, their_rate = mean(ours, "rate_per_s"), mean(theirs, "rate_per_s")
    cpu, their_cpu = mean(ours, "cpu_us_per_alarm"), mean(theirs, "cpu_us_per_alarm")
    return {
        "root": str(root),
        "ours_rates": [r.get("rate_per_s") for r in ours],
        "theirs_rates": [r.get("rate_per_s") for r in theirs],
        "ours_cpu_us": [r.get("cpu_us_per_alarm") for r in ours],
        "theirs_cpu_us": [r.get("cpu_us_per_alarm") for r in theirs],
        "ratio": round(rate / their_rate, 3) if rate and their_rate else None,
        "cpu_ratio": round(their_cpu / cpu, 3) if cpu and their_cpu else None,
    }


def _median_raw(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The baseline of a worker run: the median rate and CPU per message of the raw runs
    around it."""
    rates = [r["rate_per_s"] for r in runs if r.get("rate_per_s")]
    cpus = [r["cpu_us_per_message"] for r in runs if r.get("cpu_us_per_message")]
    return {
        "rate_per_s": round(statistics.median(rates), 1) if rates else None,
        "cpu_us_per_message": round(statistics.median(cpus)) if cpus else None,
        "runs": [r.get("rate_per_s") for r in runs],
    }


def _against(result: dict[str, Any], raw: dict[str, Any], k: int) -> dict[str, Any]:
    """A worker run with its ratios to the raw runs around it: rate, and CPU per message."""
    rate, raw_rate = result["rate_per_s"], raw["rate_per_s"]
    cpu, raw_cpu = result.get("cpu_us_per_alarm"), raw.get("cpu_us_per_message")
    compared = result.get("compare", {}).get("ours_rates") or []
    mean_rate = statistics.mean(compared) if compared and all(compared) else None
    return result | {
        # Interleaved with another checkout's runs: all of this one's runs, their mean rate.
        **({"ratio_vs_raw_mean": round(mean_rate / raw_rate, 3)} if mean_rate and raw_rate else {}),
        "per_process": round(rate / k, 1) if rate else None,
        "raw_rate_per_s": raw_rate,
        "raw_cpu_us_per_message": raw_cpu,
        "raw_runs": raw.get("runs"),
        "ratio_vs_raw": round(rate / raw_rate, 3) if rate and raw_rate else None,
        "cpu_ratio_vs_raw": round(raw_cpu / cpu, 3) if cpu and raw_cpu else None,
    }


# --- 3. end-to-end latency -------------------------------------------------------------------


async def bench_e2e(cfg: Config) -> dict[str, Any]:
    """Alarm POST → upgrade request at the stand-in, at a light steady rate, each alarm for a
    new instance so that each one is an upgrade; the worker as configured and with
    ``WORKER_BATCH=1`` (one transaction per alarm, as before group commit), interleaved over
    ``cfg.rounds`` rounds (the median round of each reported)."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "unbatched": []}
    for _ in range(cfg.rounds):
        runs["ours"].append(await e2e_ours(cfg, {}))
        runs["unbatched"].append(await e2e_ours(cfg, {"WORKER_BATCH": "1"}))
    ours, unbatched = (sorted(r, key=lambda x: x["p50_ms"])[len(r) // 2] for r in runs.values())
    ours = {**ours, "rounds_p50_ms": [r["p50_ms"] for r in runs["ours"]]}
    unbatched = {**unbatched, "rounds_p50_ms": [r["p50_ms"] for r in runs["unbatched"]]}
    raw = await raw_roundtrip(cfg)
    return {
        "ours": ours,
        "unbatched": unbatched,
        "raw_publish_to_consume": raw,
        "ratio_p50": round(ours["p50_ms"] / raw["p50_ms"], 1) if raw["p50_ms"] else None,
        "ratio_p99": round(ours["p99_ms"] / raw["p99_ms"], 1) if raw["p99_ms"] else None,
        "rate_per_s": cfg.e2e_rate,
    }


async def e2e_ours(cfg: Config, extra: dict[str, str]) -> dict[str, Any]:
    """One end-to-end run: a receiver and a worker (with ``extra`` in its environment)."""
    n = cfg.e2e_count
    instances = [f"e2e-{i:04d}" for i in range(n)]
    sent: dict[str, float] = {}
    async with fresh_vhost() as amqp_url, running(cfg) as procs:
        api_port, port = free_port(), free_port()
        procs.spawn("tests.cloudamqp_stand_in", {}, stand_in_args(api_port, 0))
        api_url = f"http://127.0.0.1:{api_port}"
        await wait_http_ready(f"{api_url}/_stand_in/requests")
        env = receiver_env(
            amqp_url,
            cfg.workdir,
            port,
            CLOUDAMQP_API_URL=api_url,
            CLOUDAMQP_API_KEY=API_KEY,
            UPGRADE_PLAN=PLAN,
            CLOUDAMQP_INSTANCE_ID=",".join(instances),
        )
        env["DATABASE_URL"] = f"sqlite:///{cfg.workdir}/e2e-{port}.db"
        await procs.start("receiver", env, "receiver.ready")
        await procs.start("worker", {**env, **extra}, "worker.ready")
        async with aiohttp.ClientSession() as http:

            async def post(i: int) -> None:
                sent[instances[i]] = time.time()
                async with http.post(
                    f"http://127.0.0.1:{port}/cloudamqp/alarm",
                    data=alarm_body(i, instances[i]),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()

            start = time.monotonic()
            tasks = []
            for i in range(n):
                delay = start + i / cfg.e2e_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(i)))
            await asyncio.gather(*tasks)

            async def arrivals() -> list[Any]:
                async with http.get(f"{api_url}/_stand_in/requests") as resp:
                    rows = plan_changes(await resp.json())
                return rows if len(rows) >= n else []

            rows = await wait_until(arrivals, timeout=60, interval=0.2, what="every upgrade at the stand-in")
    latencies = [(t - sent[path.split("/")[3]]) * 1000 for t, _, path, _ in rows]
    return {
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "n": n,
    }


async def raw_roundtrip(cfg: Config) -> dict[str, Any]:
    """Baseline: publish (confirmed) → delivered to a consumer, same rate, same queue type."""
    latencies: list[float] = []
    got = asyncio.Event()
    async with fresh_vhost() as amqp_url:
        consumer_conn = await aio_pika.connect(amqp_url)
        publisher_conn = await aio_pika.connect(amqp_url)
        async with consumer_conn, publisher_conn:
            pub = await publisher_conn.channel(publisher_confirms=True)
            await topology.declare_topology(pub, (0.2,))
            sub = await consumer_conn.channel()
            await sub.set_qos(prefetch_count=16)
            queue = await sub.get_queue(topology.WORK_QUEUE, ensure=False)

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                latencies.append((time.time() - float(message.headers["t"])) * 1000)  # type: ignore[arg-type]
                await message.ack()
                if len(latencies) >= cfg.e2e_count:
                    got.set()

            await queue.consume(on_message)
            start = time.monotonic()
            for i in range(cfg.e2e_count):
                delay = start + i / cfg.e2e_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                message = envelope(alarm_body(i))
                message.headers["t"] = repr(time.time())
                await pub.default_exchange.publish(message, routing_key=topology.WORK_QUEUE)
            await asyncio.wait_for(got.wait(), timeout=30)
    return {"p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2)}


# --- 4. footprint ----------------------------------------------------------------------------


async def bench_footprint(cfg: Config, idle: float = 3.0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with fresh_vhost() as amqp_url, running(cfg) as procs:
        port = free_port()
        env = receiver_env(amqp_url, cfg.workdir, port)
        spawned = time.time()
        receiver = procs.spawn("receiver", env)
        ready = (await receiver.wait_event("receiver.ready", timeout=60))[0]
        start_receiver = log_time(ready) - spawned
        spawned = time.time()
        worker = procs.spawn("worker", env)
        ready = (await worker.wait_event("worker.ready", timeout=60))[0]
        start_worker = log_time(ready) - spawned
        bare_port = free_port()
        spawned = time.time()
        bare = procs.spawn("bench.bare_app", {}, ["--port", str(bare_port), "--uvloop"])
        await wait_http_ready(f"http://127.0.0.1:{bare_port}/healthz")
        start_bare = time.time() - spawned
        spawned = time.time()
        raw_out = cfg.workdir / "footprint-raw.json"
        raw = procs.spawn("bench.raw_consumer", {}, [amqp_url, "--out", str(raw_out), "--idle", "3600"])
        # (no --go: it consumes at once, from an empty queue)
        start_raw = (await raw.wait_event("consumer.ready", timeout=60))[0]["t"] - spawned
        await asyncio.sleep(idle)  # idle, by definition: nothing to wait for
        started = {"receiver": (receiver, start_receiver), "worker": (worker, start_worker)}
        started |= {"bare_aiohttp": (bare, start_bare), "raw_consumer": (raw, start_raw)}
        for name, (proc, start) in started.items():
            out[name] = {"rss_mb": round(rss_mb(proc.popen.pid), 1), "start_to_ready_s": round(start, 2)}
    for ours, base in (("receiver", "bare_aiohttp"), ("worker", "raw_consumer")):
        out[ours]["rss_ratio"] = round(out[ours]["rss_mb"] / out[base]["rss_mb"], 2)
        out[ours]["start_ratio"] = round(out[ours]["start_to_ready_s"] / out[base]["start_to_ready_s"], 2)
    return out
