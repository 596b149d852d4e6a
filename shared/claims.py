"""The cooldown claim rules, as a pure function; the store applies the same rules in one
conditional upsert, so that the check and the take are a single atomic step.

A claim on a scope (an instance, or an instance and a rule) is one row:
``held`` while a worker is calling the API (until ``lease_until``), ``done`` after the
upgrade started (no other until ``cooldown_until``), ``released`` after a retryable failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ClaimStatus(StrEnum):
    HELD = "held"
    DONE = "done"
    RELEASED = "released"


class ClaimVerdict(StrEnum):
    GRANTED = "granted"
    HELD = "held"  # another worker is on it and its lease has not expired: defer
    COOLING_DOWN = "cooling_down"


@dataclass(frozen=True)
class ClaimRow:
    scope: str
    status: ClaimStatus
    owner: str
    lease_until: float
    cooldown_until: float


def claim_verdict(existing: ClaimRow | None, now: float) -> ClaimVerdict:
    """May a worker take the claim now? Mirrors the WHERE clause of ``Store.try_claim``."""
    if existing is None or existing.status is ClaimStatus.RELEASED:
        return ClaimVerdict.GRANTED
    if existing.status is ClaimStatus.HELD:
        return ClaimVerdict.GRANTED if existing.lease_until <= now else ClaimVerdict.HELD
    return ClaimVerdict.GRANTED if existing.cooldown_until <= now else ClaimVerdict.COOLING_DOWN
