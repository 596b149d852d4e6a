"""What an alarm batch's first step reads and writes, as plain values.

The store reads a ``Snapshot`` once (``Unit.load``), the worker folds the batch's alarms over
it in memory (``worker.first_step.plan_batch``, pure), and the store writes the ``Writes``
the fold produced once (``Unit.apply``): one read, a pure fold, one write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.alarm import Alarm
from shared.claims import ClaimRow
from shared.controls import Pause
from shared.incidents import IncidentChange, IncidentPlan
from shared.notifications import Notice, incident_notice
from shared.records import ActionRecord, ApprovalRequest, AuditEntry


@dataclass(frozen=True)
class Arrival:
    """An alarm to record: the instance it is about and what it does to incidents."""

    alarm: Alarm
    instance_id: str | None
    plan: IncidentPlan


@dataclass
class EventState:
    """What the store holds about one event: its incident change and its action row."""

    incident_id: str | None = None
    incident_change: str | None = None
    status: str | None = None  # its action row's, where it has one
    reason: str | None = None
    plan: str | None = None
    approval_deadline: float | None = None
    extra_disk: int | None = None  # a disk resize's extra disk asked for (GB)


@dataclass
class Snapshot:
    """The store as a batch's first step needs it. ``new``: the events this batch recorded
    first (every other event of the batch is in ``events`` with what it had)."""

    new: set[str] = field(default_factory=set)
    events: dict[str, EventState] = field(default_factory=dict)
    open_incidents: dict[str, str] = field(default_factory=dict)  # incident key -> open incident id
    decided: dict[str, set[str]] = field(default_factory=dict)  # content key -> events decided on it
    claims: dict[str, ClaimRow] = field(default_factory=dict)  # scope -> row (absent: no row)
    scopes: set[str] = field(default_factory=set)  # the scopes whose rows were read (and locked)
    pauses: list[Pause] = field(default_factory=list)  # running now
    reconfiguring: dict[str, str] = field(default_factory=dict)  # instance -> change being applied


@dataclass
class NewIncident:
    incident_id: str
    key: str
    instance_id: str | None
    alarm_type: str | None
    count: int
    last_value: Any
    resolved: bool = False


@dataclass
class Grouped:
    """Alarms grouped into an incident that was open before the batch."""

    count: int = 0
    last_value: Any = None


@dataclass
class Writes:
    """The difference a batch's first step makes, written in a handful of statements."""

    event_incidents: list[tuple[str, str | None, str]] = field(
        default_factory=list
    )  # event, incident, change
    new_incidents: dict[str, NewIncident] = field(default_factory=dict)  # by incident id, in opening order
    grouped: dict[str, Grouped] = field(default_factory=dict)  # existing incident id -> its alarms
    resolved: list[str] = field(default_factory=list)  # existing incidents resolved
    notices: list[Notice] = field(default_factory=list)
    actions: list[ActionRecord] = field(default_factory=list)  # in order
    claims: dict[str, ClaimRow] = field(default_factory=dict)  # scope -> the row as it is to be
    approvals: list[ApprovalRequest] = field(default_factory=list)
    audits: list[AuditEntry] = field(default_factory=list)


def record_arrival(
    snapshot: Snapshot, writes: Writes, arrival: Arrival, now: float, new_id: Callable[[], str]
) -> tuple[bool, EventState]:
    """Whether this is its event's first delivery (recorded by this batch's ``load``, not yet
    taken by the fold) — then with its incident change (``record_incident``) — and what the
    store, as the batch has left it so far, holds about the event."""
    event_id = arrival.alarm.event_id
    if event_id in snapshot.new and event_id not in snapshot.events:
        incident_id, change = record_incident(snapshot, writes, arrival, now, new_id)
        snapshot.events[event_id] = EventState(incident_id, change)
        return True, snapshot.events[event_id]
    return False, snapshot.events[event_id]


def record_incident(
    snapshot: Snapshot, writes: Writes, arrival: Arrival, now: float, new_id: Callable[[], str]
) -> tuple[str | None, str]:
    """A new event's incident change (Spike's rules, ``shared.incidents``) against the
    incidents as the batch has left them so far: the incident and what became of it
    (opened, grouped, resolved, none, ungroupable), its writes and its notification."""
    plan, alarm = arrival.plan, arrival.alarm
    incident_id: str | None = None
    change = plan.change.value
    if plan.change is IncidentChange.UPSERT and plan.key is not None:
        value = alarm.body.get("value")
        incident_id = snapshot.open_incidents.get(plan.key)
        if incident_id is None:
            incident_id = new_id()
            writes.new_incidents[incident_id] = NewIncident(
                incident_id, plan.key, arrival.instance_id, alarm.alarm_type, 1, value
            )
            snapshot.open_incidents[plan.key] = incident_id
            change = "opened"
        else:
            _group(writes, incident_id, value)
            change = "grouped"
    elif plan.change is IncidentChange.RESOLVE and plan.key is not None:
        incident_id = snapshot.open_incidents.pop(plan.key, None)
        if incident_id is None:
            change = "none"
        else:
            change = "resolved"
            if incident_id in writes.new_incidents:
                writes.new_incidents[incident_id].resolved = True
            else:
                writes.resolved.append(incident_id)
    writes.event_incidents.append((alarm.event_id, incident_id, change))
    notice = incident_notice(change, incident_id, plan.key, alarm, arrival.instance_id, now)
    if notice is not None:
        writes.notices.append(notice)
    return incident_id, change


def _group(writes: Writes, incident_id: str, value: object) -> None:
    target: NewIncident | Grouped
    target = writes.new_incidents.get(incident_id) or writes.grouped.setdefault(incident_id, Grouped())
    target.count += 1
    if value is not None:
        target.last_value = value
