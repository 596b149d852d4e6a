"""The CloudAMQP client's own cost: client CPU per instance read (``CloudAmqpClient.readable``,
what every upgrade does before it asks), against a bare aiohttp request for the same path with
the same session and headers (the baseline, measured in the same run, in turn). The API is the
one stand-in (``tests.cloudamqp_stand_in``) in a process of its own, so that its CPU is not
counted; logging as the worker logs (JSON lines, here to /dev/null); uvloop as the worker runs.

``python -P bench/api_client.py [--root DIR] [--reads N] [--rounds N]``: ``--root`` measures
another checkout's client (its ``worker`` and ``shared`` first on ``sys.path``), e.g. a
``git worktree`` of an earlier revision (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 100  # reads in flight (an upgrade batch's calls go out together)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def measure(reads: int, rounds: int) -> dict[str, Any]:
    import aiohttp

    from tests.cloudamqp_stand_in import DEFAULT_KEY
    from worker.cloudamqp import CloudAmqpClient

    port = _free_port()
    names = ",".join(f"bench-{n}" for n in range(200))
    stand_in = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.cloudamqp_stand_in", "--port", str(port), "--instances", names],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"{base}/_stand_in/requests") as resp:
                        await resp.read()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            client = CloudAmqpClient(
                session, base_url=base, api_key=DEFAULT_KEY, timeout=5.0, quick_retries=2
            )
            ids = [str(item["id"]) for item in await client.list_instances()]
            headers = {"Authorization": "Basic " + base64.b64encode(f":{DEFAULT_KEY}".encode()).decode()}
            timeout = aiohttp.ClientTimeout(total=5.0)

            async def bare(instance: str) -> None:
                url = f"{base}/api/instances/{instance}"
                async with session.request("GET", url, headers=headers, timeout=timeout) as resp:
                    json.loads(await resp.text())

            async def ours(instance: str) -> None:
                await client.readable(instance)

            async def cpu_per_read(read: Callable[[str], Awaitable[None]]) -> float:
                gate = asyncio.Semaphore(CONCURRENCY)

                async def one(n: int) -> None:
                    async with gate:
                        await read(ids[n % len(ids)])

                started = time.process_time()
                await asyncio.gather(*(one(n) for n in range(reads)))
                return (time.process_time() - started) / reads * 1e6

            await cpu_per_read(ours)  # connections opened, code warm
            await cpu_per_read(bare)
            runs: dict[str, list[float]] = {"ours": [], "bare": []}
            for _ in range(rounds):  # ABBA
                for name, read in (("ours", ours), ("bare", bare), ("bare", bare), ("ours", ours)):
                    runs[name].append(await cpu_per_read(read))
    finally:
        stand_in.terminate()
        await stand_in.wait()
    result: dict[str, Any] = {"reads": reads, "runs": {k: [round(v) for v in vs] for k, vs in runs.items()}}
    for name, values in runs.items():
        result[f"{name}_us_per_read"] = round(statistics.median(values))
    result["ratio"] = round(result["ours_us_per_read"] / result["bare_us_per_read"], 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -P bench/api_client.py")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose client is measured")
    parser.add_argument("--reads", type=int, default=1500, help="reads a run")
    parser.add_argument("--rounds", type=int, default=3, help="ABBA rounds")
    args = parser.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    from shared.logs import configure_logging

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stderr.fileno())  # the client's log lines, rendered and written as in the worker
    configure_logging("json", "info")
    import uvloop

    result = uvloop.run(measure(args.reads, args.rounds))
    result["root"] = str(root)
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / time.strftime("api-client-%Y%m%dT%H%M%S.json")
    out.write_text(json.dumps(result, indent=2))
    print(
        f"{root}: client CPU per instance read {result['ours_us_per_read']} µs, a bare aiohttp request"
        f" {result['bare_us_per_read']} µs: {result['ratio']} ×"
    )
    print(f"[bench] raw numbers: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
