"""How long the store keeps each kind of record, and what it keeps whatever its age: the rules
of pruning as pure functions, for ``shared.store.retention`` (the statements, whose SQL is
generated from the same sets) and ``worker.retention`` (the job).

Each kind has a limit in days (``RETENTION_*_DAYS``; 0 keeps it for ever). A row past its
limit is pruned unless something still needs it:

- an event whose action is unfinished (a pending approval, an upgrade holding its claim or
  waiting to retry, a plan change CloudAMQP is still applying): the approval reads the
  alarm's body, the plan change's confirmation quotes it;
- an incident that is open, or that such an action belongs to; an incident whose events are
  pruned keeps a copy of its first and last event and its count;
- an action that is unfinished (its approval row goes with it, never before);
- a notification not yet published, or one an endpoint still has to receive (queued,
  retrying, or parked after its last attempt);
- each instance's latest upgrade in the audit trail (the plan the console shows comes from it).

Pruning goes in small batches, each sized to hold the store for about ``Pace.budget`` seconds,
with a pause after each: the alarms' first steps, which need the same store, never wait long.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.statuses import DONE_STATUSES, ActionStatus

DAY = 86400.0


class Kind(StrEnum):
    """The kinds of record with a limit (the ``kind`` label of the retention metrics)."""

    EVENTS = "events"
    NOTIFICATIONS = "notifications"  # the outbox rows and their delivery records
    INCIDENTS = "incidents"  # resolved ones
    ACTIONS = "actions"  # with their approvals
    AUDIT = "audit"


# The order a run prunes them in: events first (an incident's copies of its first and last
# event are taken as its events go), incidents after them.
ORDER = (Kind.EVENTS, Kind.NOTIFICATIONS, Kind.INCIDENTS, Kind.ACTIONS, Kind.AUDIT)

# Delivery records of an endpoint that will receive nothing more: it has the notification,
# or it answered 410 Gone (``notify_endpoints``). Queued, retrying and parked are not final.
FINAL_DELIVERIES = frozenset({"delivered", "disabled"})
# Actions whose work is not done: what their rows (and events, and approvals) are kept for.
UNFINISHED = frozenset(ActionStatus) - DONE_STATUSES


@dataclass(frozen=True)
class Limits:
    """Days each kind is kept (0: for ever); actions and the audit trail share one."""

    events: float = 30.0
    notifications: float = 30.0
    incidents: float = 365.0
    audit: float = 730.0

    def days(self, kind: Kind) -> float:
        if kind is Kind.ACTIONS:
            return self.audit
        return float(getattr(self, kind.value))


def cutoffs(limits: Limits, now: float) -> dict[Kind, float]:
    """For each kind with a limit, the time before which its rows may go (kinds kept for
    ever are absent), in ``ORDER``."""
    return {kind: now - limits.days(kind) * DAY for kind in ORDER if limits.days(kind) > 0}


def action_prunable(status: str) -> bool:
    """May an action row in this status go once it is past its limit?"""
    return status in DONE_STATUSES


def notification_prunable(published: bool, deliveries: list[str]) -> bool:
    """May a notification past its limit go: published, and every endpoint it went to has it
    (or will take nothing more)?"""
    return published and all(status in FINAL_DELIVERIES for status in deliveries)


# --- an incident's first and last event ------------------------------------------------------


def event_copy(row: dict[str, Any]) -> str:
    """The copy an incident keeps of an event that goes (the event's row, as JSON text)."""
    keys = ("event_id", "received_at", "recorded_at", "instance_id", "alarm_type", "incident_change", "body")
    return json.dumps({key: row[key] for key in keys}, ensure_ascii=False)


def _order(row: dict[str, Any]) -> tuple[float, float, str]:
    return float(row["recorded_at"]), float(row["received_at"]), str(row["event_id"])


def first_and_last(
    first_copy: dict[str, Any] | None,
    last_copy: dict[str, Any] | None,
    oldest_kept: dict[str, Any] | None,
    newest_kept: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """An incident's first and last event: its copy of the first where its first event went
    (a kept one is a later event then), and the newer of its newest kept event and its copy
    of the last."""
    first = first_copy if first_copy is not None else oldest_kept
    candidates = [row for row in (last_copy, newest_kept) if row is not None]
    return first, max(candidates, key=_order) if candidates else None


def ends_going(rows: list[dict[str, Any]]) -> dict[str, tuple[str | None, str | None]]:
    """The copies an incident keeps once a batch's events are gone: ``rows`` are the events
    going that are the earliest (``is_first``) or the latest (``is_last``) of their incident's
    kept events, each with the incident's copies so far (``first_copy``, ``last_copy``, JSON
    text or None). Per incident, its copies afterwards: the first, once taken, is the first for
    good (every later event is newer); the last is the newer of the copy and the event going
    (an older event can go after a newer one: one its unfinished action kept)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for row in sorted(rows, key=_order):
        incident = str(row["incident_id"])
        first, last = out.get(incident, (row["first_copy"], row["last_copy"]))
        if row["is_first"] and first is None:
            first = event_copy(row)
        if row["is_last"] and (last is None or _order(json.loads(last)) < _order(row)):
            last = event_copy(row)
        out[incident] = first, last
    return out


# --- pacing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pace:
    """How pruning shares the store: each batch sized to take about ``budget`` seconds (from
    ``first`` rows, between ``least`` and ``most``), then a pause of ``rest`` times what it
    took, at least ``least_pause``: the store is pruning at most a fifth of the time."""

    budget: float = 0.002
    first: int = 100
    least: int = 10
    most: int = 5000
    rest: float = 4.0
    least_pause: float = 0.02


def next_size(size: int, took: float, pace: Pace) -> int:
    """The next batch's size, after one of ``size`` took ``took`` seconds: towards the budget,
    at most halved or doubled at a time."""
    wanted = size * pace.budget / max(took, 1e-6)
    bounded = min(max(wanted, size / 2), size * 2.0)
    return int(min(max(bounded, pace.least), pace.most))


def pause_after(took: float, pace: Pace) -> float:
    return max(pace.least_pause, pace.rest * took)


# A run of the slot stops by this share of the interval (and the next slot goes on), so two
# workers never prune at once.
RUN_SHARE = 0.8


def run_deadline(started: float, interval: float) -> float:
    return started + RUN_SHARE * interval
