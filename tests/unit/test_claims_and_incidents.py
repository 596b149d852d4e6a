"""Claim/lease rules and Spike's incident rules as tables."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.incidents import IncidentChange, plan_incident

NOW = 1000.0


def row(status: ClaimStatus, lease_until: float = 0.0, cooldown_until: float = 0.0) -> ClaimRow:
    return ClaimRow("inst", status, "w1", lease_until, cooldown_until)


@pytest.mark.parametrize(
    ("name", "existing", "expected"),
    [
        ("claim free", None, ClaimVerdict.GRANTED),
        ("claim held, lease running", row(ClaimStatus.HELD, lease_until=NOW + 1), ClaimVerdict.HELD),
        ("lease expired: notice first", row(ClaimStatus.HELD, lease_until=NOW), ClaimVerdict.NOTICED),
        ("stale, the holder's extra lease running", row(ClaimStatus.STALE, NOW + 1), ClaimVerdict.HELD),
        ("stale, extra lease over", row(ClaimStatus.STALE, lease_until=NOW), ClaimVerdict.GRANTED),
        ("cooling down", row(ClaimStatus.DONE, cooldown_until=NOW + 1), ClaimVerdict.COOLING_DOWN),
        ("cooldown over", row(ClaimStatus.DONE, cooldown_until=NOW - 1), ClaimVerdict.GRANTED),
        ("released after failure", row(ClaimStatus.RELEASED, NOW + 100, NOW + 100), ClaimVerdict.GRANTED),
    ],
)
def test_claim_verdict(name: str, existing: ClaimRow | None, expected: ClaimVerdict) -> None:
    assert claim_verdict(existing, NOW) is expected


def alarm(**body: Any) -> Alarm:
    return Alarm(event_id="e", received_at=0.0, body=body, event_key=event_key(body))


@pytest.mark.parametrize(
    ("name", "body", "change", "key"),
    [
        (
            "message opens or groups",
            {"message": "Queue depth high"},
            IncidentChange.UPSERT,
            "Queue depth high",
        ),
        (
            "resolved resolves",
            {"message": "Queue depth high", "resolved": True},
            IncidentChange.RESOLVE,
            "Queue depth high",
        ),
        (
            "metadata.resolved opens nothing",
            {"message": "m", "metadata": {"resolved": True}},
            IncidentChange.NONE,
            "m",
        ),
        (
            "both flags: resolve wins",
            {"message": "m", "resolved": True, "metadata": {"resolved": True}},
            IncidentChange.RESOLVE,
            "m",
        ),
        (
            "resolved must be true, not truthy",
            {"message": "m", "resolved": "yes"},
            IncidentChange.UPSERT,
            "m",
        ),
        (
            "CloudAMQP alarm without message",
            {"alarm_type": "memory", "instance_id": "i1"},
            IncidentChange.UPSERT,
            "memory alarm on i1",
        ),
        (
            "empty message falls back",
            {"message": "  ", "alarm_type": "disk"},
            IncidentChange.UPSERT,
            "disk alarm on i9",
        ),
        ("nothing to group by", {"value": 3}, IncidentChange.UNGROUPABLE, None),
    ],
)
def test_plan_incident(name: str, body: dict[str, Any], change: IncidentChange, key: str | None) -> None:
    instance = body.get("instance_id", "i9")
    plan = plan_incident(alarm(**body), instance)

    assert (plan.change, plan.key) == (change, key)
    if change is IncidentChange.UNGROUPABLE:
        assert plan.reason and "message" in plan.reason
