"""Flap detection (``shared.flapping``): the rule as a table of cases — a key's latest
incident, a fire or a clear, its recent transitions and ``now`` in, what happens out — and the
incident fold that applies it, with no database (``StoreModel`` answers as the store does;
``tests/integration/test_flapping.py`` shows the real store on both engines)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from shared.alarm import Alarm, iso
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
from tests.unit.test_first_step import NOW, StoreModel, alarm, context, run

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


# --- the incident fold, with the rule -----------------------------------------------------------


def fire(n: int) -> Alarm:
    return alarm(f"e{n}", message="Queue depth above 10000 on orders", value=10_000 + n)


def clear(n: int) -> Alarm:
    return alarm(f"e{n}", message="Queue depth above 10000 on orders", resolved=True)


def storm(times: int, first: int = 0) -> list[Alarm]:
    """Fire and clear ``times`` times."""
    return [a for n in range(first, first + times) for a in (fire(2 * n), clear(2 * n + 1))]


def one_at_a_time(
    model: StoreModel, alarms: Sequence[Alarm], rule: FlapRule, start: float = NOW, every: float = 60.0
) -> list[str]:
    """Each alarm ``every`` seconds from ``start``; the incident change each made."""
    ctx = context(flap=rule, fresh=model.fresh)
    return [run(model, [[a]], ctx, start + n * every)[0][3] for n, a in enumerate(alarms)]


def test_fire_and_clear_ten_times_in_an_hour_make_four_incidents_and_one_flapping_episode() -> None:
    model = StoreModel()

    changes = one_at_a_time(model, storm(10), RULE)

    assert changes == ["opened", "resolved"] * 4 + ["reopened", "resolving"] + ["refired", "resolving"] * 5
    incidents = sorted(model.incidents.values(), key=lambda i: i.status)
    assert [(i.status, i.count) for i in incidents] == [("open", 7)] + [("resolved", 1)] * 3
    flapping = incidents[0]
    last_clear = NOW + 19 * 60
    assert flapping.mark is not None and flapping.resolves_at == last_clear + 900
    assert (flapping.mark.since, flapping.mark.episodes) == (NOW + 8 * 60, 1)
    assert (flapping.mark.transitions, flapping.mark.window, flapping.mark.quiet) == (20, 3600, 900)
    # Told: the openings below the threshold (and their resolves), once that it flaps.
    assert [n.type.value for n in model.notices] == ["incident.opened", "incident.resolved"] * 4 + [
        "incident.flapping"
    ]

    assert model.sweep(last_clear + 899) == []
    assert flapping.status == "open"
    [settled] = model.sweep(last_clear + 900)
    assert model.sweep(last_clear + 2000) == []

    assert flapping.status == "resolved" and flapping.resolves_at is None
    assert flapping.resolved_at == last_clear + 900
    final = model.notices[-1]
    assert final.type.value == "incident.resolved" and final.key == f"{settled}:1"
    assert final.data["alarm"] is None and final.data["incident"]["flapping"] is True
    assert final.data["incident"]["at"] == iso(last_clear + 900)  # when the quiet period ended
    assert len(model.notices) == 10


def test_a_fire_during_the_quiet_period_keeps_it_open_and_says_nothing() -> None:
    model = StoreModel()
    one_at_a_time(model, storm(5), RULE)
    told = len(model.notices)
    [flapping] = [i for i in model.incidents.values() if i.status == "open"]
    pending = flapping.resolves_at
    assert pending is not None

    changes = one_at_a_time(model, [fire(100)], RULE, start=pending - 1)

    assert changes == ["refired"]
    assert (flapping.status, flapping.resolves_at) == ("open", None)
    assert model.sweep(pending + 10_000) == []
    assert len(model.notices) == told
    assert one_at_a_time(model, [clear(101)], RULE, start=pending) == ["resolving"]
    assert flapping.resolves_at == pending + 900
    assert len(model.sweep(pending + 900)) == 1 and len(model.notices) == told + 1


def test_a_resolve_that_fell_due_before_the_next_fire_is_settled_then_a_new_episode_is_told() -> None:
    model = StoreModel()
    one_at_a_time(model, storm(5), RULE, every=10)
    [flapping] = [i for i in model.incidents.values() if i.status == "open"]
    assert flapping.resolves_at is not None

    # No sweep came; the fire after the quiet period finds the key still flapping (10 openings
    # within the hour): the episode ended when the quiet period did, a second one begins.
    changes = one_at_a_time(model, [fire(100)], RULE, start=flapping.resolves_at + 5)

    assert changes == ["reopened"]
    assert [n.type.value for n in model.notices[-2:]] == ["incident.resolved", "incident.flapping"]
    assert [n.key.split(":")[1] for n in model.notices[-2:]] == ["1", "2"]
    assert flapping.mark is not None and flapping.mark.episodes == 2 and flapping.status == "open"


def test_past_the_window_a_quiet_key_follows_spikes_rules_again() -> None:
    model = StoreModel()
    one_at_a_time(model, storm(5), RULE)
    model.sweep(NOW + 10_000)

    changes = one_at_a_time(model, storm(2, first=50), RULE, start=NOW + 20_000)

    assert changes == ["opened", "resolved", "opened", "resolved"]
    assert len(model.incidents) == 6


def test_with_flap_detection_off_every_fire_opens_and_every_clear_resolves_as_spike_does() -> None:
    model = StoreModel()

    changes = one_at_a_time(model, storm(10), OFF)

    assert changes == ["opened", "resolved"] * 10
    assert len(model.incidents) == 10 and model.keys == {}
    assert all(i.status == "resolved" and i.mark is None for i in model.incidents.values())
    assert [n.type.value for n in model.notices] == ["incident.opened", "incident.resolved"] * 10
    assert model.sweep(NOW + 100_000) == []


def test_a_redelivered_alarm_never_counts_twice() -> None:
    model = StoreModel()
    alarms = storm(3)

    changes = one_at_a_time(model, [a for a in alarms for _ in range(3)], FlapRule(openings=3))

    assert [c for c in changes if c is not None] == ["opened", "resolved"] * 3
    [row] = model.keys.values()
    assert len(row.transitions) == 6
