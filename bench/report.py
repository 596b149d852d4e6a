"""The results of a run as the Markdown table docs/benchmarks.md shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value}{unit}"


def _each(values: list[Any]) -> str:
    return " / ".join(_fmt(float(v) if isinstance(v, int) else v) for v in values)


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("meets" if ok else "**misses**")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _accept_rows(r: dict[str, Any]) -> list[str]:
    rec, raw, bare = r["receiver"], r["raw_publish_confirm"], r["bare_aiohttp"]
    fixed = r["receiver_fixed_rate"]
    rawf = r.get("raw_publish_fixed_rate") or {"p50_ms": None, "p99_ms": None}
    baref = r.get("bare_fixed_rate") or {"p50_ms": None, "p99_ms": None}
    ratio = r["ratio_vs_raw_publish"]
    return [
        _row(
            "1 accept rate, c=64",
            f"receiver {_fmt(rec['rate_per_s'])}/s "
            f"(p99 {_fmt(rec['p99_ms'])} ms, {rec['server_cpu_cores']} cores, "
            f"{_fmt(rec.get('cpu_us_per_request'))} µs CPU/req)",
            f"raw publish+confirm {_fmt(raw['rate_per_s'])}/s "
            f"({_fmt(raw.get('cpu_us_per_request'))} µs CPU/msg)",
            _fmt(ratio, "×"),
            "≥ 0.5×",
            _verdict(ratio >= 0.5 if ratio is not None else None),
        ),
        _row(
            "1 accept rate, c=64",
            "receiver",
            f"bare aiohttp JSON→202 {_fmt(bare['rate_per_s'])}/s ({bare['server_cpu_cores']} cores, "
            f"{_fmt(bare.get('cpu_us_per_request'))} µs CPU/req)",
            _fmt(r["ratio_vs_bare_aiohttp"], "×"),
            "–",
            "–",
        ),
        *_least_rows(r),
        *_compare_rows(r),
        _row(
            f"1 accept latency at {_fmt(fixed['target_rate'])}/s",
            f"p50 {_fmt(fixed['p50_ms'])} ms, p99 {_fmt(fixed['p99_ms'])} ms "
            f"({fixed['completed']} requests, statuses {fixed['statuses']}, "
            f"{_fmt(fixed.get('cpu_us_per_request'))} µs CPU/req; in the receiver: "
            f"p99 ≤ {_fmt((fixed.get('in_server') or {}).get('p99_ms_at_most'))} ms)",
            f"same rate: raw publish+confirm p50 {_fmt(rawf['p50_ms'])} ms, p99 {_fmt(rawf['p99_ms'])} ms; "
            f"bare aiohttp p50 {_fmt(baref['p50_ms'])} ms, p99 {_fmt(baref['p99_ms'])} ms",
            _fmt(round(fixed["p99_ms"] / rawf["p99_ms"], 1) if rawf["p99_ms"] else None, "× (p99)"),
            "p99 ≤ 10 ms",
            _verdict(fixed["p99_ms"] <= 10),
        ),
    ]


def _least_rows(r: dict[str, Any]) -> list[str]:
    if "least_receiver" not in r:
        return []
    least = r["least_receiver"]
    return [
        _row(
            "1 accept rate, c=64",
            "receiver",
            f"least receiver (read, parse, publish+confirm, 202) {_fmt(least['rate_per_s'])}/s "
            f"({least['server_cpu_cores']} cores, {_fmt(least.get('cpu_us_per_request'))} µs CPU/req)",
            _fmt(r["ratio_vs_least_receiver"], "×"),
            "–",
            f"least receiver: {_fmt(r['least_ratio_vs_raw_publish'], '×')} raw",
        )
    ]


def _compare_rows(r: dict[str, Any]) -> list[str]:
    if "receiver_compare" not in r:
        return []
    before, after = r["receiver_compare"], r["receiver"]
    fixed = r["receiver_compare_fixed_rate"]
    return [
        _row(
            "1 before/after, c=64",
            f"this checkout {_fmt(after['rate_per_s'])}/s, rounds {after['rounds']}, "
            f"{_fmt(after.get('cpu_us_per_request'))} µs CPU/req",
            f"{r['compare_root']}: {_fmt(before['rate_per_s'])}/s, rounds {before['rounds']}, "
            f"{_fmt(before.get('cpu_us_per_request'))} µs CPU/req",
            _fmt(round(after["rate_per_s"] / before["rate_per_s"], 2), "×"),
            "–",
            f"before: {_fmt(r['compare_ratio_vs_raw_publish'], '×')} raw",
        ),
        _row(
            f"1 before, latency at {_fmt(fixed['target_rate'])}/s",
            f"p50 {_fmt(fixed['p50_ms'])} ms, p99 {_fmt(fixed['p99_ms'])} ms, "
            f"{_fmt(fixed.get('cpu_us_per_request'))} µs CPU/req",
            "–",
            "–",
            "p99 ≤ 10 ms",
            _verdict(fixed["p99_ms"] <= 10),
        ),
    ]


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(fraction * 100)


TARGET = {"sqlite": 0.3, "postgresql": 0.25}  # one process (issue 18)


def _worker_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    mix = r.get("mix", "all")
    part = "" if mix == "all" else f", {mix} only"  # a part of the mix: no target of its own
    for kind, scales in r["worker"].items():
        for k, res in scales.items():
            ratio = res.get("ratio_vs_raw")
            target = TARGET.get(kind) if int(k) == 1 and not part else None
            rows.append(
                _row(
                    f"2 worker throughput, {kind}, {k} proc{part}",
                    f"{_fmt(res['rate_per_s'])}/s ({_fmt(res['per_process'])}/s per process, "
                    f"{_fmt(res.get('cpu_us_per_alarm'))} µs CPU/alarm, "
                    f"machine {_fmt(_percent(res.get('machine_cpu_busy')))} % busy)" + _rounds(res),
                    _raw_beside(res, k),
                    f"{_fmt(ratio, '×')} (CPU: {_fmt(res.get('cpu_ratio_vs_raw'), '×')})",
                    f"≥ {target}×" if target else ("–" if part else "rises"),
                    _verdict(ratio >= target if ratio is not None and target else None),
                )
            )
            compare = res.get("compare")
            if compare:
                rows.append(
                    _row(
                        f"2 same, {kind}, {k} proc, against {compare['root']}",
                        f"{_each(compare['ours_rates'])}/s, {_each(compare['ours_cpu_us'])} µs CPU/alarm",
                        f"{_each(compare['theirs_rates'])}/s, {_each(compare['theirs_cpu_us'])} µs CPU/alarm "
                        "(interleaved: ABBA BAAB, A ours; ours ÷ raw, mean of ours: "
                        f"{_fmt(res.get('ratio_vs_raw_mean'), '×')})",
                        f"{_fmt(compare['ratio'], '×')} (CPU: {_fmt(compare['cpu_ratio'], '×')})",
                        "≥ 0.9×",
                        _verdict(compare["ratio"] >= 0.9 if compare["ratio"] is not None else None),
                    )
                )
        variants = (
            ("one_queue", "all alarms in the work queue (no fast lane)"),
            ("unbatched", "WORKER_BATCH=1: one transaction per alarm, as before group commit"),
        )
        for key, what in variants:
            res = r.get(key, {}).get(kind)
            if res:
                rate, cpu = _fmt(res["rate_per_s"]), _fmt(res.get("cpu_us_per_alarm"))
                ratios = (
                    f"{_fmt(res.get('ratio_vs_raw'), '×')} (CPU: {_fmt(res.get('cpu_ratio_vs_raw'), '×')})"
                )
                rows.append(
                    _row(
                        f"2 same, {kind}, 1 proc{part}, {what.split(':')[0]}",
                        f"{rate}/s ({cpu} µs CPU/alarm): {what}",
                        _raw_beside(res, 1),
                        ratios,
                        "–",
                        "–",
                    )
                )
    return rows


def _rounds(res: dict[str, Any]) -> str:
    """A worker row's runs, where it ran more than once (the median run is the row's)."""
    rates = res.get("rounds") or []
    if len(rates) < 2:
        return ""
    return f"; median of {len(rates)} runs ({_each(rates)}/s, {_each(res['round_cpu_us'])} µs CPU/alarm)"


def _raw_beside(res: dict[str, Any], k: Any) -> str:
    runs = res.get("raw_runs") or []
    around = " / ".join(_fmt(x) for x in runs)
    return (
        f"raw consume+ack, {k} proc, median of the runs around it ({around}): "
        f"{_fmt(res['raw_rate_per_s'])}/s ({_fmt(res.get('raw_cpu_us_per_message'))} µs CPU/msg)"
    )


def _storm_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for run in r["runs"]:
        lanes = "fast lane" if run["lanes"] else "one queue"
        arrivals = run.get("arrivals")
        ours = (
            f"drained in {_fmt(run['drain_s'])} s ({_fmt(run['rate_per_s'])}/s, "
            f"{_fmt(run['cpu_us_per_alarm'])} µs CPU/alarm); last needed upgrade requested at "
            f"{_fmt(run['last_upgrade_s'])} s ({run['upgrades_requested']}/{run['upgrades_expected']})"
        )
        if arrivals:
            ours += (
                f"; {arrivals['upgraded']} alarms arriving meanwhile waited p50 "
                f"{_fmt(arrivals['p50_ms'])} ms, max {_fmt(arrivals['max_ms'])} ms"
            )
        rows.append(
            _row(
                f"7 storm {r['alarms']:,} alarms, {run['store']}, {run['processes']} proc, {lanes}",
                ours,
                "–",
                "–",
                "–",
                "–",
            )
        )
    return rows


def _retention_rows(r: dict[str, Any]) -> list[str]:
    before, pruning, after, run = r["before"], r["pruning"], r["after"], r["run"]
    size0, size1 = r["bytes_before"]["file"], r["bytes_after"]["file"]
    ours = (
        f"first step during pruning p50 {_fmt(pruning['p50_ms'])} ms, p99 {_fmt(pruning['p99_ms'])} ms "
        f"({pruning['n']} alarms; {run['pruned'].get('events', 0):,} events pruned in "
        f"{_fmt(r['pruning_seconds'])} s, {run['batches']:,} batches, the longest "
        f"{_fmt(run['longest_step_ms'])} ms); file {size0 / 2**20:.0f} MiB → "
        f"{size1 / 2**20:.0f} MiB"
    )
    baseline = (
        f"pruning off, before: p50 {_fmt(before['p50_ms'])} ms, p99 {_fmt(before['p99_ms'])} ms; "
        f"after: p99 {_fmt(after['p99_ms'])} ms"
    )
    return [
        _row(
            f"9 pruning {r['rows']:,} old events, alarms at {_fmt(r['rate_per_s'])}/s, {r['store']}",
            ours,
            baseline,
            _fmt(r["p99_ratio"], "×"),
            "p99 ≤ 2 × before; file smaller",
            _verdict(r["p99_ratio"] is not None and r["p99_ratio"] <= 2 and size1 < size0),
        )
    ]


def _e2e_rows(r: dict[str, Any]) -> list[str]:
    ours, raw = r["ours"], r["raw_publish_to_consume"]
    return [
        _row(
            f"3 end-to-end at {_fmt(r['rate_per_s'])}/s",
            f"p50 {_fmt(ours['p50_ms'])} ms, p99 {_fmt(ours['p99_ms'])} ms ({ours['n']} upgrades)",
            f"raw publish→consume p50 {_fmt(raw['p50_ms'])} ms, p99 {_fmt(raw['p99_ms'])} ms",
            f"{_fmt(r['ratio_p50'], '×')} / {_fmt(r['ratio_p99'], '×')}",
            "p50 ≤ 20 ms, p99 ≤ 100 ms",
            _verdict(ours["p50_ms"] <= 20 and ours["p99_ms"] <= 100),
        ),
        *_unbatched_e2e(r),
    ]


def _unbatched_e2e(r: dict[str, Any]) -> list[str]:
    if "unbatched" not in r:
        return []
    ours, before = r["ours"], r["unbatched"]
    return [
        _row(
            f"3 end-to-end at {_fmt(r['rate_per_s'])}/s, group commit vs none",
            f"p50 {_fmt(ours['p50_ms'])} ms (rounds {ours.get('rounds_p50_ms')})",
            f"WORKER_BATCH=1: p50 {_fmt(before['p50_ms'])} ms, p99 {_fmt(before['p99_ms'])} ms "
            f"(rounds {before.get('rounds_p50_ms')})",
            _fmt(round(ours["p50_ms"] / before["p50_ms"], 2) if before["p50_ms"] else None, "× (p50)"),
            "p50 ≤ 10 ms, no worse",
            _verdict(ours["p50_ms"] <= 10),
        )
    ]


def _footprint_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for ours, base, label in (
        ("receiver", "bare_aiohttp", "bare aiohttp"),
        ("worker", "raw_consumer", "raw consumer"),
    ):
        o, b = r[ours], r[base]
        rows.append(
            _row(
                f"4 idle RSS, {ours}",
                f"{_fmt(o['rss_mb'])} MiB",
                f"{label} {_fmt(b['rss_mb'])} MiB",
                _fmt(o["rss_ratio"], "×"),
                "≤ 80 MB",
                _verdict(o["rss_mb"] * 1.048576 <= 80),
            )
        )
        rows.append(
            _row(
                f"4 start-to-ready, {ours}",
                f"{_fmt(o['start_to_ready_s'])} s",
                f"{label} {_fmt(b['start_to_ready_s'])} s",
                _fmt(o["start_ratio"], "×"),
                "–",
                "–",
            )
        )
    return rows


def _flask_rows(r: dict[str, Any], accept: dict[str, Any] | None) -> list[str]:
    flask = r["flask_sync"]
    ours = accept["receiver"]["rate_per_s"] if accept else None
    return [
        _row(
            "5 blog's sync Flask handler, c=64, API 200 ms",
            f"receiver {_fmt(ours)}/s" if ours else "receiver (not run)",
            f"Flask threaded {_fmt(flask['rate_per_s'])}/s (p99 {_fmt(flask['p99_ms'])} ms)",
            _fmt(r.get("receiver_vs_flask"), "×"),
            "context",
            "–",
        )
    ]


def _console_rows(r: dict[str, Any]) -> list[str]:
    rows = []
    for store in ("sqlite", "postgresql"):
        if store not in r:
            continue
        run = r[store]
        json_view, bare = run["baseline_json_incidents"], run["baseline_healthz"]
        for name, page in run["pages"].items():
            rows.append(
                _row(
                    f"6 console, {store}, {r['incidents']:,} incidents: {name}",
                    f"p50 {_fmt(page['p50_ms'])} ms, p99 {_fmt(page['p99_ms'])} ms "
                    f"({page['requests']} requests, {page['bytes'] / 1024:.0f} KiB)",
                    f"JSON /incidents?limit=50 p50 {_fmt(json_view['p50_ms'])} ms; "
                    f"/healthz p50 {_fmt(bare['p50_ms'])} ms",
                    _fmt(page["ratio_p50_vs_json"], "×"),
                    f"< {r['target_ms']:.0f} ms",
                    _verdict(page["meets"]),
                )
            )
    return rows


def _ahead(minutes: float | None) -> str:
    if minutes is None:
        return "not ready"
    return f"{minutes:.1f} min before" if minutes >= 0 else f"{-minutes:.1f} min after"


def _forecast_said(run: dict[str, Any]) -> str:
    """One run of benchmark 8 in words: did it upgrade, when ready against the crossing."""
    crossing = run["crossing_min"]
    if not run["upgrades"]:
        said = "no upgrade"
        return said + (f" (crosses at min {crossing:.1f})" if crossing is not None else "")
    first = run["upgrades"][0]
    said = f"upgraded ({first['source']} at min {first['requested_min']:.1f}), ready "
    if crossing is not None:
        said += f"{_ahead(run['ready_before_crossing_min'])} the crossing (min {crossing:.1f})"
    else:
        said += f"at min {first['ready_min']:.1f}, no crossing"
    return said + f"; {run['needless_upgrades']} needless"


def _forecast_rows(r: dict[str, Any]) -> list[str]:
    baselines = {run["curve"]: run for run in r["runs"] if run["lead"] == "forecast off"}
    targets = {"climb": "ready before the crossing", "plateau": "no upgrade", "spike": "no upgrade"}
    rows = []
    for run in r["runs"]:
        if run["lead"] == "forecast off":
            continue
        base = baselines.get(run["curve"])
        rows.append(
            _row(
                f"8 forecast, {run['curve']}, lead time {run['lead']}",
                _forecast_said(run),
                f"forecast off: {_forecast_said(base)}" if base else "–",
                "–",
                targets.get(run["shape"], "–"),
                _verdict(run.get("meets")),
            )
        )
    return rows


# Each benchmark's rows, in the table's order (flask's need the accept run's rate too).
ROWS: tuple[tuple[str, Callable[[dict[str, Any], dict[str, Any]], list[str]]], ...] = (
    ("accept", lambda r, _: _accept_rows(r)),
    ("workers", lambda r, _: _worker_rows(r)),
    ("e2e", lambda r, _: _e2e_rows(r)),
    ("footprint", lambda r, _: _footprint_rows(r)),
    ("flask", lambda r, results: _flask_rows(r, results.get("accept"))),
    ("console", lambda r, _: _console_rows(r)),
    ("storm", lambda r, _: _storm_rows(r)),
    ("forecast", lambda r, _: _forecast_rows(r)),
    ("retention", lambda r, _: _retention_rows(r)),
)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        _row("benchmark", "ours", "baseline (same run)", "ratio", "target", "verdict"),
        _row(*["---"] * 6),
    ]
    for name, rows in ROWS:
        if name in results:
            lines += rows(results[name], results)
    m = results["machine"]
    lines += [
        "",
        f"Machine: {m['cores']} × {m['cpu']}, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, "
        f"aiohttp {m['aiohttp']}, aio-pika {m['aio_pika']}, RabbitMQ {m['rabbitmq']}; "
        f"load average {m['loadavg_at_start']} at start, {m.get('loadavg_at_end')} at end; "
        f"revision {results['revision']}; {results.get('total_seconds')} s in all.",
    ]
    accept = results.get("accept", {})
    for key, label in (("receiver", "this checkout"), ("receiver_compare", "compared checkout")):
        profile = accept.get(key, {}).get("profile")
        if profile and profile.get("top_inclusive"):
            lines += ["", f"py-spy, receiver ({label}) at c=64, share of samples containing the frame:", ""]
            lines += [f"- {pct}% {name}" for name, pct in profile["top_inclusive"]]
    return "\n".join(lines)
