"""The PNG plots docs/benchmarks.md shows, drawn from a run's raw numbers.

``python -m bench.plots var/bench/<time>.json [more.json …] --out docs/bench``: the worker
scaling curve (alarms decided per second against processes, per store, with the raw
consume-and-ack baseline of the same run) and the storm's drain (alarms decided over time,
per run, with the moment of the last needed upgrade, and the waits of alarms arriving
during the storm). Each file contributes what it has; later files win.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def scaling(workers: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ks: list[int] = []
    for kind, scales in workers["worker"].items():
        xs = sorted(int(k) for k in scales)
        ks = sorted(set(ks) | set(xs))
        rates = [scales[str(k)]["rate_per_s"] or 0 for k in xs]
        (line,) = ax.plot(xs, rates, marker="o", label=f"worker, {kind}")
        raws = [scales[str(k)].get("raw_rate_per_s") or 0 for k in xs]
        ax.plot(xs, raws, "--", marker="x", color=line.get_color(), alpha=0.5, label=f"raw, beside {kind}")
        for x, rate in zip(xs, rates, strict=True):
            ratio = scales[str(x)].get("ratio_vs_raw")
            if ratio:
                ax.annotate(f"{ratio:.2f}×", (x, rate), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xticks(ks)
    ax.set_xlabel("worker processes (2 cores, shared with RabbitMQ, PostgreSQL and the load)")
    ax.set_ylabel("alarms decided (raw: acked) per second, log")
    ax.set_title("Worker throughput, 3000 queued alarms (ratio to raw in the same run)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, out / "worker-scaling.png")


def _label(run: dict[str, Any]) -> str:
    lanes = "fast lane" if run["lanes"] else "one queue"
    arriving = ", alarms arriving" if run.get("arrivals") else ""
    return f"{run['store']}, {run['processes']} proc, {lanes}{arriving}"


def drain(storm: dict[str, Any], out: Path) -> list[Path]:
    paths = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for run in storm["runs"]:
        ts, done = zip(*run["curve"], strict=True)
        (line,) = ax.plot(ts, [d / 1000 for d in done], label=_label(run))
        if run.get("last_upgrade_s") is not None:
            ax.axvline(run["last_upgrade_s"], color=line.get_color(), linestyle=":", alpha=0.7)
    ax.set_xlabel("seconds since the workers were ready")
    ax.set_ylabel("alarms decided (thousands)")
    ax.set_title(
        f"Storm: {storm['alarms']:,} queued alarms, {storm['instances']:,} instances, "
        f"{storm['upgrades']:,} upgrades\n(dotted: the last needed upgrade request)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out / "storm-drain.png"))
    arriving = [run for run in storm["runs"] if run.get("arrivals")]
    if arriving:
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=110)
        for run in arriving:
            waits = sorted(w / 1000 for w in run["arrivals"]["waits_ms"])
            ax.plot(range(1, len(waits) + 1), waits, marker=".", linestyle="none", label=_label(run))
        ax.set_yscale("log")
        ax.set_xlabel("new upgrade-worthy alarms, sorted by their wait")
        ax.set_ylabel("POST → upgrade request (s, log)")
        ax.set_title("Alarms arriving during the storm: how long they wait", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "storm-arrivals.png"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.plots")
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    for path in args.results:
        merged |= json.loads(path.read_text())
    written = []
    if "workers" in merged:
        written.append(scaling(merged["workers"], args.out))
    if "storm" in merged:
        written += drain(merged["storm"], args.out)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
