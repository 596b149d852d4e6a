"""Looking at the broker before acting, decided by pure functions of (readings, rules, now).

A managed instance's own RabbitMQ management API (``GET /api/nodes``) says what its alarm
only claims: ``mem_used`` / ``mem_limit`` and ``disk_free`` / ``disk_free_limit`` per node.

- ``assess``: does a rule's condition still hold on any node? (verify before an upgrade; the
  watchdog's test of a rule without an alarm)
- ``watch``: should the watchdog raise an alarm of its own, given how long a condition has held?
- ``downgrade_advice``: has an instance we upgraded stayed small enough, long enough, to say
  that the plan below would do?

Memory is compared as CloudAMQP's memory alarm is, in percent: ``100 * mem_used / mem_limit``
against the rule's ``above``. RabbitMQ does not report a disk's size, so disk is compared by
its headroom: the condition holds while a node's ``disk_free`` is at most
``DISK_FREE_MARGIN × disk_free_limit`` (or its disk alarm is on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.plans import Ladder, parse_plan

# The alarm types whose condition the nodes' figures show.
CHECKABLE = frozenset({"memory", "disk"})


@dataclass(frozen=True)
class NodeReading:
    """One node's figures from ``GET /api/nodes`` (None: the node did not report it yet)."""

    node: str
    mem_used: int | None = None
    mem_limit: int | None = None
    mem_alarm: bool = False
    disk_free: int | None = None
    disk_free_limit: int | None = None
    disk_free_alarm: bool = False
    fd_used: int | None = None
    sockets_used: int | None = None

    @property
    def mem_percent(self) -> float | None:
        if self.mem_used is None or not self.mem_limit:
            return None
        return 100.0 * self.mem_used / self.mem_limit

    def figures(self) -> dict[str, Any]:
        """What an action, an alarm or the console shows of this node."""
        percent = self.mem_percent
        return {
            "node": self.node,
            "mem_used": self.mem_used,
            "mem_limit": self.mem_limit,
            "mem_percent": round(percent, 1) if percent is not None else None,
            "mem_alarm": self.mem_alarm,
            "disk_free": self.disk_free,
            "disk_free_limit": self.disk_free_limit,
            "disk_free_alarm": self.disk_free_alarm,
        }


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def parse_nodes(payload: Any) -> list[NodeReading]:
    """``GET /api/nodes`` → readings; ValueError when it is not a list of nodes."""
    if not isinstance(payload, list):
        raise ValueError(f"expected a JSON list of nodes, got {type(payload).__name__}")
    readings = []
    for item in payload:
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str):
            raise ValueError("a node without a name")
        if item.get("running") is False:
            continue  # a stopped cluster member reports no figures
        readings.append(
            NodeReading(
                node=item["name"],
                mem_used=_int(item.get("mem_used")),
                mem_limit=_int(item.get("mem_limit")),
                mem_alarm=item.get("mem_alarm") is True,
                disk_free=_int(item.get("disk_free")),
                disk_free_limit=_int(item.get("disk_free_limit")),
                disk_free_alarm=item.get("disk_free_alarm") is True,
                fd_used=_int(item.get("fd_used")),
                sockets_used=_int(item.get("sockets_used")),
            )
        )
    return readings


@dataclass(frozen=True)
class Condition:
    """What a rule's alarm claims, in terms the nodes can confirm: memory above ``above``
    percent, or disk headroom at most ``disk_margin`` times the free-space limit."""

    alarm_type: str
    above: float | None = None
    disk_margin: float = 2.0

    @property
    def checkable(self) -> bool:
        return self.alarm_type == "disk" or (self.alarm_type == "memory" and self.above is not None)


@dataclass(frozen=True)
class Assessment:
    """Whether the condition holds on some node, the figure that says so (memory: the
    highest percent; disk: the lowest free/limit ratio), and every node's figures."""

    holds: bool | None  # None: no node reported the figures needed
    value: float | None
    nodes: tuple[dict[str, Any], ...]

    def describe(self, condition: Condition) -> str:
        if self.value is None:
            return "no node reported the figures"
        if condition.alarm_type == "memory":
            return f"highest memory use {self.value:.1f}% of mem_limit (rule: above {condition.above:g}%)"
        return (
            f"lowest disk headroom {self.value:.2f}× disk_free_limit "
            f"(holds at or below {condition.disk_margin:g}×)"
        )


def assess(condition: Condition, readings: Sequence[NodeReading]) -> Assessment:
    """Does ``condition`` hold on any node right now?"""
    nodes = tuple(r.figures() for r in readings)
    if condition.alarm_type == "memory":
        percents = [p for p in (r.mem_percent for r in readings) if p is not None]
        if not percents or condition.above is None:
            return Assessment(None, None, nodes)
        high = max(percents)
        return Assessment(high > condition.above, high, nodes)
    ratios = [
        r.disk_free / r.disk_free_limit for r in readings if r.disk_free is not None and r.disk_free_limit
    ]
    if not ratios:
        return Assessment(None, None, nodes)
    low = min(ratios)
    alarm = any(r.disk_free_alarm for r in readings)
    return Assessment(alarm or low <= condition.disk_margin, low, nodes)


# --- the watchdog's decision ------------------------------------------------------------------


@dataclass(frozen=True)
class WatchState:
    """What the store remembers of one (instance, alarm type) between polls."""

    holding_since: float | None = None  # when the condition was first seen holding, unbroken
    raised_at: float | None = None  # when the watchdog last raised an alarm for this episode


class WatchVerdict(StrEnum):
    CLEAR = "clear"  # the condition does not hold: the episode (if any) ends
    UNKNOWN = "unknown"  # no figures: keep what is known
    HOLDING = "holding"  # holds, not yet long enough (or CloudAMQP alarmed meanwhile)
    RAISE = "raise"  # holds long enough with no CloudAMQP alarm: raise one of ours


@dataclass(frozen=True)
class Watch:
    verdict: WatchVerdict
    state: WatchState


def watch(
    assessment: Assessment,
    state: WatchState,
    *,
    time_threshold: float,
    alarmed_since: bool,
    busy: bool,
    now: float,
) -> Watch:
    """The watchdog's step for one condition. It raises once the condition has held for
    ``time_threshold`` seconds with no CloudAMQP alarm of that type for the instance meanwhile
    (``alarmed_since``: one arrived since ``holding_since``, so the ordinary path has it), and
    again every ``time_threshold`` while it keeps holding — as CloudAMQP's reminders do —
    except while an upgrade of that scope cools down, runs or awaits approval (``busy``):
    such an alarm could only be skipped."""
    if assessment.holds is None:
        return Watch(WatchVerdict.UNKNOWN, state)
    if not assessment.holds:
        return Watch(WatchVerdict.CLEAR, WatchState())
    since = state.holding_since if state.holding_since is not None else now
    held = WatchState(since, state.raised_at)
    if alarmed_since:
        # CloudAMQP's alarm is being handled; count afresh from now.
        return Watch(WatchVerdict.HOLDING, WatchState(now, None))
    last = state.raised_at if state.raised_at is not None else since
    if not busy and now - last >= time_threshold:
        return Watch(WatchVerdict.RAISE, WatchState(since, now))
    return Watch(WatchVerdict.HOLDING, held)


def watchdog_event_id(instance_id: str, alarm_type: str, holding_since: float, raised_at: float) -> str:
    """The event id of a watchdog alarm: the same raise always gives the same id, so a poller
    that dies after publishing and before remembering cannot make a second event of it."""
    digest = hashlib.sha256(f"{instance_id}/{alarm_type}/{holding_since!r}/{raised_at!r}".encode())
    return "watchdog-" + digest.hexdigest()[:24]


def watchdog_alarm(
    instance_id: str, condition: Condition, assessment: Assessment, triggered_at: str
) -> dict[str, Any]:
    """The body of a watchdog alarm: CloudAMQP's shape, marked ``source: watchdog``, with the
    figures that made it."""
    value = assessment.value
    if condition.alarm_type == "memory" and value is not None:
        value = round(value, 1)
    return {
        "alarm_type": condition.alarm_type,
        "value": value,
        "instance_id": instance_id,
        "triggered_at": triggered_at,
        "source": "watchdog",
        "nodes": list(assessment.nodes),
    }


# --- downgrade advice ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietWindow:
    """Usage since the later of our last upgrade of the instance and its last alarm."""

    started_at: float
    peak_mem_used: int  # the high-water mark of mem_used over every node and sample
    mem_limit: int  # the mem_limit at the peak's plan (the current plan's)
    samples: int


@dataclass(frozen=True)
class Advice:
    instance_id: str
    from_plan: str
    to_plan: str
    evidence: dict[str, Any]


def downgrade_advice(
    instance_id: str,
    plan: str,
    ladder: Ladder,
    window: QuietWindow | None,
    *,
    quiet_window: float,
    fraction: float,
    step: float,
    now: float,
) -> Advice | None:
    """Advice to move ``instance_id`` from ``plan`` (where our last upgrade put it) one step
    down, or None. The plan below is assumed to have ``1 / step`` of this plan's memory (the
    ladder doubles memory per step by default, ``PLAN_MEMORY_STEP``): advice when the memory
    high-water mark over a quiet window of ``quiet_window`` seconds with no alarm stayed below
    ``fraction`` of that smaller capacity."""
    current = parse_plan(plan)
    if window is None or current is None or window.samples == 0 or window.mem_limit <= 0:
        return None
    lower = ladder.step_down(current)
    if lower is None:
        return None
    if now - window.started_at < quiet_window:
        return None
    lower_capacity = window.mem_limit / step
    if window.peak_mem_used >= fraction * lower_capacity:
        return None
    evidence = {
        "quiet_since": window.started_at,
        "quiet_seconds": round(now - window.started_at, 1),
        "samples": window.samples,
        "peak_mem_used": window.peak_mem_used,
        "mem_limit": window.mem_limit,
        "lower_plan_mem_limit_assumed": round(lower_capacity),
        "peak_of_lower_plan": round(window.peak_mem_used / lower_capacity, 3),
        "fraction": fraction,
        "plan_memory_step": step,
    }
    return Advice(instance_id, plan, str(lower), evidence)


def advice_id(instance_id: str, upgrade_action_id: str) -> str:
    """One advice per upgrade of ours: the same upgrade never advises twice."""
    return "advice-" + hashlib.sha256(f"{instance_id}/{upgrade_action_id}".encode()).hexdigest()[:24]


def peak(readings: Iterable[NodeReading]) -> tuple[int, int] | None:
    """(highest mem_used, its node's mem_limit) of one poll, or None without figures."""
    best: tuple[int, int] | None = None
    for r in readings:
        if r.mem_used is None or not r.mem_limit:
            continue
        if best is None or r.mem_used > best[0]:
            best = (r.mem_used, r.mem_limit)
    return best
