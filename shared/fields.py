"""Where an alarm's fields are read from: our names, or the names and nested paths a policy
file's ``[fields]`` table maps onto them.

CloudAMQP documents no schema for the alarms it posts beyond the blog's four fields, so the
first real alarm may not look like ours. ``FieldMap`` reads each of our fields from the path
the operator mapped it to (``alarm_type = "type"``, ``instance_id = "metadata.instance"``),
falling back to our own name (the watchdog's alarms, and payloads that already use it).
``fields_read`` says, for one payload, what was read from where and which keys nothing read.
Pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The fields the autopilot reads from an alarm (the ones a ``[fields]`` table may map).
FIELDS = ("alarm_type", "value", "instance_id", "message", "resolved", "triggered_at")
# Other top-level keys it understands: Spike's ``metadata.resolved``, and what its own
# watchdog and forecast alarms carry.
OTHER_KEYS = frozenset({"metadata", "source", "nodes", "forecast"})


def parse_path(text: str) -> tuple[str, ...]:
    """``"metadata.instance"`` → ``("metadata", "instance")``; ValueError when malformed."""
    parts = tuple(text.split("."))
    if not text or any(not part.strip() or part != part.strip() for part in parts):
        raise ValueError(f"{text!r} is not a key or a dotted path (like metadata.instance)")
    return parts


def dig(body: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``body`` (None where any step is missing)."""
    found: Any = body
    for part in path:
        if not isinstance(found, Mapping):
            return None
        found = found.get(part)
    return found


@dataclass(frozen=True)
class FieldMap:
    """Our field name → the path it is read from first."""

    paths: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def path(self, name: str) -> tuple[str, ...] | None:
        return next((path for field, path in self.paths if field == name), None)

    def locate(self, body: Mapping[str, Any], name: str) -> tuple[Any, str | None]:
        """The value of our field ``name`` in ``body`` and the path it was found at: the
        mapped path first, then our own name; (None, None) when neither holds a value."""
        mapped = self.path(name)
        for path in (mapped, (name,)) if mapped is not None else ((name,),):
            value = dig(body, path)
            if value is not None:
                return value, ".".join(path)
        return None, None

    def read(self, body: Mapping[str, Any], name: str) -> Any:
        if not self.paths:  # the common case, on every alarm: our own names
            return body.get(name)
        return self.locate(body, name)[0]

    def describe(self) -> dict[str, str]:
        return {field: ".".join(path) for field, path in self.paths}


NO_FIELDS = FieldMap()


@dataclass(frozen=True)
class FieldsRead:
    """What the autopilot read from one payload: each field's value and where it was found
    (None: not found), and the top-level keys nothing read."""

    values: dict[str, Any]
    found_at: dict[str, str | None]
    unrecognised: list[str]


def fields_read(body: Mapping[str, Any], fields: FieldMap = NO_FIELDS) -> FieldsRead:
    values: dict[str, Any] = {}
    found_at: dict[str, str | None] = {}
    for name in FIELDS:
        values[name], found_at[name] = fields.locate(body, name)
    used = {path[0] for _, path in fields.paths} | set(FIELDS) | OTHER_KEYS
    return FieldsRead(values, found_at, sorted(key for key in body if key not in used))


def received_view(row: Mapping[str, Any], fields: FieldMap = NO_FIELDS) -> dict[str, Any]:
    """One recorded alarm as ``autopilot check --last-alarms`` and the console show it: the
    payload as received, each field read (and from where), the keys nothing read, and what
    became of it — with a hint where the alarm type could not be read."""
    raw = row.get("body")
    try:
        body = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        body = None
    payload: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    read = fields_read(payload, fields)
    hint = None
    if read.values["alarm_type"] is None:
        candidates = ", ".join(read.unrecognised) or "none"
        hint = (
            "no alarm type could be read, so no rule can act on it: map the payload's key in the "
            f'policy file\'s [fields] table (alarm_type = "…"; keys not read: {candidates})'
        )
    return {
        "event_id": row.get("event_id"),
        "received_at": row.get("received_at"),
        "body": body,
        "body_text": json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True),
        "read": {name: {"value": read.values[name], "from": read.found_at[name]} for name in FIELDS},
        "unrecognised": read.unrecognised,
        "instance": row.get("instance_id"),
        "incident_change": row.get("incident_change"),
        "ungroupable": row.get("ungroupable"),
        "status": row.get("status"),
        "reason": row.get("reason"),
        "detail": row.get("detail"),
        "hint": hint,
    }
