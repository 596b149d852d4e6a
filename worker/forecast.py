"""Upgrading before the alarm: pure functions of (samples, threshold, lead time, now).

A plan change takes CloudAMQP minutes to over an hour, so an upgrade started when memory
crosses 80 % can finish after RabbitMQ has blocked its publishers. For a rule with
``forecast = true`` the watchdog fits a trend to the instance's recent samples and, when the
trend crosses the rule's threshold within the *lead time* (how long plan changes take here),
raises a ``forecast`` alarm that goes through the ordinary pipeline.

- ``series``: the sampled rows → one point per poll, of the node nearest the threshold
  (memory: the highest percent; disk: the lowest ``disk_free / disk_free_limit``).
- ``project``: Theil–Sen (the median of pairwise slopes: one spike moves it little) over the
  last ``window`` seconds, with a fit-quality floor (R² of that line) so that noise never
  forecasts, and the same fit over the latest few points, so that a climb that flattened or
  turned down stops forecasting at once; the later of the two crossings counts.
- ``lead_time``: the rule's ``lead_time``, else the median reconfiguration time of this
  instance's past plan changes, else the fleet's, else ``DEFAULT_LEAD_TIME``.
- ``forecast_step``: one forecast per *episode* (a climb), so a climb does not raise one
  every poll; the episode ends when the trend no longer heads for the threshold.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.alarm import iso
from shared.verify import Condition

DEFAULT_LEAD_TIME = 1800.0  # seconds, when neither the rule nor any past plan change says
FIT_FLOOR = 0.8  # the least R² of the trend line over the window: below it, no trend
MAX_POINTS = 240  # points fitted at most (Theil–Sen is quadratic in them): evenly thinned
# An episode that projects a crossing this many lead times away (or later) is over: a little
# slack, so a climb whose estimate wobbles around the lead time stays one episode.
EPISODE_SLACK = 2.0
# A measured plan change's duration is stretched by this much to make the lead time: the fit
# reads a climb's slope low while the climb is young (so the crossing looks later than it is),
# and the sample that sees it comes up to one watchdog interval late (added on top). Without
# it a change started one duration before the projected crossing ends after the real one.
LEAD_MARGIN = 1.5
FORECAST_PREFIX = "forecast-"


@dataclass(frozen=True)
class Point:
    at: float
    value: float


@dataclass(frozen=True)
class Target:
    """Where a rule's condition starts, on the series: memory percent strictly above
    ``threshold`` (rising), or disk headroom at or below it (falling)."""

    alarm_type: str
    threshold: float

    @property
    def rising(self) -> bool:
        return self.alarm_type == "memory"

    @classmethod
    def of(cls, condition: Condition) -> Target | None:
        if condition.alarm_type == "memory" and condition.above is not None:
            return cls("memory", condition.above)
        if condition.alarm_type == "disk":
            return cls("disk", condition.disk_margin)
        return None

    def crossed(self, value: float) -> bool:
        return value > self.threshold if self.rising else value <= self.threshold


def series(rows: Iterable[Mapping[str, Any]], alarm_type: str) -> list[Point]:
    """Sampled node rows (``at``, ``mem_used``, ``mem_limit``, ``disk_free``,
    ``disk_free_limit``) → one point per poll, oldest first: the highest memory percent, or
    the lowest disk headroom, of the nodes that reported it."""
    by_poll: dict[float, float] = {}
    for row in rows:
        value = _value(row, alarm_type)
        if value is None:
            continue
        at = float(row["at"])
        seen = by_poll.get(at)
        if seen is None or (value > seen if alarm_type == "memory" else value < seen):
            by_poll[at] = value
    return [Point(at, by_poll[at]) for at in sorted(by_poll)]


def _value(row: Mapping[str, Any], alarm_type: str) -> float | None:
    if alarm_type == "memory":
        used, limit = row.get("mem_used"), row.get("mem_limit")
        return 100.0 * used / limit if used is not None and limit else None
    free, limit = row.get("disk_free"), row.get("disk_free_limit")
    return free / limit if free is not None and limit else None


# --- the trend ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A fitted line in time relative to ``now``: ``value(t) = at_now + slope × (t − now)``."""

    slope: float  # per second
    at_now: float
    r2: float


def theil_sen(points: Sequence[Point], now: float) -> Line:
    """The Theil–Sen line through ``points`` (at least two, at distinct times) and its R²."""
    xs = [p.at - now for p in points]
    ys = [p.value for p in points]
    n = len(xs)
    slopes = [(ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(n) for j in range(i + 1, n) if xs[j] != xs[i]]
    slope = statistics.median(slopes) if slopes else 0.0
    at_now = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
    mean = statistics.fmean(ys)
    total = sum((y - mean) ** 2 for y in ys)
    residual = sum((y - at_now - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return Line(slope, at_now, 1.0 - residual / total if total > 0 else 0.0)


def _thin(points: Sequence[Point], most: int) -> list[Point]:
    if len(points) <= most:
        return list(points)
    step = (len(points) - 1) / (most - 1)
    return [points[round(i * step)] for i in range(most)]


class Verdict(StrEnum):
    TOO_FEW = "too_few_samples"  # fewer than FORECAST_MIN_SAMPLES in the window: nothing known
    NO_TREND = "no_trend"  # flat, noisy, heading away, or the latest points stopped climbing
    CROSSED = "crossed"  # already past the threshold: the alarm itself is the ordinary path's
    LATER = "later"  # heading for the threshold, beyond the lead time
    SOON = "soon"  # crossing within the lead time: raise a forecast


@dataclass(frozen=True)
class LeadTime:
    seconds: float
    source: str  # "rule", "instance", "fleet" or "default"
    plan_changes: int = 0  # how many past plan changes the median is of
    measured: float | None = None  # their median duration (``seconds`` holds the margin too)

    def describe(self) -> str:
        minutes = _minutes(self.seconds)
        if self.source == "rule":
            return f"the rule's lead time is {minutes}"
        took = _minutes(self.measured if self.measured is not None else self.seconds)
        margin = f" ({minutes} ahead, with its margin)" if self.measured not in (None, self.seconds) else ""
        if self.source == "instance":
            return f"plan changes here take {took}{margin}"
        if self.source == "fleet":
            return f"plan changes in this fleet take {took}{margin}"
        return f"no plan change measured yet, {minutes} assumed"


@dataclass(frozen=True)
class Projection:
    verdict: Verdict
    samples: int
    value: float | None = None  # the latest measured figure
    line: Line | None = None  # the fit over the window
    recent: Line | None = None  # the fit over the latest points
    crosses_in: float | None = None  # seconds from now, when heading for the threshold
    lead: LeadTime | None = None

    @property
    def heading(self) -> bool:
        """The trend heads for the threshold (the lead time decides the rest)."""
        return self.crosses_in is not None


def fit(
    points: Sequence[Point], target: Target, now: float, *, window: float, min_samples: int
) -> Projection:
    """The trend of the last ``window`` seconds of ``points`` towards ``target``, without the
    lead time: ``heading`` with ``crosses_in`` when both fits project a crossing."""
    taken = [p for p in points if now - window <= p.at <= now]
    if len(taken) < max(min_samples, 3):
        return Projection(Verdict.TOO_FEW, len(taken))
    latest = taken[-1].value
    line = theil_sen(_thin(taken, MAX_POINTS), now)
    # Measured, not fitted: a line through a climb that has just flattened runs on past it.
    if target.crossed(latest):
        return Projection(Verdict.CROSSED, len(taken), latest, line)
    recent = theil_sen(taken[-max(3, min_samples // 2) :], now)
    toward = 1.0 if target.rising else -1.0
    if line.r2 < FIT_FLOOR or line.slope * toward <= 0 or recent.slope * toward <= 0:
        return Projection(Verdict.NO_TREND, len(taken), latest, line, recent)
    crossings = [max((target.threshold - fitted.at_now) / fitted.slope, 0.0) for fitted in (line, recent)]
    return Projection(Verdict.LATER, len(taken), latest, line, recent, max(crossings))


def judge(found: Projection, target: Target, lead: LeadTime) -> Projection:
    """``SOON`` when a heading trend crosses within ``lead``: by its end, the figure is past
    the threshold as the rule means it (memory strictly above, disk headroom at or below)."""
    if not found.heading:
        return found
    assert found.crosses_in is not None
    within = found.crosses_in < lead.seconds if target.rising else found.crosses_in <= lead.seconds
    verdict = Verdict.SOON if within else Verdict.LATER
    return Projection(verdict, found.samples, found.value, found.line, found.recent, found.crosses_in, lead)


def project(
    points: Sequence[Point], target: Target, now: float, *, window: float, min_samples: int, lead: LeadTime
) -> Projection:
    """``fit`` then ``judge``: the whole forecast of one series at ``now``."""
    return judge(fit(points, target, now, window=window, min_samples=min_samples), target, lead)


def lead_time(
    rule_lead: float | None, instance_id: str, durations: Sequence[tuple[str, float]], interval: float = 0.0
) -> LeadTime:
    """The lead time: the rule's, else the median of this instance's past reconfiguration
    times (``(instance, seconds)`` of plan changes CloudAMQP finished), else the fleet's —
    either stretched by ``LEAD_MARGIN`` plus one sampling ``interval`` — else
    ``DEFAULT_LEAD_TIME``."""
    if rule_lead is not None:
        return LeadTime(rule_lead, "rule")
    own = [seconds for instance, seconds in durations if instance == instance_id and seconds > 0]
    fleet = [seconds for _, seconds in durations if seconds > 0]
    for source, measured in (("instance", own), ("fleet", fleet)):
        if measured:
            median = statistics.median(measured)
            return LeadTime(median * LEAD_MARGIN + interval, source, len(measured), median)
    return LeadTime(DEFAULT_LEAD_TIME, "default")


# --- what is said about it ------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def explain(target: Target, found: Projection) -> str:
    """One line for the action, the notification and the console, e.g. "memory 71% rising
    0.9%/min, projected to cross 80% in 10 min; plan changes here take 14 min"."""
    if found.line is None or found.value is None or found.crosses_in is None:
        return f"{target.alarm_type}: {found.verdict.value}"
    rate = abs(found.line.slope) * 60
    if target.rising:
        said = (
            f"memory {found.value:.0f}% rising {rate:.1f}%/min, projected to cross "
            f"{target.threshold:g}% in {_minutes(found.crosses_in)}"
        )
    else:
        said = (
            f"disk headroom {found.value:.2f}× disk_free_limit falling {rate:.3f}×/min, projected to "
            f"reach {target.threshold:g}× in {_minutes(found.crosses_in)}"
        )
    return said + (f"; {found.lead.describe()}" if found.lead is not None else "")


def evidence(target: Target, found: Projection, rule: str, *, window: float, now: float) -> dict[str, Any]:
    """The projection and what it rests on, as the forecast alarm carries it."""
    assert found.line is not None and found.crosses_in is not None and found.lead is not None
    line, lead = found.line, found.lead
    return {
        "rule": rule,
        "threshold": target.threshold,
        "crosses_in_seconds": round(found.crosses_in, 1),
        "crosses_at": iso(now + found.crosses_in),
        "lead_time_seconds": round(lead.seconds, 1),
        "lead_time_from": lead.source,
        "plan_changes": lead.plan_changes,
        # Where the trend will be once a plan change started now would be done: past the
        # threshold by construction, and what the rule's threshold is compared with.
        "projected_value": round(line.at_now + line.slope * max(lead.seconds, found.crosses_in), 3),
        "fit": {
            "method": "theil-sen",
            "samples": found.samples,
            "window_seconds": window,
            "value_now": round(line.at_now, 3),
            "rate_per_minute": round(line.slope * 60, 4),
            "r2": round(line.r2, 4),
            "recent_rate_per_minute": round(found.recent.slope * 60, 4) if found.recent else None,
        },
        "explanation": explain(target, found),
    }


# --- one forecast per climb -------------------------------------------------------------------


@dataclass(frozen=True)
class Episode:
    """What the store remembers of one (instance, alarm type)'s forecast between polls."""

    since: float | None = None  # when the trend was first seen heading for the threshold
    raised_at: float | None = None  # when this episode's forecast was raised


class Step(StrEnum):
    UNKNOWN = "unknown"  # too few samples: keep what is known
    CLEAR = "clear"  # no trend towards the threshold: the episode (if any) ends
    HOLD = "hold"  # an episode goes on (heading, crossed, or already raised)
    RAISE = "raise"  # crossing within the lead time and not yet raised: raise the forecast


def forecast_step(found: Projection, episode: Episode, now: float) -> tuple[Step, Episode]:
    """The forecast's step for one condition: raise once per episode. An episode starts when
    the trend first heads for the threshold and ends when it no longer does (or projects the
    crossing ``EPISODE_SLACK`` lead times away or later); past the threshold it goes on, so
    that the climb's end does not start a new one."""
    verdict = found.verdict
    if verdict is Verdict.TOO_FEW:
        return Step.UNKNOWN, episode
    if verdict is Verdict.NO_TREND:
        return Step.CLEAR, Episode()
    since = episode.since if episode.since is not None else now
    if verdict is Verdict.CROSSED:
        return Step.HOLD, episode
    if verdict is Verdict.SOON:
        if episode.raised_at is None:
            return Step.RAISE, Episode(since, now)
        return Step.HOLD, episode
    assert found.crosses_in is not None and found.lead is not None
    if found.crosses_in >= EPISODE_SLACK * found.lead.seconds:
        return Step.CLEAR, Episode()
    return Step.HOLD, Episode(since, episode.raised_at)


def forecast_event_id(instance_id: str, alarm_type: str, episode_since: float) -> str:
    """One event id per episode: a poller that dies after publishing and before remembering
    publishes the same id again, which the pipeline records once."""
    digest = hashlib.sha256(f"{instance_id}/{alarm_type}/{episode_since!r}".encode())
    return FORECAST_PREFIX + digest.hexdigest()[:24]


def forecast_alarm(
    instance_id: str,
    target: Target,
    found: Projection,
    rule: str,
    *,
    window: float,
    now: float,
    triggered_at: str,
) -> dict[str, Any]:
    """The body of a forecast alarm: CloudAMQP's shape (``value``: the latest measured
    figure), marked ``source: forecast``, with the projection and its evidence."""
    assert found.value is not None
    return {
        "alarm_type": target.alarm_type,
        "value": round(found.value, 1) if target.rising else round(found.value, 3),
        "instance_id": instance_id,
        "triggered_at": triggered_at,
        "source": "forecast",
        "forecast": evidence(target, found, rule, window=window, now=now),
    }
