"""``python -m tests.chaos [--short] [SCENARIO …]`` (``make chaos``): the long chaos run.

Prints one summary line per scenario and exits non-zero when any scenario lost, duplicated or
left something unexplained; the details of a failing scenario follow its line. Scenarios in
``KNOWN_BUGS`` are expected to fail (and fail the run if they pass: the list needs updating).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import Env, Summary, dump
from tests.chaos.scenarios import KNOWN_BUGS, SCENARIOS, Faults
from tests.support import Services


async def main(names: list[str], faults: Faults, workdir: Path, verbose: bool) -> list[Summary]:
    services = Services(
        amqp_url=os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        management_url=os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"),
        postgres_url=os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    summaries = []
    for name in names:
        started = time.monotonic()
        summary = await SCENARIOS[name](Env(services, workdir), faults)
        summary.details["seconds"] = round(time.monotonic() - started, 1)
        note = ""
        if name in KNOWN_BUGS:
            note = (
                " (known bug, expected)"
                if not summary.ok
                else " (XPASS: a known bug no longer shows; update KNOWN_BUGS)"
            )
        print(summary.line() + note, f"({summary.details['seconds']} s)", flush=True)
        if not summary.ok or verbose:
            print(dump(summary), flush=True)
        summaries.append(summary)
    return summaries


def as_expected(name: str, summary: Summary) -> bool:
    """Like pytest's strict xfail: a known bug must still show, everything else must pass."""
    return summary.ok != (name in KNOWN_BUGS)


def cli() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("scenarios", nargs="*", choices=[[], *SCENARIOS], default=[])
    parser.add_argument("--short", action="store_true", help="the short sizes that make test uses")
    parser.add_argument("--keep", action="store_true", help="keep the process logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="details after every summary line")
    args = parser.parse_args()
    names = args.scenarios or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-chaos-"))
    try:
        summaries = asyncio.run(
            main(names, Faults.short() if args.short else Faults.long(), workdir, args.verbose)
        )
    finally:
        if args.keep:
            print(f"[chaos] logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(as_expected(n, s) for n, s in zip(names, summaries, strict=True)) else 1


if __name__ == "__main__":
    raise SystemExit(cli())
