"""Instructions per accepted request, counted by valgrind's callgrind: a measure of the
receiver's own cost that the machine's load does not move (wall-clock CPU time on a shared
2-core VM moves ±10–20 % between runs; this moves < 1 % at concurrency 1).

``python -m bench.instructions [ROOT ...] [--requests N] [--concurrency C] [--module M]``

For each checkout ``ROOT`` (default: this one), starts ``python -m receiver`` from it under
``valgrind --tool=callgrind`` with instrumentation off, sends 300 requests to warm it up,
switches instrumentation on (``callgrind_control -i on``), sends ``N`` requests from a closed
loop of ``C`` clients, switches it off and divides. At ``C = 1`` requests never overlap, so
the count is repeatable to a fraction of a percent; at higher concurrency the event loop
batches work across requests and the count varies ±5 % from run to run.

Loopback only; a fresh vhost per run, removed afterwards. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.harness import ROOT, fresh_vhost, wait_http_ready
from bench.suite import alarm_body, code_root_env, receiver_env
from tests.support import free_port

WARM_UP = 300


async def _load(url: str, n: int, concurrency: int) -> int:
    """``n`` POSTs from ``concurrency`` clients; returns how many were not 202."""
    body = alarm_body(0)
    todo = iter(range(n))
    bad = 0
    async with aiohttp.ClientSession() as session:

        async def client() -> None:
            nonlocal bad
            for _ in todo:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    bad += r.status != 202

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return bad


def _toggle(pid: int, on: bool) -> None:
    subprocess.run(
        ["callgrind_control", "-i", "on" if on else "off", str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _start(
    root: Path, module: str, env: dict[str, str], out: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    """``python -m module`` from ``root`` under callgrind, instrumentation off until toggled."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
            + [sys.executable, "-m", module],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def count(root: Path, module: str, requests: int, concurrency: int) -> dict[str, float]:
    """Instructions per accepted request of ``python -m module`` run from ``root``."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    try:
        async with fresh_vhost() as amqp_url:
            port = free_port()
            env = {
                **os.environ,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "info",
                **receiver_env(amqp_url, workdir, port, **code_root_env(root)),
            }
            out = workdir / "callgrind.out"
            proc = _start(root, module, env, out, workdir / "process.log")
            try:
                base = f"http://127.0.0.1:{port}"
                await wait_http_ready(f"{base}/healthz", timeout=300)
                url = f"{base}/cloudamqp/alarm"
                if await _load(url, WARM_UP, concurrency):
                    raise RuntimeError("warm-up requests were not accepted")
                _toggle(proc.pid, True)
                bad = await _load(url, requests, concurrency)
                _toggle(proc.pid, False)
            finally:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 120)
            totals = re.findall(r"^totals: (\d+)", out.read_text(), flags=re.M)
            if not totals:
                raise RuntimeError(f"callgrind wrote no totals; see {workdir}/process.log")
            return {"instructions_per_request": int(totals[0]) / requests, "not_accepted": bad}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("roots", nargs="*", type=Path, default=[ROOT])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--module", default="receiver")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    for root in args.roots:
        result = asyncio.run(count(root.resolve(), args.module, args.requests, args.concurrency))
        print(
            f"{root}: {result['instructions_per_request'] / 1000:,.1f} k instructions per request "
            f"({args.requests} requests, concurrency {args.concurrency}, "
            f"{result['not_accepted']} not accepted)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
