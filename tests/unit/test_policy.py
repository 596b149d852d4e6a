"""The decision as a table: (alarm, state, settings, now) -> decision."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.policy import DecisionState, Skip, SkipReason, Upgrade, decide
from shared.settings import Settings
from shared.verify import Condition

NOW = 1_790_000_000.0  # 2026-09-21
INSTANCE = "inst-1"
SETTINGS = Settings(instance_ids=(INSTANCE, "inst-2"), memory_threshold=80, upgrade_plan="bunny-2")


def alarm(**body: Any) -> Alarm:
    base: dict[str, Any] = {
        "alarm_type": "memory",
        "value": 85,
        "instance_id": INSTANCE,
        "triggered_at": NOW - 60,
    }
    base.update(body)
    base = {k: v for k, v in base.items() if v is not None}
    return Alarm(event_id="e1", received_at=NOW - 1, body=base, event_key=event_key(base))


CASES: list[tuple[str, Alarm, DecisionState, Settings, Any]] = [
    ("seed alarm upgrades", alarm(), DecisionState(), SETTINGS, "upgrade"),
    ("value 80 is not above 80", alarm(value=80), DecisionState(), SETTINGS, SkipReason.BELOW_THRESHOLD),
    ("80.5 is above 80", alarm(value=80.5), DecisionState(), SETTINGS, "upgrade"),
    (
        "cpu alarm has no rule",
        alarm(alarm_type="cpu", value=99),
        DecisionState(),
        SETTINGS,
        SkipReason.NO_RULE,
    ),
    ("text value", alarm(value="85%"), DecisionState(), SETTINGS, SkipReason.VALUE_NOT_NUMERIC),
    ("boolean value", alarm(value=True), DecisionState(), SETTINGS, SkipReason.VALUE_NOT_NUMERIC),
    ("missing value", alarm(value=None), DecisionState(), SETTINGS, SkipReason.VALUE_NOT_NUMERIC),
    ("resolved", alarm(resolved=True), DecisionState(), SETTINGS, SkipReason.RESOLVED),
    ("resolved false still acts", alarm(resolved=False), DecisionState(), SETTINGS, "upgrade"),
    (
        "metadata.resolved",
        alarm(metadata={"resolved": True}),
        DecisionState(),
        SETTINGS,
        SkipReason.METADATA_RESOLVED,
    ),
    (
        "metadata.resolved as string is not true",
        alarm(metadata={"resolved": "true"}),
        DecisionState(),
        SETTINGS,
        "upgrade",
    ),
    ("duplicate", alarm(), DecisionState(duplicate=True), SETTINGS, SkipReason.DUPLICATE),
    ("unknown instance", alarm(instance_id="other"), DecisionState(), SETTINGS, SkipReason.NOT_MANAGED),
    ("second managed instance", alarm(instance_id="inst-2"), DecisionState(), SETTINGS, "upgrade"),
    ("no instance id means the first managed", alarm(instance_id=None), DecisionState(), SETTINGS, "upgrade"),
    ("no instance anywhere", alarm(instance_id=None), DecisionState(), Settings(), SkipReason.NO_INSTANCE),
    ("nothing managed", alarm(), DecisionState(), Settings(), SkipReason.NOT_MANAGED),
    ("two days old", alarm(triggered_at=NOW - 2 * 86400), DecisionState(), SETTINGS, SkipReason.STALE),
    ("ISO time, fresh", alarm(triggered_at="2026-09-21T13:32:00Z"), DecisionState(), SETTINGS, "upgrade"),
    (
        "garbage time",
        alarm(triggered_at="yesterday"),
        DecisionState(),
        SETTINGS,
        SkipReason.INVALID_TRIGGERED_AT,
    ),
    ("no triggered_at uses received time", alarm(triggered_at=None), DecisionState(), SETTINGS, "upgrade"),
    (
        "threshold setting honoured",
        alarm(value=85),
        DecisionState(),
        Settings(instance_ids=(INSTANCE,), memory_threshold=90),
        SkipReason.BELOW_THRESHOLD,
    ),
]


@pytest.mark.parametrize(("name", "given", "state", "settings", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, given: Alarm, state: DecisionState, settings: Settings, expected: Any) -> None:
    decision = decide(given, state, settings, NOW)

    if expected == "upgrade":
        assert isinstance(decision, Upgrade), decision
    else:
        assert isinstance(decision, Skip) and decision.reason is expected, decision
        assert decision.detail


def test_the_upgrade_carries_the_seed_plan_reason_scope_and_cooldown() -> None:
    decision = decide(alarm(instance_id=None), DecisionState(), SETTINGS, NOW)

    assert decision == Upgrade(
        instance_id=INSTANCE,
        plan="bunny-2",
        reason="Automatic upgrade triggered by memory alarm (85%)",
        scope=f"{INSTANCE}/memory",
        cooldown_seconds=1800.0,
        # What the broker check verifies first, where the instance's management API is known.
        condition=Condition("memory", 80.0, 2.0),
    )
