"""The operator's controls as pure rules: pauses (maintenance windows) and approvals.

A pause holds every upgrade of one instance — or of all of them (``GLOBAL``) — until a time;
it ends by itself. An approval is an upgrade a policy rule wants a person to allow first: it
holds its cooldown claim until ``deadline``, and exactly one of approve, deny or expire ends
it. The store applies these rules in single conditional statements; here they are plain
functions with table tests, and the words the API and the CLI answer with.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.alarm import iso, parse_timestamp

GLOBAL = "*"  # the pause scope that holds every instance
MAX_PAUSE_SECONDS = 90 * 24 * 3600.0  # a pause longer than a quarter is a mistake, not a window
MAX_TEXT = 500  # characters of a reason kept
MAX_OPERATOR = 100
DEFAULT_OPERATOR = "token"  # who acted, when the request names no one


@dataclass(frozen=True)
class Pause:
    scope: str  # an instance id, or GLOBAL
    until: float
    operator: str
    reason: str | None
    created_at: float

    def describe(self) -> str:
        what = "all instances" if self.scope == GLOBAL else f"instance {self.scope}"
        why = f": {self.reason}" if self.reason else ""
        return f"{what} paused by {self.operator} until {iso(self.until)}{why}"


def effective_pause(pauses: Iterable[Pause], instance: str, now: float) -> Pause | None:
    """The pause that holds ``instance`` at ``now`` (its own or the global one; the one that
    lasts longer when both do), or None."""
    holding = [p for p in pauses if p.until > now and p.scope in (instance, GLOBAL)]
    return max(holding, key=lambda p: p.until) if holding else None


class ControlError(ValueError):
    """A request to the controls that cannot be carried out; ``error`` is a short code."""

    def __init__(self, error: str, detail: str):
        super().__init__(detail)
        self.error, self.detail = error, detail


def pause_until(body: Mapping[str, Any], now: float) -> float:
    """When a requested pause ends: ``until`` (ISO 8601 or epoch seconds) or ``duration``
    (seconds from now), exactly one of them, in the future and at most 90 days away."""
    has_until, has_duration = body.get("until") is not None, body.get("duration") is not None
    if has_until == has_duration:
        raise ControlError("bad_pause", "give exactly one of 'until' (ISO 8601) or 'duration' (seconds)")
    if has_until:
        try:
            until = parse_timestamp(body["until"])
        except (ValueError, TypeError):
            raise ControlError(
                "bad_pause", "'until' is not an ISO 8601 time (like 2026-02-20T10:00:00Z)"
            ) from None
    else:
        duration = body["duration"]
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
            raise ControlError("bad_pause", "'duration' must be a number of seconds")
        until = now + float(duration)
    if until <= now:
        raise ControlError(
            "bad_pause", "the pause would end in the past; give a later 'until' or a positive 'duration'"
        )
    if until - now > MAX_PAUSE_SECONDS:
        raise ControlError("bad_pause", f"a pause may last at most {MAX_PAUSE_SECONDS / 86400:g} days")
    return until


def clean_text(value: Any, what: str, limit: int = MAX_TEXT) -> str | None:
    """An optional free-text field (a reason, a name): a string of at most ``limit``
    characters, without control characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ControlError("bad_request", f"'{what}' must be a string")
    if any(unicodedata.category(ch) in {"Cc", "Cs"} for ch in value):
        # Cs: undecodable bytes of a header arrive as lone surrogates, which no store can hold.
        raise ControlError("bad_request", f"'{what}' must be UTF-8 text without control characters")
    if len(value) > limit:
        raise ControlError("bad_request", f"'{what}' must be at most {limit} characters")
    text = value.strip()
    return text or None


def operator_name(value: Any) -> str:
    """Who acts: the name given with the request (``X-Operator`` or ``operator``), else
    ``token`` — the holder of the operator token."""
    return clean_text(value, "operator", MAX_OPERATOR) or DEFAULT_OPERATOR


class ApprovalState:
    """Where an approval stands, as the store's action statuses name it."""

    AWAITING = "awaiting_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


def approval_refusal(status: str | None, deadline: float | None, now: float) -> ControlError | None:
    """Why an approve or deny of this action cannot happen now (None: it can)."""
    if status is None:
        return ControlError("not_found", "no action with this id")
    if status == ApprovalState.AWAITING:
        if deadline is not None and deadline <= now:
            return ControlError("expired", f"the approval window closed at {iso(deadline)}")
        return None
    if status == ApprovalState.APPROVED:
        return ControlError("already_approved", "this upgrade was approved already")
    if status == ApprovalState.DENIED:
        return ControlError("already_denied", "this upgrade was denied already")
    if status == ApprovalState.EXPIRED:
        return ControlError("expired", "the approval window closed; the next alarm asks again")
    if deadline is not None:
        return ControlError("already_approved", f"this upgrade was approved and is now {status}")
    return ControlError("not_awaiting_approval", f"this action is {status}; it awaits no approval")
