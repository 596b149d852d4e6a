"""What an alarm batch's first step reads and writes, as plain values.

The store reads a ``Snapshot`` once (``Unit.load``), the worker folds the batch's alarms over
it in memory (``worker.first_step.plan_batch``, pure), and the store writes the ``Writes``
the fold produced once (``Unit.apply``): one read, a pure fold, one write. The incident fold
(``record_incident``) is here, as both the first step and ``Unit.record_events`` use it; so is
the resolve of a flapping incident whose quiet period passed (``settle_due``), which the
quiet-resolve sweep uses too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shared import flapping
from shared.alarm import Alarm
from shared.claims import ClaimRow
from shared.controls import Pause
from shared.flapping import OFF, FlapMark, FlapRule, Latest, Move, Transition
from shared.incidents import IncidentChange, IncidentPlan
from shared.notifications import Notice, incident_notice, quiet_resolve_notice
from shared.records import ActionRecord, ApprovalRequest, Asked, AuditEntry
from shared.statuses import IncidentStatus


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
    asked: Asked | None = None  # a change its call asked for and never heard the answer to


@dataclass
class KeyState:
    """One incident key as the fold sees it: its latest incident (open or not) — with its
    flap marking and pending resolve — and, with flap detection on, its recent transitions."""

    incident_id: str | None = None
    open: bool = False
    instance_id: str | None = None
    alarm_type: str | None = None
    mark: FlapMark | None = None  # set once the incident has flapped (an episode began)
    resolves_at: float | None = None  # a flapping incident's pending resolve
    transitions: list[Transition] = field(default_factory=list)

    def latest(self) -> Latest | None:
        if self.incident_id is None:
            return None
        return Latest(self.open, self.open and self.mark is not None, self.resolves_at)


@dataclass
class Snapshot:
    """The store as a batch's first step needs it. ``new``: the events this batch recorded
    first (every other event of the batch is in ``events`` with what it had); ``keys``: the
    batch's incident keys (a key the store holds nothing of is absent); ``flap``: the rule
    they were read for."""

    new: set[str] = field(default_factory=set)
    events: dict[str, EventState] = field(default_factory=dict)
    keys: dict[str, KeyState] = field(default_factory=dict)
    decided: dict[str, set[str]] = field(default_factory=dict)  # content key -> events decided on it
    claims: dict[str, ClaimRow] = field(default_factory=dict)  # scope -> row (absent: no row)
    scopes: set[str] = field(default_factory=set)  # the scopes whose rows were read (and locked)
    pauses: list[Pause] = field(default_factory=list)  # running now
    reconfiguring: dict[str, str] = field(default_factory=dict)  # instance -> change being applied
    plans: dict[str, str] = field(default_factory=dict)  # instance -> its plan as last read
    # instance -> what the autopilot added to its monthly bill within 30 days (read only
    # where MAX_MONTHLY_INCREASE is set)
    increases: dict[str, float] = field(default_factory=dict)
    flap: FlapRule = OFF


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


@dataclass(frozen=True)
class FlapWrite:
    """A flapping incident's status and flap columns as they are to be after the batch."""

    status: IncidentStatus
    resolved_at: float | None
    mark: FlapMark
    resolves_at: float | None = None
    last_seen: float | None = None  # None: as it is


@dataclass(frozen=True)
class KeyRow:
    """What the store keeps of an incident key for the flap rule: its latest incident and
    its recent transitions."""

    incident_id: str
    transitions: list[Transition]


@dataclass
class Writes:
    """The difference a batch's first step makes, written in a handful of statements."""

    event_incidents: list[tuple[str, str | None, str]] = field(
        default_factory=list
    )  # event, incident, change
    new_incidents: dict[str, NewIncident] = field(default_factory=dict)  # by incident id, in opening order
    grouped: dict[str, Grouped] = field(default_factory=dict)  # existing incident id -> its alarms
    resolved: list[str] = field(default_factory=list)  # existing incidents resolved
    flaps: dict[str, FlapWrite] = field(default_factory=dict)  # incident id -> (written last)
    keys: dict[str, KeyRow] = field(default_factory=dict)  # incident key -> its row (flap rule on)
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
    """A new event's incident change against the incidents as the batch has left them so far
    — Spike's rules (``shared.incidents``), and the flap rule (``shared.flapping``) on top —:
    the incident and what became of it (opened, grouped, resolved, reopened, refired,
    resolving, none, ungroupable), its writes and its notification."""
    plan, alarm = arrival.plan, arrival.alarm
    if plan.key is None or plan.change not in (IncidentChange.UPSERT, IncidentChange.RESOLVE):
        writes.event_incidents.append((alarm.event_id, None, plan.change.value))
        return None, plan.change.value
    rule = snapshot.flap
    state = snapshot.keys.setdefault(plan.key, KeyState())
    verdict = flapping.verdict(
        state.latest(), plan.change is IncidentChange.UPSERT, state.transitions, now, rule
    )
    if verdict.settle:
        _settle(state, plan.key, writes, now)
    if rule.on:
        state.transitions = flapping.remember(state.transitions, verdict.move, now, rule)
    incident_id = _MOVES[verdict.move](state, writes, _Turn(arrival, now, new_id, rule))
    if rule.on and state.incident_id is not None and verdict.move in flapping.OPENINGS | flapping.CLOSINGS:
        writes.keys[plan.key] = KeyRow(state.incident_id, list(state.transitions))
    writes.event_incidents.append((alarm.event_id, incident_id, verdict.move.value))
    return incident_id, verdict.move.value


def settle_due(snapshot: Snapshot, writes: Writes, now: float) -> list[str]:
    """Resolve every flapping incident of the snapshot whose quiet period has passed (the
    resolve nothing called off): the incidents resolved."""
    settled = []
    for key, state in sorted(snapshot.keys.items()):
        if flapping.due(state.latest(), now) and state.incident_id is not None:
            settled.append(state.incident_id)
            _settle(state, key, writes, now)
    return settled


# --- what each move does to the key's state and the writes ---------------------------------


@dataclass(frozen=True)
class _Turn:
    """One event's move: the arrival, the time, fresh ids and the rule."""

    arrival: Arrival
    now: float
    new_id: Callable[[], str]
    rule: FlapRule

    @property
    def alarm(self) -> Alarm:
        return self.arrival.alarm

    @property
    def key(self) -> str:
        assert self.arrival.plan.key is not None
        return self.arrival.plan.key

    def notice(self, change: str, incident_id: str, mark: FlapMark | None = None) -> Notice | None:
        return incident_notice(
            change, incident_id, self.key, self.alarm, self.arrival.instance_id, self.now, mark=mark
        )


MoveFn = Callable[[KeyState, Writes, _Turn], str | None]


def _opened(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    alarm, instance = turn.alarm, turn.arrival.instance_id
    incident_id = turn.new_id()
    writes.new_incidents[incident_id] = NewIncident(
        incident_id, turn.key, instance, alarm.alarm_type, 1, alarm.raw("value")
    )
    state.incident_id, state.open, state.mark, state.resolves_at = incident_id, True, None, None
    state.instance_id, state.alarm_type = instance, alarm.alarm_type
    _notice(writes, turn.notice("opened", incident_id))
    return incident_id


def _grouped(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    assert state.incident_id is not None
    _group(writes, state.incident_id, turn.alarm.raw("value"))
    return state.incident_id


def _resolved(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    incident_id = state.incident_id
    assert incident_id is not None
    state.open, state.resolves_at = False, None
    if state.mark is not None:  # an episode ended by a clear (flap detection turned off since)
        writes.flaps[incident_id] = FlapWrite(IncidentStatus.RESOLVED, turn.now, state.mark, None, turn.now)
    elif incident_id in writes.new_incidents:
        writes.new_incidents[incident_id].resolved = True
    else:
        writes.resolved.append(incident_id)
    _notice(writes, turn.notice("resolved", incident_id, state.mark))
    return incident_id


def _reopened(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    incident_id = state.incident_id
    assert incident_id is not None
    episodes = (state.mark.episodes if state.mark is not None else 0) + 1
    state.open, state.resolves_at = True, None
    rule = turn.rule
    state.mark = FlapMark(turn.now, len(state.transitions), rule.window, rule.quiet, episodes)
    _group(writes, incident_id, turn.alarm.raw("value"))
    writes.flaps[incident_id] = FlapWrite(IncidentStatus.OPEN, None, state.mark)
    _notice(writes, turn.notice("reopened", incident_id, state.mark))
    return incident_id


def _refired(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    incident_id, mark = state.incident_id, state.mark
    assert incident_id is not None and mark is not None
    state.resolves_at = None
    state.mark = replace(mark, transitions=len(state.transitions))
    _group(writes, incident_id, turn.alarm.raw("value"))
    writes.flaps[incident_id] = FlapWrite(IncidentStatus.OPEN, None, state.mark)
    return incident_id


def _resolving(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    incident_id, mark = state.incident_id, state.mark
    assert incident_id is not None and mark is not None
    state.resolves_at = turn.now + turn.rule.quiet
    state.mark = replace(mark, transitions=len(state.transitions))
    writes.flaps[incident_id] = FlapWrite(IncidentStatus.OPEN, None, state.mark, state.resolves_at, turn.now)
    return incident_id


def _none(state: KeyState, writes: Writes, turn: _Turn) -> str | None:
    return None


_MOVES: dict[Move, MoveFn] = {
    Move.OPENED: _opened,
    Move.GROUPED: _grouped,
    Move.RESOLVED: _resolved,
    Move.REOPENED: _reopened,
    Move.REFIRED: _refired,
    Move.RESOLVING: _resolving,
    Move.NONE: _none,
}


def _settle(state: KeyState, key: str, writes: Writes, now: float) -> None:
    """The pending resolve of a flapping incident, fallen due: resolved when it fell due."""
    incident_id, mark, at = state.incident_id, state.mark, state.resolves_at
    assert incident_id is not None and mark is not None and at is not None
    state.open, state.resolves_at = False, None
    writes.flaps[incident_id] = FlapWrite(IncidentStatus.RESOLVED, at, mark)
    _notice(writes, quiet_resolve_notice(incident_id, key, state.instance_id, state.alarm_type, at, mark))


def _notice(writes: Writes, notice: Notice | None) -> None:
    if notice is not None:
        writes.notices.append(notice)


def _group(writes: Writes, incident_id: str, value: object) -> None:
    target: NewIncident | Grouped
    target = writes.new_incidents.get(incident_id) or writes.grouped.setdefault(incident_id, Grouped())
    target.count += 1
    if value is not None:
        target.last_value = value
