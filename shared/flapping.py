"""Flap detection: an alarm that fires and clears again and again makes one steady incident.
Pure functions of an incident key's recent transitions, its latest incident and ``now``.

Spike's rules (``shared.incidents``) open a new incident at each fire after a resolve and
resolve it at each clear. Once a key has opened ``FLAP_OPENINGS`` times within
``FLAP_WINDOW_SECONDS`` it is *flapping*: its next fire re-opens its latest incident instead
(an episode begins, told once: ``incident.flapping``), a clear only sets the resolve
``FLAP_QUIET_SECONDS`` later ("resolves at …, if quiet"), a fire before then calls that off,
and the resolve that falls due is the episode's one more notification. Below the threshold,
and with ``FLAP_OPENINGS=0``, Spike's rules apply unchanged.

A *transition* is a change of the key between firing and clear: an opening (a new incident, a
re-opening, a fire during the quiet period) or a closing (a resolve, a clear of a flapping
incident). Only an event's first delivery makes one, so a redelivered alarm never counts twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from shared.alarm import iso

# Transitions kept per key (the newest): a key flapping faster than this per window still
# flaps, and its count of transitions stops growing here.
MAX_KEPT = 1000


class Move(StrEnum):
    """What an event does to its key's latest incident (the event's ``incident_change``)."""

    OPENED = "opened"  # a new incident (Spike)
    GROUPED = "grouped"  # into the open one (Spike)
    RESOLVED = "resolved"  # resolved at once (Spike)
    REOPENED = "reopened"  # flapping: the latest incident re-opened, an episode begins
    REFIRED = "refired"  # flapping: a fire during the quiet period, the pending resolve called off
    RESOLVING = "resolving"  # flapping: a clear; resolves after the quiet period, if quiet
    NONE = "none"  # nothing to resolve, or a resolve already pending


OPENINGS = frozenset({Move.OPENED, Move.REOPENED, Move.REFIRED})
CLOSINGS = frozenset({Move.RESOLVED, Move.RESOLVING})


class FlapSettings(Protocol):
    """``shared.settings.Settings``, as far as the rule reads it."""

    @property
    def flap_openings(self) -> int: ...
    @property
    def flap_window_seconds(self) -> float: ...
    @property
    def flap_quiet_seconds(self) -> float: ...


@dataclass(frozen=True)
class FlapRule:
    """``FLAP_OPENINGS`` (0: off), ``FLAP_WINDOW_SECONDS``, ``FLAP_QUIET_SECONDS``."""

    openings: int = 4
    window: float = 3600.0
    quiet: float = 900.0

    @property
    def on(self) -> bool:
        return self.openings > 0

    @classmethod
    def of(cls, settings: FlapSettings) -> FlapRule:
        return cls(settings.flap_openings, settings.flap_window_seconds, settings.flap_quiet_seconds)


OFF = FlapRule(openings=0)


@dataclass(frozen=True)
class Transition:
    at: float
    opening: bool


@dataclass(frozen=True)
class Latest:
    """A key's latest incident as the rule sees it. ``flapping``: in an episode (re-opened by
    the rule and not finally resolved); ``resolves_at``: its pending resolve."""

    open: bool
    flapping: bool = False
    resolves_at: float | None = None


@dataclass(frozen=True)
class Verdict:
    """``settle``: the latest incident's pending resolve fell due before ``now`` (it resolved
    then, quiet); ``move``: what the event does after that."""

    settle: bool
    move: Move


def recent(transitions: Iterable[Transition], now: float, rule: FlapRule) -> list[Transition]:
    """The transitions within the window that ends at ``now``."""
    return [t for t in transitions if now - rule.window < t.at <= now]


def is_flapping(transitions: Iterable[Transition], now: float, rule: FlapRule) -> bool:
    """Has the key opened ``rule.openings`` times within the window?"""
    return rule.on and sum(t.opening for t in recent(transitions, now, rule)) >= rule.openings


def due(latest: Latest | None, now: float) -> bool:
    """Is the latest incident's pending resolve due at ``now``?"""
    return latest is not None and latest.open and latest.resolves_at is not None and latest.resolves_at <= now


def verdict(
    latest: Latest | None, fire: bool, transitions: Sequence[Transition], now: float, rule: FlapRule
) -> Verdict:
    """What a fire (``fire``) or a clear does to a key whose latest incident is ``latest``
    (None: the key has none), given its recent transitions."""
    settle = due(latest, now)
    if latest is None:
        return Verdict(settle, Move.OPENED if fire else Move.NONE)
    if settle:
        latest = Latest(open=False)
    if fire:
        if latest.open:
            return Verdict(settle, Move.REFIRED if latest.resolves_at is not None else Move.GROUPED)
        return Verdict(settle, Move.REOPENED if is_flapping(transitions, now, rule) else Move.OPENED)
    if not latest.open or latest.resolves_at is not None:
        return Verdict(settle, Move.NONE)
    if latest.flapping and rule.on:
        return Verdict(settle, Move.RESOLVING)
    return Verdict(settle, Move.RESOLVED)


def remember(transitions: Sequence[Transition], move: Move, now: float, rule: FlapRule) -> list[Transition]:
    """The key's transitions to keep after ``move`` at ``now``: those within the window, the
    new one last, at most ``MAX_KEPT``."""
    kept = recent(transitions, now, rule)
    if move in OPENINGS or move in CLOSINGS:
        kept.append(Transition(now, move in OPENINGS))
    return kept[-MAX_KEPT:]


@dataclass(frozen=True)
class FlapMark:
    """How an incident is marked flapping: since when (its latest episode), how many
    transitions its key made within what window (as of its latest change), the quiet period
    that resolves it, and how many episodes it has had."""

    since: float
    transitions: int
    window: float
    quiet: float
    episodes: int

    def json(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "transitions": self.transitions,
            "window_seconds": self.window,
            "quiet_seconds": self.quiet,
            "episodes": self.episodes,
        }
