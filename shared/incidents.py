"""Spike.sh's CloudAMQP incident rules, as pure functions.

- grouping key: ``message``; without one, ``"{alarm_type} alarm on {instance_id}"``;
- top-level ``resolved: true`` resolves the open incident with that key (if any);
- ``metadata.resolved: true`` never opens an incident;
- anything else opens an incident or groups into the open one with the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.alarm import Alarm


class IncidentChange(StrEnum):
    UPSERT = "upsert"  # open a new incident, or group into the open one (decided atomically)
    RESOLVE = "resolve"
    NONE = "none"
    UNGROUPABLE = "ungroupable"


@dataclass(frozen=True)
class IncidentPlan:
    change: IncidentChange
    key: str | None
    reason: str | None = None


def incident_key(alarm: Alarm, instance_id: str | None) -> str | None:
    """The grouping key, or None when the alarm has neither ``message`` nor ``alarm_type``."""
    if alarm.message is not None:
        return alarm.message
    if alarm.alarm_type is not None:
        return f"{alarm.alarm_type} alarm on {instance_id or 'unknown instance'}"
    return None


def plan_incident(alarm: Alarm, instance_id: str | None) -> IncidentPlan:
    """What this event does to incidents; the store applies it atomically."""
    key = incident_key(alarm, instance_id)
    if key is None:
        return IncidentPlan(
            IncidentChange.UNGROUPABLE,
            None,
            "no 'message' and no 'alarm_type': incidents are grouped by 'message'",
        )
    if alarm.resolved:
        return IncidentPlan(IncidentChange.RESOLVE, key)
    if alarm.metadata_resolved:
        return IncidentPlan(IncidentChange.NONE, key, "metadata.resolved is true")
    return IncidentPlan(IncidentChange.UPSERT, key)
