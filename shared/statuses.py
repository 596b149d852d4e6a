"""The statuses of an action row and of an incident, spelled once, and what they mean for a
redelivered or re-sent alarm: code compares these members, and SQL takes them as literals
generated from them (``shared.db.lit``), never typed by hand."""

from __future__ import annotations

from enum import StrEnum


class ActionStatus(StrEnum):
    """Where an event's one action row stands."""

    IN_PROGRESS = "in_progress"  # claimed and calling (or, with RECONFIGURING, accepted)
    RETRYING = "retrying"  # a retryable failure; the message waits in a delay queue
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    DRY_RUN = "dry_run"
    FAILED = "failed"  # parked
    UNCONFIRMED = "unconfirmed"  # accepted, but the plan did not show before the deadline
    AWAITING_APPROVAL = "awaiting_approval"  # its rule asks a person first; the claim is held
    APPROVED = "approved"  # a person said yes; a worker is about to call
    DENIED = "denied"
    EXPIRED = "expired"  # nobody answered within the rule's approve_timeout


class ActionKind(StrEnum):
    """The remedy an action row is about (its ``kind`` column; NULL in rows of upgrades, and of
    rows from before disk resizes existed)."""

    UPGRADE = "upgrade"  # a plan change
    RESIZE_DISK = "resize_disk"  # more extra disk (shared.disk)


class IncidentStatus(StrEnum):
    """Where an incident stands (at most one ``open`` per incident key)."""

    OPEN = "open"
    RESOLVED = "resolved"


# An event whose action reached one of these needs no more work when redelivered.
DONE_STATUSES = frozenset(
    {
        ActionStatus.SUCCEEDED,
        ActionStatus.SKIPPED,
        ActionStatus.DRY_RUN,
        ActionStatus.FAILED,
        ActionStatus.UNCONFIRMED,
        ActionStatus.DENIED,
        ActionStatus.EXPIRED,
    }
)
# The alarm's own work is done, and the approval (not a redelivery) decides what follows.
HANDED_OFF = frozenset({ActionStatus.AWAITING_APPROVAL, ActionStatus.APPROVED})
# An identical re-send of an event whose action reached one of these is a ``duplicate``. Fewer
# than DONE_STATUSES: a failed or unconfirmed upgrade is no decision that stands, so the same
# alarm sent again deserves its own try (the cooldown claim still guards against a repeat).
DECIDED_STATUSES = frozenset({ActionStatus.SUCCEEDED, ActionStatus.SKIPPED, ActionStatus.DRY_RUN})
# Skips that say "not now" rather than "no": an identical alarm after a pause ended or an
# approval was denied is decided afresh (level-triggered), not a duplicate.
# A cleared condition too: the next identical alarm is checked against the broker afresh.
# And one that met a plan change still being applied: the alarm after it is looked at afresh.
PASSING_SKIPS = ("paused", "awaiting_approval", "condition_cleared", "reconfiguring")


def is_decided(status: ActionStatus, reason: str | None) -> bool:
    """Does this row, about to be written, make an identical re-send a duplicate?
    (``shared.store.actions.DECIDED_ROW`` says the same of the rows written.)"""
    return status in DECIDED_STATUSES and not (status is ActionStatus.SKIPPED and reason in PASSING_SKIPS)


# An upgrade CloudAMQP accepted, which it applies asynchronously while a check message follows
# it: "in_progress" with this reason. The alarm's own work is done; only the check may change
# the row (and no other plan change of the instance starts meanwhile).
RECONFIGURING = "reconfiguring"
# A change asked of CloudAMQP got no answer (a timeout, a connection dropped once it was sent):
# it may have been made. A ``retrying`` row with this reason — or an ``in_progress`` one whose
# change was asked (``asked_at``) when its worker stopped — is followed up by reading the
# instance before anything is asked again (``shared.policy.made_already``).
UNANSWERED = "unanswered"


def is_done(status: str | None, reason: str | None) -> bool:
    """Does a redelivery of the event whose action row this is need no more work?"""
    return (
        status in DONE_STATUSES
        or status in HANDED_OFF
        or (status == ActionStatus.IN_PROGRESS and reason == RECONFIGURING)
    )


def unanswered(status: str | None, reason: str | None, asked_at: float | None) -> bool:
    """Does this action row leave a change asked of CloudAMQP whose answer never came — its
    call retrying after no answer, or its worker gone while the call was under way?"""
    if asked_at is None:
        return False
    if status not in (ActionStatus.IN_PROGRESS, ActionStatus.RETRYING):
        return False
    return reason == UNANSWERED or (status == ActionStatus.IN_PROGRESS and reason is None)
