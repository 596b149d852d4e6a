"""One batch's first step (read, fold, write: ``Unit.load``, ``plan_batch``, ``Unit.apply``) in
process, on a new store, batch after batch: its wall and CPU time per batch. No broker, no other
process on the event loop — the store's own cost, as the store grows from empty.

``python -m bench.first_step [--store postgresql|sqlite] [--batches N] [--compare DIR]``: with
``--compare``, the same in another checkout too, in turn (ABBA, ``--rounds`` times), each on a
store of its own, and this checkout's times over the other's (docs/benchmarks.md).

Each measurement runs in a process of its own, importing the store and the fold from the
checkout it measures (this file is run by path, with that checkout first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SELF = Path(__file__).resolve()
ROOT = SELF.parent.parent
WARM = 50  # batches before the clock starts (the connection's statements prepared, the store not empty)
BATCH = 60  # alarms a batch (benchmark 2's batches hold 58-64 on PostgreSQL)
INSTANCES = 600  # as benchmark 2's mix: its batches share keys and claims with the ones before


async def measure(url: str, batches: int, seed: int = 1) -> dict[str, Any]:
    """Wall and CPU microseconds per batch over ``batches`` batches after ``WARM``."""
    from shared.alarm import Alarm, event_key, new_id
    from shared.incidents import plan_incident
    from shared.policy import Policy
    from shared.settings import Settings
    from shared.store import Arrival, Store
    from worker.first_step import Context, plan_batch

    instances = [f"inst-{i:05d}" for i in range(INSTANCES)]
    settings = Settings(instance_ids=tuple(instances))
    context = Context(settings, Policy.default(settings), True, "bench", new_id)
    rng = random.Random(seed)

    def batch() -> list[Any]:
        out = []
        for _ in range(BATCH):
            instance = instances[rng.randrange(INSTANCES)]
            body = {
                "alarm_type": "memory",
                "value": rng.choice([40, 85, 90]),
                "instance_id": instance,
                "message": f"memory alarm on {instance}",
            }
            alarm = Alarm(new_id(), time.time(), body, event_key(body))
            out.append(Arrival(alarm, instance, plan_incident(alarm, instance)))
        return out

    store = await Store.open(url)
    try:
        planned = [batch() for _ in range(WARM + batches)]

        async def step(arrivals: list[Any]) -> None:
            now = time.time()
            scopes = {scope for a in arrivals if (scope := context.scope_of(a)) is not None}
            async with store.unit() as unit:
                snapshot = await unit.load(arrivals, scopes, now)
                _, writes = plan_batch(snapshot, arrivals, now, context)
                await unit.apply(writes, now)

        for arrivals in planned[:WARM]:
            await step(arrivals)
        cpu, wall = time.process_time(), time.perf_counter()
        for arrivals in planned[WARM:]:
            await step(arrivals)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await store.close()
    return {"wall_us_per_batch": round(wall / batches * 1e6), "cpu_us_per_batch": round(cpu / batches * 1e6)}


async def one_run(root: Path, kind: str, batches: int) -> dict[str, Any]:
    """``measure`` in a process of its own, importing ``root``'s code."""
    from bench.suite import store_url  # benchmark 2's stores: a new PostgreSQL database, or an SQLite file

    with tempfile.TemporaryDirectory(prefix="first-step-") as directory:
        async with store_url(kind, Path(directory)) as url:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-P",
                str(SELF),
                "--inner",
                str(root),
                "--url",
                url,
                "--batches",
                str(batches),
                cwd=root,
                stdout=subprocess.PIPE,
            )
            out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"the measurement in {root} failed ({proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def compare(kind: str, batches: int, other: Path | None, rounds: int) -> dict[str, Any]:
    roots = {"this": ROOT} | ({"other": other} if other else {})
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
    order = ["this", "other", "other", "this"] if other else ["this", "this"]
    for _ in range(rounds):
        for name in order:
            runs[name].append(await one_run(roots[name], kind, batches))
    out: dict[str, Any] = {"store": kind, "batches": batches, "alarms_a_batch": BATCH, "runs": runs}
    for name in roots:
        for key in ("wall_us_per_batch", "cpu_us_per_batch"):
            out.setdefault(name, {})[key] = round(statistics.mean(r[key] for r in runs[name]))
    if other:
        out["other_root"] = str(other)
        out["wall_ratio"] = round(out["this"]["wall_us_per_batch"] / out["other"]["wall_us_per_batch"], 3)
        out["cpu_ratio"] = round(out["this"]["cpu_us_per_batch"] / out["other"]["cpu_us_per_batch"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_step")
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--batches", type=int, default=300, help="batches timed (after 50 not timed)")
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another checkout, measured in turn")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds with --compare")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner is not None:  # a measurement, in the checkout ``--inner`` names
        sys.path.insert(0, str(args.inner))
        print(json.dumps(asyncio.run(measure(args.url, args.batches))))
        return 0
    other = args.compare.resolve() if args.compare else None
    result = asyncio.run(compare(args.store, args.batches, other, args.rounds))
    out_dir = ROOT / "var" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / time.strftime("first-step-%Y%m%dT%H%M%S.json")
    out.write_text(json.dumps(result, indent=2))
    this = result["this"]
    line = f"{args.store}: {this['wall_us_per_batch']} µs wall, {this['cpu_us_per_batch']} µs CPU a batch"
    if other:
        theirs = result["other"]
        line += (
            f"; {other}: {theirs['wall_us_per_batch']} µs wall, {theirs['cpu_us_per_batch']} µs CPU"
            f" — wall {result['wall_ratio']} ×, CPU {result['cpu_ratio']} ×"
        )
    print(line)
    print(f"[bench] raw numbers: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
