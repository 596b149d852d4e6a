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
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 26  # room for the axis labels (LEFT: at least)
FONT_SIZE = 11
# Advance widths in em of the labels' characters in a common sans-serif (DejaVu Sans, rounded
# up): the wide ones, and the rest. What a label takes across is estimated from them.
WIDE_CHARS = {"%": 0.96, "×": 0.84, "+": 0.84, "M": 0.87, "G": 0.78, "→": 0.84, "m": 0.98, "w": 0.82}
NARROW = 0.64
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


INNER_H = HEIGHT - TOP - BOTTOM


def text_width(text: str, size: float = FONT_SIZE) -> float:
    """An estimate of how wide ``text`` is drawn at ``size`` (never much less than it is)."""
    return sum(WIDE_CHARS.get(c, NARROW) for c in text) * size


@dataclass(frozen=True)
class _Frame:
    """The span drawn: time ``t0``..``t1`` across, values ``lo``..``hi`` up, from ``left``
    (room for the value labels) to the right edge."""

    t0: float
    t1: float
    lo: float
    hi: float
    left: float = LEFT

    def x(self, at: float) -> float:
        inner_w = WIDTH - self.left - RIGHT
        return self.left + inner_w * (at - self.t0) / max(self.t1 - self.t0, 1.0)

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


def _room(frame: _Frame, unit: str) -> _Frame:
    """The frame with its left edge far enough right for the longer value label."""
    widest = max(text_width(_fmt(v) + unit) for v in (frame.lo, frame.hi))
    return _Frame(frame.t0, frame.t1, frame.lo, frame.hi, max(LEFT, widest + 8.0))


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M")


SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _fmt(value: float) -> str:
    """A figure as a person reads it on an axis: three significant digits, thousands and up
    with a suffix (``1.6k``, ``2.1M``), never an exponent."""
    for size, suffix in SUFFIXES:
        if abs(value) >= size:
            return f"{_digits(value / size)}{suffix}"
    return _digits(value)


def _digits(value: float) -> str:
    if abs(value) >= 100 or value == 0:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.0e}"


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
    frame = _room(_frame(points, threshold, forecast, floor, ceiling), unit)
    t0, t1, lo, hi, left = frame.t0, frame.t1, frame.lo, frame.hi, frame.left
    inner_h = INNER_H
    x, y = frame.x, frame.y

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        # Axes and their labels: the value range on the left, the time span (UTC) below.
        f'<g class="axes" stroke="#94a3b8" stroke-width="1">'
        f'<line x1="{left:g}" y1="{TOP}" x2="{left:g}" y2="{TOP + inner_h}"/>'
        f'<line x1="{left:g}" y1="{TOP + inner_h}" x2="{WIDTH - RIGHT}" y2="{TOP + inner_h}"/></g>',
        f'<g class="labels" fill="#475569" font-size="11" font-family="sans-serif">'
        f'<text x="{left - 4:g}" y="{TOP + 4}" text-anchor="end">{_e(_fmt(hi))}{_e(unit)}</text>'
        f'<text x="{left - 4:g}" y="{TOP + inner_h}" text-anchor="end">{_e(_fmt(lo))}{_e(unit)}</text>'
        f'<text x="{left:g}" y="{HEIGHT - 8}">{_clock(t0)} UTC</text>'
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{_clock(t1)} UTC</text></g>',
    ]
    if threshold is not None:
        ty = y(threshold)
        out.append(
            f'<g class="threshold"><line x1="{left:g}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}" '
            f'stroke="{THRESHOLD_COLOUR}" stroke-width="1" stroke-dasharray="6 4"/>'
            f'<text x="{WIDTH - RIGHT - 2}" y="{ty - 3:.1f}" text-anchor="end" fill="{THRESHOLD_COLOUR}" '
            f'font-size="11" font-family="sans-serif">threshold {_e(_fmt(threshold))}{_e(unit)}</text>'
            f"<title>the rule's threshold: {_e(_fmt(threshold))}{_e(unit)}</title></g>"
        )
    for marker in markers:
        if not t0 <= marker.at <= t1:
            continue  # outside the samples' span: the plan history lists it
        mx = x(marker.at)
        # Its label to the right of the line, or to the left where the picture ends first.
        fits = mx + 3 + text_width(marker.label) <= WIDTH - RIGHT
        tx, anchor = (mx + 3, "start") if fits else (mx - 3, "end")
        out.append(
            f'<g class="marker"><line x1="{mx:.1f}" y1="{TOP}" x2="{mx:.1f}" y2="{TOP + inner_h}" '
            f'stroke="{MARKER_COLOUR}" stroke-width="1.5"/>'
            f'<text x="{tx:.1f}" y="{TOP + 10}" text-anchor="{anchor}" fill="{MARKER_COLOUR}" '
            f'font-size="11" font-family="sans-serif">{_e(marker.label)}</text>'
            f"<title>{_e(marker.label)} at {_clock(marker.at)} UTC</title></g>"
        )
    for index, (node, pts) in enumerate(sorted(points.items())):
        colour = PALETTE[index % len(PALETTE)]
        drawn = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in pts)
        out.append(
            f'<g class="series" data-node="{_e(node)}"><polyline fill="none" stroke="{colour}" '
            f'stroke-width="1.5" points="{drawn}"/><title>{_e(node)}</title>'
            f'<text x="{left + 4:g}" y="{TOP + inner_h - 4 - 12 * index}" fill="{colour}" font-size="11" '
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
