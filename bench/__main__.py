"""``python -m bench [--quick] [--only accept,workers,e2e,footprint,flask,console,storm,forecast,retention]
[--profile] [--stores sqlite,postgresql] [--scales 1,2,4]``.

Runs the benchmarks against the local RabbitMQ (a fresh vhost per run) and PostgreSQL (a fresh
database per run), prints a table of ratios against the baselines measured in the same run,
and writes the raw numbers to ``var/bench/<timestamp>.json``. Stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import console, forecast, report, retention, storm, suite
from bench.harness import ROOT, git_revision, machine_facts

ALL = ("footprint", "accept", "flask", "e2e", "workers", "console", "storm", "forecast", "retention")
# What ``make bench`` runs: all but pruning, which takes half an hour at full size (a million
# rows seeded, then pruned at a pace that leaves the alarms alone): asked for by name.
DEFAULT = tuple(name for name in ALL if name != "retention")


async def run(cfg: suite.Config, only: tuple[str, ...]) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine_facts(), "revision": git_revision(), "argv": sys.argv[1:]}
    started = time.monotonic()
    for name in ALL:
        if name not in only:
            continue
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        if name == "console":
            results[name] = await console.bench_console(cfg)
        elif name == "storm":
            results[name] = await storm.bench_storm(cfg)
        elif name == "forecast":
            results[name] = await forecast.bench_forecast(cfg)
        elif name == "retention":
            results[name] = await retention.bench_retention(cfg)
        elif name == "flask":
            receiver_rate = results.get("accept", {}).get("receiver", {}).get("rate_per_s")
            results[name] = await suite.bench_flask(cfg, receiver_rate)
        else:
            results[name] = await getattr(suite, f"bench_{name}")(cfg)
        results.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["total_seconds"] = round(time.monotonic() - started, 1)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--only", default=",".join(DEFAULT), help=f"comma-separated subset of {','.join(ALL)}"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the receiver, one worker")
    parser.add_argument("--keep", action="store_true", help="keep the process logs")
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds of the accept-rate and end-to-end runs; benchmark 2's worker runs a row",
    )
    parser.add_argument(
        "--compare-receiver",
        type=Path,
        metavar="DIR",
        help="also measure the receiver of another checkout (e.g. `git archive HEAD` unpacked)",
    )
    parser.add_argument(
        "--compare-worker",
        type=Path,
        metavar="DIR",
        help="benchmark 2 also runs the worker of another checkout, interleaved (ABBA BAAB)",
    )
    parser.add_argument(
        "--worker-root",
        type=Path,
        metavar="DIR",
        help="benchmark 2's own worker from another checkout (to compare two revisions in this harness)",
    )
    parser.add_argument("--stores", help="comma-separated stores of the worker runs: sqlite,postgresql")
    parser.add_argument("--scales", help="comma-separated worker process counts, e.g. 1 or 1,2,4")
    parser.add_argument(
        "--mix",
        choices=suite.MIXES,
        default="all",
        help="benchmark 2's alarms: the whole mix, or only its upgrades, or skips alone",
    )
    args = parser.parse_args()
    only = tuple(part.strip() for part in args.only.split(",") if part.strip())
    unknown = set(only) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    try:
        import uvloop

        uvloop.install()  # the load generator should cost as little CPU as it can
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-bench-"))
    cfg = suite.Config.quick(workdir) if args.quick else suite.Config(workdir)
    cfg.profile = args.profile
    cfg.compare_root = args.compare_receiver.resolve() if args.compare_receiver else None
    cfg.compare_worker = args.compare_worker.resolve() if args.compare_worker else None
    cfg.worker_root = args.worker_root.resolve() if args.worker_root else None
    cfg.worker_mix = args.mix
    if args.rounds:
        cfg.rounds = args.rounds
    if args.stores:
        stores = tuple(s.strip() for s in args.stores.split(",") if s.strip())
        if not stores or set(stores) - {"sqlite", "postgresql"}:
            parser.error("--stores takes sqlite, postgresql or both")
        cfg.stores = stores
    if args.scales:
        try:
            cfg.worker_scales = tuple(int(s) for s in args.scales.split(",") if s.strip())
        except ValueError:
            parser.error("--scales takes process counts, e.g. 1,2,4")
    try:
        results = asyncio.run(run(cfg, only))
    finally:
        if args.keep:
            print(f"[bench] logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / time.strftime("%Y%m%dT%H%M%S.json")
    out.write_text(json.dumps(results, indent=2, default=str))
    print(report.markdown(results))
    print(f"\n[bench] raw numbers: {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
