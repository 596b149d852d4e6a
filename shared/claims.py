"""The cooldown claim rules, as a pure function; the store applies the same rules in one
conditional upsert, so that the check and the take are a single atomic step.

A claim on a scope (an instance, or an instance and a rule) is one row:
``held`` while a worker is calling the API (until ``lease_until``, which the holder renews
while it works), ``done`` after the upgrade started (no other until ``cooldown_until``),
``released`` after a retryable failure, ``awaiting`` while an upgrade waits for a person's
approval (until the approval's deadline; approving turns it into ``held``).

A lease that ran out is not taken over at once. Its holder may be alive, with an upgrade
CloudAMQP already carried out, unable to say so because the store was away: after the outage
it and a taker race for the store, and a taker that wins calls the API a second time. So the
first worker to find the lease run out only marks the claim ``stale`` and gives the holder one
more lease — counted from a moment the store answered — to report (its outcome, or a renewal,
ends the notice). Only a ``stale`` claim whose extra lease also ran out is taken over.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class ClaimStatus(StrEnum):
    HELD = "held"
    STALE = "stale"  # the lease ran out and a taker is waiting one more lease for the holder
    AWAITING = "awaiting"  # an upgrade awaits a person's approval until ``lease_until``
    DONE = "done"
    RELEASED = "released"


class ClaimVerdict(StrEnum):
    GRANTED = "granted"
    NOTICED = "noticed"  # the lease ran out: marked stale, the holder has one more lease
    HELD = "held"  # another worker is on it and its lease has not expired: defer
    COOLING_DOWN = "cooling_down"
    AWAITING_APPROVAL = "awaiting_approval"  # an upgrade of this scope waits for a person


@dataclass(frozen=True)
class ClaimRow:
    scope: str
    status: ClaimStatus
    owner: str
    lease_until: float
    cooldown_until: float
    instance_id: str = ""
    claimed_at: float = 0.0


def claim_verdict(existing: ClaimRow | None, now: float) -> ClaimVerdict:
    """What asking for the claim now does. Mirrors the upsert of ``Unit.try_claim``."""
    if existing is None or existing.status is ClaimStatus.RELEASED:
        return ClaimVerdict.GRANTED
    if existing.status is ClaimStatus.AWAITING:
        # Past its deadline nobody can approve it any more (shared.controls): free to take.
        return ClaimVerdict.AWAITING_APPROVAL if existing.lease_until > now else ClaimVerdict.GRANTED
    if existing.status in (ClaimStatus.HELD, ClaimStatus.STALE):
        if existing.lease_until > now:
            return ClaimVerdict.HELD
        return ClaimVerdict.GRANTED if existing.status is ClaimStatus.STALE else ClaimVerdict.NOTICED
    return ClaimVerdict.GRANTED if existing.cooldown_until <= now else ClaimVerdict.COOLING_DOWN


@dataclass(frozen=True)
class ClaimAsk:
    """A worker asking for the claim on ``scope`` at ``now``."""

    scope: str
    instance_id: str
    owner: str
    now: float
    lease: float
    cooldown: float


def take_claim(existing: ClaimRow | None, ask: ClaimAsk) -> tuple[ClaimVerdict, ClaimRow | None]:
    """What asking for the claim does: the verdict, and the row as it is afterwards (None:
    unchanged). The one statement that does it in the store (``Unit.try_claim``) is tested
    to agree with this function on every kind of row (``tests/unit/test_claim_rule.py``).

    Granted: held by the asker, its lease from now, its cooldown counted from now. Noticed (a
    held lease that ran out): the same holder, marked stale, one more lease from now."""
    verdict = claim_verdict(existing, ask.now)
    if verdict is ClaimVerdict.GRANTED:
        return verdict, ClaimRow(
            ask.scope,
            ClaimStatus.HELD,
            ask.owner,
            ask.now + ask.lease,
            ask.now + ask.cooldown,
            ask.instance_id,
            ask.now,
        )
    if verdict is ClaimVerdict.NOTICED:
        assert existing is not None
        return verdict, replace(existing, status=ClaimStatus.STALE, lease_until=ask.now + ask.lease)
    return verdict, None
