"""Flap detection (``shared.flapping``): the rule as a table of cases — a key's latest
incident, a fire or a clear, its recent transitions and ``now`` in, what happens out."""

from __future__ import annotations

import pytest

from shared.flapping import (
    MAX_KEPT,
    OFF,
    FlapRule,
    Latest,
    Move,
    Transition,
    Verdict,
    due,
    is_flapping,
    remember,
    verdict,
)

NOW = 1_000_000.0
RULE = FlapRule(openings=4, window=3600.0, quiet=900.0)


def opened_at(*seconds_ago: float) -> list[Transition]:
    """Openings, each followed a second later by its closing."""
    out = []
    for ago in sorted(seconds_ago, reverse=True):
        out += [Transition(NOW - ago, True), Transition(NOW - ago + 1, False)]
    return out


FOUR_IN_AN_HOUR = opened_at(3000, 2000, 1000, 10)
CLOSED = Latest(open=False)
OPEN = Latest(open=True)
FLAPPING = Latest(open=True, flapping=True)
PENDING = Latest(open=True, flapping=True, resolves_at=NOW + 300)
FELL_DUE = Latest(open=True, flapping=True, resolves_at=NOW - 1)


@pytest.mark.parametrize(
    ("latest", "fire", "transitions", "rule", "expected"),
    [
        # Spike's rules: below the threshold, or off.
        (None, True, [], RULE, Verdict(False, Move.OPENED)),
        (None, False, [], RULE, Verdict(False, Move.NONE)),
        (OPEN, True, [], RULE, Verdict(False, Move.GROUPED)),
        (OPEN, False, [], RULE, Verdict(False, Move.RESOLVED)),
        (CLOSED, False, [], RULE, Verdict(False, Move.NONE)),
        (CLOSED, True, opened_at(3000, 2000, 1000), RULE, Verdict(False, Move.OPENED)),
        (CLOSED, True, FOUR_IN_AN_HOUR, OFF, Verdict(False, Move.OPENED)),
        # An opening just outside the window does not count.
        (CLOSED, True, opened_at(3600, 2000, 1000, 10), RULE, Verdict(False, Move.OPENED)),
        (CLOSED, True, opened_at(3599, 2000, 1000, 10), RULE, Verdict(False, Move.REOPENED)),
        # Flapping: the next fire re-opens the latest incident ...
        (CLOSED, True, FOUR_IN_AN_HOUR, RULE, Verdict(False, Move.REOPENED)),
        (CLOSED, True, FOUR_IN_AN_HOUR, FlapRule(openings=5), Verdict(False, Move.OPENED)),
        # ... a clear only sets the resolve, a fire during the quiet period calls it off,
        (FLAPPING, False, FOUR_IN_AN_HOUR, RULE, Verdict(False, Move.RESOLVING)),
        (FLAPPING, True, FOUR_IN_AN_HOUR, RULE, Verdict(False, Move.GROUPED)),
        (PENDING, True, FOUR_IN_AN_HOUR, RULE, Verdict(False, Move.REFIRED)),
        (PENDING, False, FOUR_IN_AN_HOUR, RULE, Verdict(False, Move.NONE)),
        # ... and a resolve that fell due is settled before anything else.
        (FELL_DUE, True, FOUR_IN_AN_HOUR, RULE, Verdict(True, Move.REOPENED)),
        (FELL_DUE, True, opened_at(4000), RULE, Verdict(True, Move.OPENED)),
        (FELL_DUE, False, FOUR_IN_AN_HOUR, RULE, Verdict(True, Move.NONE)),
        # Turned off during an episode: a clear resolves at once.
        (FLAPPING, False, FOUR_IN_AN_HOUR, OFF, Verdict(False, Move.RESOLVED)),
        (PENDING, True, FOUR_IN_AN_HOUR, OFF, Verdict(False, Move.REFIRED)),
    ],
)
def test_what_a_fire_or_a_clear_does(
    latest: Latest | None, fire: bool, transitions: list[Transition], rule: FlapRule, expected: Verdict
) -> None:
    assert verdict(latest, fire, transitions, NOW, rule) == expected


@pytest.mark.parametrize(
    ("openings", "rule", "flapping"),
    [
        ([], RULE, False),
        ([3000, 2000, 1000], RULE, False),
        ([3000, 2000, 1000, 0], RULE, True),
        ([7000, 3000, 2000, 1000], RULE, False),
        ([3000, 2000, 1000, 0], OFF, False),
        ([0], FlapRule(openings=1), True),
        ([100, 50], FlapRule(openings=2, window=60), False),
    ],
)
def test_a_key_is_flapping_when_it_opened_often_enough_within_the_window(
    openings: list[float], rule: FlapRule, flapping: bool
) -> None:
    assert is_flapping(opened_at(*openings), NOW, rule) is flapping


def test_only_a_pending_resolve_of_an_open_incident_falls_due() -> None:
    assert [due(latest, NOW) for latest in (None, CLOSED, OPEN, PENDING, FELL_DUE)] == [
        False,
        False,
        False,
        False,
        True,
    ]
    assert due(Latest(open=True, flapping=True, resolves_at=NOW), NOW)


def test_the_kept_transitions_are_those_within_the_window_and_the_new_one_last_at_most_max_kept() -> None:
    old, recent = Transition(NOW - 3600, True), Transition(NOW - 10, False)

    assert remember([old, recent], Move.REOPENED, NOW, RULE) == [recent, Transition(NOW, True)]
    assert remember([old, recent], Move.RESOLVING, NOW, RULE)[-1] == Transition(NOW, False)
    assert remember([old, recent], Move.GROUPED, NOW, RULE) == [recent]
    many = [Transition(NOW - 1, True)] * (MAX_KEPT + 5)
    assert len(remember(many, Move.REFIRED, NOW, RULE)) == MAX_KEPT
