"""An alarm batch's first step as a pure fold: ``plan_batch(snapshot, arrivals, now, context)``.

The store reads once what the step needs (``Unit.load``: which events are new, what the
others already have, the open incidents of the batch's keys, the decided contents, the claim
rows of its scopes — locked —, the running pauses and the plan changes under way); this module
folds the alarms over that ``Snapshot`` in delivery order, the snapshot evolving in memory (a
claim granted to the first alarm is held for the second; an incident opened by the first is
grouped into by the second), and returns one plain ``Step`` per alarm and the ``Writes`` the
store makes once (``Unit.apply``). No I/O here, no clock: time and fresh ids are arguments.

What each alarm goes through, in order: its event and incident change (new events only), what
its earlier delivery left (a plan change to follow, an approval, a final word), the decision
(``shared.policy.decide``: duplicates, pauses), a plan change of the instance still under way,
then the claim (``shared.claims.take_claim``) and what the claim allows: a dry run, a request
for approval, or the upgrade call (after the commit, ``worker.upgrade_call``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypedDict

from shared.alarm import Alarm, iso
from shared.catalogue import Catalogue
from shared.claims import ClaimAsk, ClaimStatus, ClaimVerdict, take_claim
from shared.controls import effective_pause
from shared.policy import (
    DecisionState,
    Policy,
    Skip,
    SkipReason,
    Upgrade,
    cooling_down,
    decide,
    upgrade_scope,
)
from shared.pricing import PlanChange
from shared.records import AUTOPILOT, ActionRecord, ApprovalRequest, Asked, AuditEntry
from shared.settings import Settings
from shared.snapshot import Arrival, EventState, Snapshot, Writes, record_arrival
from shared.statuses import HANDED_OFF, RECONFIGURING, ActionStatus, is_decided, is_done


@dataclass(frozen=True)
class Context:
    """What the fold decides with, besides the snapshot and the time."""

    settings: Settings
    policy: Policy
    dry_run: bool
    worker_id: str
    new_id: Callable[[], str]  # a fresh id (incident ids, claim owner tokens)
    # What CloudAMQP sells (``worker.catalogue``); None: nothing is checked (no API key).
    catalogue: Catalogue | None = None

    def claim_scope(self, scope: str) -> str:
        """Dry runs have their own claims, so that going live does not inherit a cooldown."""
        return f"dry-run:{scope}" if self.dry_run else scope

    def scope_of(self, arrival: Arrival) -> str | None:
        """The claim an upgrade decided for this alarm would ask for."""
        if arrival.instance_id is None:
            return None
        return self.claim_scope(upgrade_scope(arrival.instance_id, arrival.alarm.alarm_type))


# --- the steps: what became of each alarm, as plain values -----------------------------------


@dataclass(frozen=True, kw_only=True)
class Step:
    """One alarm's first step. ``change``: the incident change its event made (None when
    the event was recorded before); ``action``: the index in ``Writes.actions`` of the row
    whose write decides what is said (False: another delivery had the final word)."""

    arrival: Arrival
    incident_id: str | None
    change: str | None = None
    instance_id: str | None = None
    plan: str | None = None
    action: int | None = None
    priced: PlanChange | None = None  # the plan change decided, with its prices (where known)
    kind: str | None = None  # the remedy decided, where not an upgrade ("resize_disk")
    extra_disk: int | None = None  # a disk resize's fixed target (GB), where its rule has one
    asked: Asked | None = None  # a change an earlier delivery asked for, whose answer never came

    @property
    def alarm(self) -> Alarm:
        return self.arrival.alarm


@dataclass(frozen=True, kw_only=True)
class Skipped(Step):
    skip: Skip


@dataclass(frozen=True, kw_only=True)
class AlreadyDone(Step):
    detail: str


@dataclass(frozen=True, kw_only=True)
class FollowAgain(Step):
    """CloudAMQP took this alarm's plan change (or disk resize); its check may have been lost
    with the delivery: one more is sent (a second one is harmless)."""

    awaiting_plan: str
    awaiting_disk: int | None = None


@dataclass(frozen=True, kw_only=True)
class ApprovalAgain(Step):
    """This alarm's upgrade awaits (or just got) an approval; its periodic look is sent again."""

    deadline: float


@dataclass(frozen=True, kw_only=True)
class Deferred(Step):
    scope: str
    lease_left: float
    verdict: ClaimVerdict


@dataclass(frozen=True, kw_only=True)
class DryRun(Step):
    upgrade: Upgrade


@dataclass(frozen=True, kw_only=True)
class AwaitingApproval(Step):
    upgrade: Upgrade
    deadline: float


@dataclass(frozen=True, kw_only=True)
class Claimed(Step):
    """The claim is this worker's: the upgrade call follows the commit."""

    upgrade: Upgrade
    scope: str
    owner: str


# --- the fold ------------------------------------------------------------------------------


def plan_batch(
    snapshot: Snapshot, arrivals: Sequence[Arrival], now: float, context: Context
) -> tuple[list[Step], Writes]:
    """Each alarm's step, in delivery order, and what to write; ``snapshot`` is folded over."""
    writes = Writes()
    steps = [_one(snapshot, writes, arrival, now, context) for arrival in arrivals]
    return steps, writes


def _one(snapshot: Snapshot, writes: Writes, arrival: Arrival, now: float, context: Context) -> Step:
    new, state = record_arrival(snapshot, writes, arrival, now, context.new_id)
    if new:
        step = Step(
            arrival=arrival,
            incident_id=state.incident_id,
            change=state.incident_change,
            instance_id=arrival.instance_id,
        )
        return _decide(snapshot, writes, step, now, context)
    step = Step(
        arrival=arrival, incident_id=state.incident_id, instance_id=arrival.instance_id, asked=state.asked
    )
    earlier = _earlier(state, step)
    return earlier if earlier is not None else _decide(snapshot, writes, step, now, context)


def _earlier(state: EventState, step: Step) -> Step | None:
    """What an earlier delivery of this event left to do, if that is all there is to do."""
    fields = _fields(step)
    replayed, done = step.alarm.replayed, is_done(state.status, state.reason)
    changing = state.plan is not None or state.extra_disk is not None
    if state.reason == RECONFIGURING and changing and step.instance_id and not replayed:
        return FollowAgain(**fields, awaiting_plan=state.plan or "", awaiting_disk=state.extra_disk)
    if state.status in HANDED_OFF and state.approval_deadline is not None:
        # (Even for a replay: deciding afresh would only meet its own waiting claim.)
        return ApprovalAgain(**fields, deadline=state.approval_deadline)
    if done and not replayed:
        return AlreadyDone(**fields, detail=f"its action is already {state.status}")
    return None


def _decide(snapshot: Snapshot, writes: Writes, step: Step, now: float, context: Context) -> Step:
    alarm = step.alarm
    others = snapshot.decided.get(alarm.event_key, set()) - {alarm.event_id}
    instance = step.instance_id or ""
    state = DecisionState(
        duplicate=not alarm.replayed and bool(others),
        current_plan=snapshot.plans.get(instance),
        increased=snapshot.increases.get(instance, 0.0),
    )
    settings, policy, catalogue = context.settings, context.policy, context.catalogue
    decision = decide(alarm, state, settings, now, policy, catalogue)
    if isinstance(decision, Upgrade) and decision.disk is not None:
        step = replace(step, kind=decision.kind, extra_disk=decision.disk.extra_disk)
    if isinstance(decision, Upgrade):
        pause = effective_pause(snapshot.pauses, decision.instance_id, now)
        if pause is not None:
            decision = decide(alarm, replace(state, pause=pause), settings, now, policy, catalogue)
    if isinstance(decision, Upgrade) and step.asked is None:
        # (An alarm whose own change went unanswered is the one to follow it up.)
        changing = snapshot.reconfiguring.get(decision.instance_id)
        if changing is not None:
            detail = f"CloudAMQP is still applying the change to {changing}"
            decision = Skip(SkipReason.RECONFIGURING, detail)
    if isinstance(decision, Skip):
        return _skip(snapshot, writes, step, decision, now)
    plan = decision.plan if decision.disk is None else None  # a resize changes no plan
    if step.asked is not None:  # the change asked for before stays the change to make
        plan = step.asked.plan if decision.disk is None else None
        step = replace(step, extra_disk=step.asked.extra_disk_to or step.extra_disk)
    step = replace(step, instance_id=decision.instance_id, plan=plan, priced=decision.change)
    return _claim(snapshot, writes, step, decision, now, context)


def _skip(snapshot: Snapshot, writes: Writes, step: Step, skip: Skip, now: float) -> Skipped:
    if skip.change is not None:  # a price skip: which change it refused, and at what price
        step = replace(step, plan=skip.change.to_plan, priced=skip.change)
    record = _action(step, ActionStatus.SKIPPED, now, reason=skip.reason.value, detail=skip.detail)
    return Skipped(**_fields(step), action=_write(snapshot, writes, record), skip=skip)


def _claim(
    snapshot: Snapshot, writes: Writes, step: Step, upgrade: Upgrade, now: float, context: Context
) -> Step:
    alarm, settings = step.alarm, context.settings
    scope = context.claim_scope(upgrade.scope)
    if scope not in snapshot.scopes:
        raise AssertionError(f"the claim {scope!r} was not read for this batch")
    owner = f"{context.worker_id}/{alarm.event_id}/{context.new_id()[:8]}"
    ask = ClaimAsk(
        scope, upgrade.instance_id, owner, now, settings.claim_lease_seconds, upgrade.cooldown_seconds
    )
    existing = snapshot.claims.get(scope)
    verdict, row = take_claim(existing, ask)
    if row is not None:
        snapshot.claims[scope] = writes.claims[scope] = row
    if verdict is ClaimVerdict.COOLING_DOWN:
        claimed_at, cools = (existing.claimed_at, existing.cooldown_until) if existing else (now, now)
        skip = cooling_down(upgrade, claimed_at, cools, now, settings.disk_resize_interval_seconds)
        return _skip(snapshot, writes, step, skip, now)
    if verdict is ClaimVerdict.AWAITING_APPROVAL:
        until = iso(existing.lease_until) if existing else "?"
        skip = Skip(SkipReason.AWAITING_APPROVAL, f"an upgrade of it awaits approval (until {until})")
        return _skip(snapshot, writes, step, skip, now)
    if verdict is not ClaimVerdict.GRANTED:
        current = row or existing
        lease_left = (current.lease_until - now) if current else 0.0
        return Deferred(**_fields(step), scope=scope, lease_left=lease_left, verdict=verdict)
    assert row is not None
    if context.dry_run:
        snapshot.claims[scope] = writes.claims[scope] = replace(row, status=ClaimStatus.DONE)
        if step.priced is not None:
            step = replace(step, plan=step.priced.to_plan)
        record = _action(step, ActionStatus.DRY_RUN, now, detail=_with_price(upgrade.reason, step.priced))
        return DryRun(**_fields(step), action=_write(snapshot, writes, record), upgrade=upgrade)
    if upgrade.approve:
        return _ask_approval(snapshot, writes, step, upgrade, row.owner, scope, now)
    _write(snapshot, writes, _action(step, ActionStatus.IN_PROGRESS, now, attempts=alarm.attempts + 1))
    return Claimed(**_fields(step), upgrade=upgrade, scope=scope, owner=owner)


def _ask_approval(
    snapshot: Snapshot, writes: Writes, step: Step, upgrade: Upgrade, owner: str, scope: str, now: float
) -> AwaitingApproval:
    """Hold the claim for a person's answer (until the rule's ``approve_timeout``) and say what
    the upgrade would do."""
    deadline = now + upgrade.approve_timeout
    action_id = step.alarm.event_id
    row = snapshot.claims[scope]
    snapshot.claims[scope] = writes.claims[scope] = replace(
        row, status=ClaimStatus.AWAITING, lease_until=deadline
    )
    # A person approves a plan and its price: where the change was priced, the approval
    # names the plan (``next`` resolved), and the call makes that change or none.
    change = step.priced
    plan = change.to_plan if change is not None else upgrade.plan
    if upgrade.disk is None:  # a disk resize's action row names no plan
        step = replace(step, plan=plan)
    writes.approvals.append(
        ApprovalRequest(
            action_id, scope, owner, upgrade.instance_id, plan, upgrade.reason, upgrade.rule,
            upgrade.cooldown_seconds, now, deadline,
        )
    )  # fmt: skip
    said = _with_price(upgrade.reason, change) + (f"; {upgrade.budget_note}" if upgrade.budget_note else "")
    detail = f"{said}; awaits approval until {iso(deadline)} (POST /actions/{action_id}/approve)"
    _write(snapshot, writes, _action(step, ActionStatus.AWAITING_APPROVAL, now, detail=detail))
    snapshot.events[action_id].approval_deadline = deadline
    writes.audits.append(
        AuditEntry(
            f"approval.requested:{owner}",
            now,
            AUTOPILOT,
            "automatic",
            "approval.requested",
            upgrade.instance_id,
            {
                "action_id": action_id,
                "plan": plan,
                "rule": upgrade.rule,
                "deadline": iso(deadline),
                "price": change.as_dict() if change is not None else None,
                "over_budget": upgrade.budget_note,
            },
        )
    )
    return AwaitingApproval(**_fields(step), upgrade=upgrade, deadline=deadline)


def _with_price(reason: str, change: PlanChange | None) -> str:
    """An upgrade's reason, and what it would cost where that is known."""
    return reason if change is None else f"{reason}; {change.describe()}"


class _Fields(TypedDict):
    arrival: Arrival
    incident_id: str | None
    change: str | None
    instance_id: str | None
    plan: str | None
    priced: PlanChange | None
    kind: str | None
    extra_disk: int | None
    asked: Asked | None


def _fields(step: Step) -> _Fields:
    return {
        "arrival": step.arrival,
        "incident_id": step.incident_id,
        "change": step.change,
        "instance_id": step.instance_id,
        "plan": step.plan,
        "priced": step.priced,
        "kind": step.kind,
        "extra_disk": step.extra_disk,
        "asked": step.asked,
    }


def _action(
    step: Step,
    status: ActionStatus,
    now: float,
    *,
    attempts: int | None = None,
    reason: str | None = None,
    detail: str | None = None,
) -> ActionRecord:
    priced = step.priced
    return ActionRecord(
        step.alarm,
        status,
        now,
        step.incident_id,
        step.instance_id,
        reason=reason,
        detail=detail,
        plan=step.plan,
        attempts=step.alarm.attempts if attempts is None else attempts,
        from_plan=priced.from_plan if priced is not None else None,
        from_price=priced.from_price if priced is not None else None,
        to_price=priced.to_price if priced is not None else None,
        kind=step.kind,
        extra_disk_to=step.extra_disk,
    )


def _write(snapshot: Snapshot, writes: Writes, record: ActionRecord) -> int:
    """Queue the event's action row; the event (and its content, when the row is a decision
    that stands) as the rest of the batch now sees it."""
    writes.actions.append(record)
    state = snapshot.events[record.alarm.event_id]
    state.status, state.reason = record.status.value, record.reason
    state.plan = record.plan if record.plan is not None else state.plan
    state.extra_disk = record.extra_disk_to if record.extra_disk_to is not None else state.extra_disk
    if is_decided(record.status, record.reason):
        snapshot.decided.setdefault(record.alarm.event_key, set()).add(record.alarm.event_id)
    return len(writes.actions) - 1
