"""Where remediation is decided: a pure function of (alarm, state, settings, now).

No I/O here. The worker gathers the state, calls ``decide`` and carries the decision out;
every ``Skip`` has a reason that ends up in the log, in ``GET /actions`` and in metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.alarm import Alarm
from shared.settings import Settings


class SkipReason(StrEnum):
    METADATA_RESOLVED = "metadata_resolved"
    RESOLVED = "resolved"
    DUPLICATE = "duplicate"
    NO_INSTANCE = "no_instance"
    NOT_MANAGED = "not_managed"
    INVALID_TRIGGERED_AT = "invalid_triggered_at"
    STALE = "stale"
    NO_RULE = "no_rule"
    VALUE_NOT_NUMERIC = "value_not_numeric"
    BELOW_THRESHOLD = "below_threshold"
    COOLING_DOWN = "cooling_down"


@dataclass(frozen=True)
class DecisionState:
    """What the store knows that matters to the decision."""

    duplicate: bool = False


@dataclass(frozen=True)
class Skip:
    reason: SkipReason
    detail: str


@dataclass(frozen=True)
class Upgrade:
    instance_id: str
    plan: str
    reason: str
    scope: str
    cooldown_seconds: float


Decision = Skip | Upgrade


def target_instance(alarm: Alarm, settings: Settings) -> str | None:
    """The instance an alarm is about: its own ``instance_id``, else the first managed one."""
    if alarm.instance_id is not None:
        return alarm.instance_id
    return settings.instance_ids[0] if settings.instance_ids else None


def _format_value(value: float) -> str:
    return f"{value:g}"


def decide(alarm: Alarm, state: DecisionState, settings: Settings, now: float) -> Decision:
    """Decide what to do about one alarm: first whether it may be acted on at all, then
    whether a rule fires."""
    instance = target_instance(alarm, settings)
    blocked = _not_actionable(alarm, state, settings, instance, now)
    if blocked is not None:
        return blocked
    assert instance is not None
    return _default_rule(alarm, settings, instance)


def _not_actionable(
    alarm: Alarm, state: DecisionState, settings: Settings, instance: str | None, now: float
) -> Skip | None:
    if alarm.metadata_resolved:
        return Skip(SkipReason.METADATA_RESOLVED, "metadata.resolved is true: never remediate")
    if alarm.resolved:
        return Skip(SkipReason.RESOLVED, "resolved alarms never trigger remediation")
    if state.duplicate:
        return Skip(SkipReason.DUPLICATE, "an identical alarm was already decided")
    if instance is None:
        return Skip(SkipReason.NO_INSTANCE, "no instance_id and CLOUDAMQP_INSTANCE_ID is unset")
    if instance not in settings.instance_ids:
        return Skip(SkipReason.NOT_MANAGED, f"instance {instance} is not in CLOUDAMQP_INSTANCE_ID")
    try:
        triggered = alarm.triggered_at
    except ValueError:
        return Skip(SkipReason.INVALID_TRIGGERED_AT, "triggered_at is not an ISO 8601 time")
    age = now - (triggered if triggered is not None else alarm.received_at)
    if age > settings.max_alarm_age_seconds:
        return Skip(
            SkipReason.STALE,
            f"alarm is {age:.0f}s old, older than MAX_ALARM_AGE_SECONDS={settings.max_alarm_age_seconds:g}",
        )
    return None


def _default_rule(alarm: Alarm, settings: Settings, instance: str) -> Decision:
    """The seed's rule: a memory alarm strictly above MEMORY_THRESHOLD upgrades to UPGRADE_PLAN."""
    if alarm.alarm_type != "memory":
        return Skip(SkipReason.NO_RULE, f"no rule for alarm_type {alarm.alarm_type!r}")
    value = alarm.value
    if value is None:
        return Skip(SkipReason.VALUE_NOT_NUMERIC, f"value {alarm.body.get('value')!r} is not a number")
    if value <= settings.memory_threshold:
        return Skip(
            SkipReason.BELOW_THRESHOLD,
            f"memory {_format_value(value)}% is not above {_format_value(settings.memory_threshold)}%",
        )
    return Upgrade(
        instance_id=instance,
        plan=settings.upgrade_plan,
        reason=f"Automatic upgrade triggered by memory alarm ({_format_value(value)}%)",
        scope=instance,
        cooldown_seconds=settings.cooldown_seconds,
    )
