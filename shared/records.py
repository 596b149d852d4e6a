"""What the worker and the operator's controls hand the store to write, as plain values: an
action row, an audit entry, an upgrade's end, an approval asked for and answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.alarm import Alarm
from shared.statuses import ActionStatus


@dataclass(frozen=True)
class ActionRecord:
    """One write of an event's action row."""

    alarm: Alarm
    status: ActionStatus
    now: float
    incident_id: str | None = None
    instance_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    plan: str | None = None
    attempts: int = 0
    from_plan: str | None = None  # the plan read before the upgrade, where it was
    verification: dict[str, Any] | None = None  # what the broker check saw (shared.verify)
    # The monthly prices of from_plan and plan, where the catalogue knows them.
    from_price: float | None = None
    to_price: float | None = None
    kind: str | None = None  # the remedy, where not an upgrade: "resize_disk" (shared.policy)
    extra_disk_from: int | None = None  # a disk resize's extra disk before and asked for (GB)
    extra_disk_to: int | None = None


AUTOPILOT = "autopilot"  # the actor of automatic entries in the audit trail


@dataclass(frozen=True)
class Asked:
    """A change an alarm's call asked CloudAMQP for and never heard the answer to (a timeout,
    a connection dropped, a worker stopped while it waited): it may have been made. A later
    attempt asks for this same change — never one worked out again from a plan that this
    change may itself have brought — and counts it as made where the instance shows it."""

    at: float  # when it was asked
    plan: str | None = None  # the plan asked for (a plan change)
    from_plan: str | None = None  # the plan read before it was asked
    extra_disk_from: int | None = None  # a disk resize's extra disk before, and asked for (GB)
    extra_disk_to: int | None = None


@dataclass(frozen=True)
class Asking:
    """A change written down just before it is asked of CloudAMQP (``Unit.ask``): the action
    it is for, what it asks, and the instance's plan as the call just read it (``None``: not
    read), kept as the plans a batch reads are."""

    action_id: str
    asked: Asked
    instance_id: str
    read_plan: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit trail: an operator's act, or an automatic one (an upgrade)."""

    audit_id: str
    at: float
    actor: str
    kind: str  # "operator" or "automatic"
    act: str  # e.g. "pause", "resume", "approve", "deny", "upgrade", "approval.requested"
    target: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class DiskMark:
    """A fact about an instance's extra disk, for its disk history: a resize the autopilot made
    (``autopilot``, when CloudAMQP accepted it), one it saw happen without it (``seen``), or the
    size first read (``read``, from and to alike)."""

    mark_id: str  # one per fact: a retried write keeps one
    instance_id: str
    at: float
    source: str  # "autopilot", "seen", "read"
    extra_disk_from: int | None
    extra_disk_to: int
    action_id: str | None = None


@dataclass(frozen=True)
class Finish:
    """An upgrade's end in the store: its claim completed (``succeeded``: the cooldown runs)
    or released by its owner, with the action's outcome and, for an upgrade, its audit entry;
    for a disk resize, what it learnt of the disk (``disk``)."""

    scope: str
    owner: str
    succeeded: bool
    record: ActionRecord | None = None
    audit: AuditEntry | None = None
    disk: tuple[DiskMark, ...] = ()


@dataclass(frozen=True)
class ApprovalRequest:
    action_id: str
    scope: str
    owner: str
    instance_id: str
    plan: str
    reason: str
    rule: str
    cooldown_seconds: float
    requested_at: float
    deadline: float


@dataclass(frozen=True)
class ApprovalDecision:
    action_id: str
    status: ActionStatus  # APPROVED or DENIED
    operator: str
    reason: str | None
    now: float
    lease: float  # the claim's lease once approved (a worker is then about to call)
