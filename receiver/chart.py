"""The instance page's usage chart as a server-rendered SVG string: a pure function of the
samples per node, the rule's threshold, the upgrade markers and the forecast line.

Server-rendered because the console's Content-Security-Policy allows no inline script and
no inline style: everything here is SVG elements with presentation attributes (``stroke``,
``fill``…), which the policy does not govern. Every text that reaches the SVG (node names,
plan names, labels) is escaped: node names come from the broker, plans from the audit trail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 26  # room for the axis labels
# One stroke per node, in order; cycled on an instance with more nodes than colours.
PALETTE = ("#2563eb", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
THRESHOLD_COLOUR, MARKER_COLOUR, FORECAST_COLOUR = "#dc2626", "#64748b", "#d97706"


@dataclass(frozen=True)
class Marker:
    """A moment to mark on the time axis (an upgrade), with what to say about it."""

    at: float
    label: str


@dataclass(frozen=True)
class Forecast:
    """The forecast's line: from the fitted figure when it was made to the projected crossing."""

    start: tuple[float, float]  # (epoch seconds, value)
    end: tuple[float, float]


INNER_W, INNER_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class _Frame:
    """The span drawn: time ``t0``..``t1`` across, values ``lo``..``hi`` up."""

    t0: float
    t1: float
    lo: float
    hi: float

    def x(self, at: float) -> float:
        return LEFT + INNER_W * (at - self.t0) / max(self.t1 - self.t0, 1.0)

    def y(self, value: float) -> float:
        return TOP + INNER_H * (self.hi - value) / (self.hi - self.lo)


def _frame(
    points: Mapping[str, Sequence[tuple[float, float]]],
    threshold: float | None,
    forecast: Forecast | None,
    floor: float,
    ceiling: float | None,
) -> _Frame:
    """The earliest sample to the latest (or the forecast's end); the lowest of ``floor`` and
    every figure to the highest of them, ``ceiling``, the threshold and the forecast."""
    times = [at for pts in points.values() for at, _ in pts]
    values = [v for pts in points.values() for _, v in pts]
    t0, t1 = min(times), max(times)
    if forecast is not None:
        t1 = max(t1, forecast.end[0])
        values += [forecast.start[1], forecast.end[1]]
    if threshold is not None:
        values.append(threshold)
    lo = min([floor, *values])
    hi = max([*values, ceiling if ceiling is not None else lo])
    if hi <= lo:
        hi = lo + 1.0
    return _Frame(t0, t1, lo, hi + (hi - lo) * 0.05)  # a little room above the highest figure


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M")


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def usage_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    unit: str,
    threshold: float | None = None,
    markers: Sequence[Marker] = (),
    forecast: Forecast | None = None,
    floor: float = 0.0,
    ceiling: float | None = None,
) -> str:
    """``series``: per node, ``(epoch seconds, value)`` points. The SVG of them on one time
    axis (the earliest sample to the latest, or to the forecast's end), with the threshold as
    a dashed line, each marker inside that span as a vertical line, and the forecast as a
    dotted line; where no node has a point, a sentence saying so instead of a picture."""
    points = {node: sorted(pts) for node, pts in series.items() if pts}
    if not points:
        return f'<p class="empty chart-empty">No samples of {_e(title)} to draw yet.</p>'
    frame = _frame(points, threshold, forecast, floor, ceiling)
    t0, t1, lo, hi = frame.t0, frame.t1, frame.lo, frame.hi
    inner_h = INNER_H
    x, y = frame.x, frame.y

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        # Axes and their labels: the value range on the left, the time span (UTC) below.
        f'<g class="axes" stroke="#94a3b8" stroke-width="1">'
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + inner_h}"/>'
        f'<line x1="{LEFT}" y1="{TOP + inner_h}" x2="{WIDTH - RIGHT}" y2="{TOP + inner_h}"/></g>',
        f'<g class="labels" fill="#475569" font-size="11" font-family="sans-serif">'
        f'<text x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{_e(_fmt(hi))}{_e(unit)}</text>'
        f'<text x="{LEFT - 4}" y="{TOP + inner_h}" text-anchor="end">{_e(_fmt(lo))}{_e(unit)}</text>'
        f'<text x="{LEFT}" y="{HEIGHT - 8}">{_clock(t0)} UTC</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{_clock(t1)} UTC</text></g>',
    ]
    if threshold is not None:
        ty = y(threshold)
        out.append(
            f'<g class="threshold"><line x1="{LEFT}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - RIGHT - 2}" y="{ty - 3:.1f}" text-anchor="end" fill="{THRESHOLD_COLOUR}" '
            f'font-size="11" font-family="sans-serif">threshold {_e(_fmt(threshold))}{_e(unit)}</text>'
            f"<title>the rule's threshold: {_e(_fmt(threshold))}{_e(unit)}</title></g>"
        )
    for marker in markers:
        if not t0 <= marker.at <= t1:
            continue  # outside the samples' span: the plan history lists it
        mx = x(marker.at)
        out.append(
            f'<g class="marker"><line x1="{mx:.1f}" y1="{TOP}" x2="{mx:.1f}" y2="{TOP + inner_h}" '
            f'stroke="{MARKER_COLOUR}" stroke-width="1.5"/>'
            f'<text x="{mx + 3:.1f}" y="{TOP + 10}" fill="{MARKER_COLOUR}" font-size="11" '
            f'font-family="sans-serif">{_e(marker.label)}</text>'
            f"<title>{_e(marker.label)} at {_clock(marker.at)} UTC</title></g>"
        )
    for index, (node, pts) in enumerate(sorted(points.items())):
        colour = PALETTE[index % len(PALETTE)]
        drawn = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in pts)
        out.append(
            f'<g class="series" data-node="{_e(node)}"><polyline fill="none" stroke="{colour}" '
            f'stroke-width="1.5" points="{drawn}"/><title>{_e(node)}</title>'
            f'<text x="{LEFT + 4}" y="{TOP + inner_h - 4 - 12 * index}" fill="{colour}" font-size="11" '
            f'font-family="sans-serif">{_e(node)}</text></g>'
        )
    if forecast is not None:
        (a_at, a_v), (b_at, b_v) = forecast.start, forecast.end
        out.append(
            f'<g class="forecast"><line x1="{x(a_at):.1f}" y1="{y(a_v):.1f}" x2="{x(b_at):.1f}" '
            f'y2="{y(b_v):.1f}" stroke="{FORECAST_COLOUR}" stroke-width="2" stroke-dasharray="2 3"/>'
            f"<title>forecast: {_e(_fmt(b_v))}{_e(unit)} at {_clock(b_at)} UTC</title></g>"
        )
    out.append("</svg>")
    return "".join(out)
