"""An action row's statuses, spelled once: code compares these members, and SQL takes them as
literals generated from them (``shared.db.lit``), never typed by hand."""

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
