"""The forecast's pure parts (worker.forecast), its rule keys, its settings and its decision:
tables, and properties over generated load curves (time is an argument everywhere)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.alarm import Alarm, event_key
from shared.controls import Pause
from shared.policy import DecisionState, Policy, Rule, Skip, SkipReason, Upgrade, decide
from shared.policy_file import PolicyError, parse_policy
from shared.settings import ConfigError, Settings
from worker.forecast import (
    DEFAULT_LEAD_TIME,
    LEAD_MARGIN,
    Episode,
    LeadTime,
    Point,
    Projection,
    Step,
    Target,
    Verdict,
    explain,
    fit,
    forecast_alarm,
    forecast_event_id,
    forecast_step,
    judge,
    lead_time,
    project,
    series,
)

MIN = 60.0
MEMORY_80 = Target("memory", 80.0)
DISK_2X = Target("disk", 2.0)
WINDOW, MIN_SAMPLES = 1800.0, 10


def curve(values: list[float], step: float = MIN) -> list[Point]:
    """One point per ``step`` seconds from time 0."""
    return [Point(i * step, v) for i, v in enumerate(values)]


def ramp(
    minutes: int, *, start: float = 50.0, rate: float = 1.0, flat_at: float | None = None
) -> list[float]:
    values = [start + rate * m for m in range(minutes + 1)]
    return [min(v, flat_at) for v in values] if flat_at is not None else values


def noise(level: float, amplitude: float, count: int, seed: int) -> list[float]:
    r = random.Random(seed)
    return [level + r.uniform(-amplitude, amplitude) for _ in range(count)]


def run(values: list[float], lead: float, target: Target = MEMORY_80) -> Projection:
    points = curve(values)
    return project(
        points,
        target,
        points[-1].at,
        window=WINDOW,
        min_samples=MIN_SAMPLES,
        lead=LeadTime(lead, "rule"),
    )


def spike(values: list[float], at: int, to: float) -> list[float]:
    out = list(values)
    out[at] = to
    return out


PROJECT_CASES: list[tuple[str, list[float], float, Verdict, float | None]] = [
    # (name, one value a minute, lead time, verdict, seconds to the crossing)
    ("nine samples are too few", ramp(8), 600, Verdict.TOO_FEW, None),
    ("a 1 %/min ramp 11 min from 80 % is later", ramp(19), 600, Verdict.LATER, 660.0),
    # 80 % itself is not above 80 %: 10 min away is not within a 10 min lead time.
    ("a 1 %/min ramp 10 min from 80 % is later", ramp(20), 600, Verdict.LATER, 600.0),
    ("a 1 %/min ramp 9 min from 80 % is soon", ramp(21), 600, Verdict.SOON, 540.0),
    ("the same ramp with a 5 min lead is later", ramp(20), 300, Verdict.LATER, 600.0),
    ("a ramp already past 80 % is crossed", ramp(31), 600, Verdict.CROSSED, None),
    ("flat at 60 % has no trend", [60.0] * 31, 3600, Verdict.NO_TREND, None),
    ("noise around 60 % has no trend", noise(60, 3, 31, seed=7), 3600, Verdict.NO_TREND, None),
    ("noise around 77 % has no trend", noise(77, 2, 31, seed=8), 3600, Verdict.NO_TREND, None),
    ("a spike to 79 % mid-window", spike([60.0] * 31, 15, 79.0), 3600, Verdict.NO_TREND, None),
    ("a spike to 79 % at the last poll", spike([60.0] * 31, 30, 79.0), 3600, Verdict.NO_TREND, None),
    (
        "a spike on noise at the last poll",
        spike(noise(60, 2, 31, seed=9), 30, 79.0),
        3600,
        Verdict.NO_TREND,
        None,
    ),
    # 50 → 75 at 1 %/min, then flat: a fit of the whole window alone would still see 1 %/min
    # from 77 % two polls later (3 min to 80 %); the latest points say it stopped.
    ("a ramp that flattened at 75 % one poll ago", ramp(26, flat_at=75), 180, Verdict.LATER, 240.0),
    ("a ramp that flattened at 75 % two polls ago", ramp(27, flat_at=75), 180, Verdict.LATER, 540.0),
    ("a ramp that flattened at 75 % three polls ago", ramp(28, flat_at=75), 180, Verdict.NO_TREND, None),
    ("a ramp that flattened at 75 % long ago", ramp(60, flat_at=75), 3600, Verdict.NO_TREND, None),
    (
        "a ramp that turned down five polls ago",
        ramp(22) + [72.0 - m for m in range(1, 6)],
        3600,
        Verdict.NO_TREND,
        None,
    ),
    # Samples older than the window do not count: the climb of an hour ago is over.
    ("a climb older than the window", ramp(30, start=20) + [50.0] * 31, 3600, Verdict.NO_TREND, None),
]


@pytest.mark.parametrize(
    ("name", "values", "lead", "verdict", "crosses_in"), PROJECT_CASES, ids=[c[0] for c in PROJECT_CASES]
)
def test_project(
    name: str, values: list[float], lead: float, verdict: Verdict, crosses_in: float | None
) -> None:
    found = run(values, lead)

    assert found.verdict is verdict
    if crosses_in is None:
        assert verdict is not Verdict.LATER or found.crosses_in is not None
    else:
        assert found.crosses_in == pytest.approx(crosses_in, abs=1.0)


def test_disk_headroom_falling_towards_its_margin_is_forecast() -> None:
    # disk_free / disk_free_limit from 6× down by 0.1× a minute: 2× is reached at minute 40.
    values = [6.0 - 0.1 * m for m in range(31)]

    assert run(values, 600, DISK_2X).verdict is Verdict.SOON
    # Headroom at 2× is the condition (at or below): 10 min away is within a 10 min lead.
    assert run(values[:31], 600, DISK_2X).crosses_in == pytest.approx(600.0)
    assert run(values[:30], 600, DISK_2X).verdict is Verdict.LATER
    assert run([3.0] * 31, 3600, DISK_2X).verdict is Verdict.NO_TREND


def test_series_takes_the_node_nearest_the_threshold_at_each_poll() -> None:
    rows = [
        {"at": 60.0, "node": "a", "mem_used": 50, "mem_limit": 100, "disk_free": 9, "disk_free_limit": 3},
        {"at": 60.0, "node": "b", "mem_used": 70, "mem_limit": 100, "disk_free": 12, "disk_free_limit": 3},
        {"at": 0.0, "node": "a", "mem_used": 40, "mem_limit": 100, "disk_free": None, "disk_free_limit": 3},
        {"at": 0.0, "node": "b", "mem_used": None, "mem_limit": 100, "disk_free": 15, "disk_free_limit": 3},
        {"at": 120.0, "node": "a", "mem_used": 1, "mem_limit": 0, "disk_free": 1, "disk_free_limit": 0},
    ]

    assert series(rows, "memory") == [Point(0.0, 40.0), Point(60.0, 70.0)]
    assert series(rows, "disk") == [Point(0.0, 5.0), Point(60.0, 3.0)]


LEAD_CASES: list[tuple[str, float | None, list[tuple[str, float]], LeadTime]] = [
    ("the rule's own wins", 300.0, [("i-1", 900.0)], LeadTime(300.0, "rule")),
    (
        "this instance's median",
        None,
        [("i-1", 600.0), ("i-2", 60.0), ("i-1", 840.0), ("i-1", 900.0)],
        LeadTime(840.0 * LEAD_MARGIN + 60.0, "instance", 3, 840.0),
    ),
    (
        "else the fleet's median",
        None,
        [("i-2", 600.0), ("i-3", 1200.0)],
        LeadTime(900.0 * LEAD_MARGIN + 60.0, "fleet", 2, 900.0),
    ),
    ("else the default", None, [], LeadTime(DEFAULT_LEAD_TIME, "default")),
    ("a zero duration is no measurement", None, [("i-1", 0.0)], LeadTime(DEFAULT_LEAD_TIME, "default")),
]


@pytest.mark.parametrize(
    ("name", "rule", "durations", "expected"), LEAD_CASES, ids=[c[0] for c in LEAD_CASES]
)
def test_lead_time(
    name: str, rule: float | None, durations: list[tuple[str, float]], expected: LeadTime
) -> None:
    assert lead_time(rule, "i-1", durations, interval=60.0) == expected


def test_the_explanation_says_level_rate_crossing_and_lead_time() -> None:
    # 0.9 %/min for half an hour, now at 71 %: 80 % in 10 min.
    values = [71.0 - 0.9 * (30 - m) for m in range(31)]
    found = judge(
        fit(curve(values), MEMORY_80, 1800.0, window=WINDOW, min_samples=10),
        MEMORY_80,
        LeadTime(840 * LEAD_MARGIN + 60, "instance", 3, 840),
    )

    assert explain(MEMORY_80, found) == (
        "memory 71% rising 0.9%/min, projected to cross 80% in 10 min; "
        "plan changes here take 14 min (22 min ahead, with its margin)"
    )


def soon(crosses_in: float = 300.0, lead: float = 600.0) -> Projection:
    return Projection(Verdict.SOON, 30, 70.0, None, None, crosses_in, LeadTime(lead, "rule"))


def later(crosses_in: float, lead: float = 600.0) -> Projection:
    return Projection(Verdict.LATER, 30, 70.0, None, None, crosses_in, LeadTime(lead, "rule"))


STEP_CASES: list[tuple[str, Projection, Episode, Step, Episode]] = [
    ("soon, no episode: raise", soon(), Episode(), Step.RAISE, Episode(100.0, 100.0)),
    ("soon in an episode seen earlier: raise", soon(), Episode(40.0), Step.RAISE, Episode(40.0, 100.0)),
    ("soon, already raised: hold", soon(), Episode(40.0, 70.0), Step.HOLD, Episode(40.0, 70.0)),
    ("heading, later: an episode starts", later(900.0), Episode(), Step.HOLD, Episode(100.0)),
    ("wobbling past the lead time: hold", later(900.0), Episode(40.0, 70.0), Step.HOLD, Episode(40.0, 70.0)),
    ("two lead times away: the episode ends", later(1200.0), Episode(40.0, 70.0), Step.CLEAR, Episode()),
    (
        "no trend: the episode ends",
        Projection(Verdict.NO_TREND, 30),
        Episode(40.0, 70.0),
        Step.CLEAR,
        Episode(),
    ),
    (
        "crossed: the episode goes on",
        Projection(Verdict.CROSSED, 30),
        Episode(40.0, 70.0),
        Step.HOLD,
        Episode(40.0, 70.0),
    ),
    (
        "too few samples: unknown",
        Projection(Verdict.TOO_FEW, 3),
        Episode(40.0, 70.0),
        Step.UNKNOWN,
        Episode(40.0, 70.0),
    ),
]


@pytest.mark.parametrize(
    ("name", "found", "episode", "step", "after"), STEP_CASES, ids=[c[0] for c in STEP_CASES]
)
def test_forecast_step(name: str, found: Projection, episode: Episode, step: Step, after: Episode) -> None:
    assert forecast_step(found, episode, 100.0) == (step, after)


def test_one_climb_raises_one_forecast_and_a_second_climb_another() -> None:
    """Poll by poll: a ramp, its crossing, the upgrade's drop, then a second ramp."""
    values = ramp(40) + [40.0] * 30 + ramp(35, start=45)
    episode, raised = Episode(), []
    for minute in range(len(values)):
        points = curve(values[: minute + 1])
        found = project(
            points,
            MEMORY_80,
            minute * MIN,
            window=WINDOW,
            min_samples=MIN_SAMPLES,
            lead=LeadTime(600, "rule"),
        )
        step, episode = forecast_step(found, episode, minute * MIN)
        if step is Step.RAISE:
            raised.append(minute)

    assert raised == [21, 71 + 26]


def test_the_event_id_is_one_per_episode() -> None:
    assert forecast_event_id("i-1", "memory", 40.0) == forecast_event_id("i-1", "memory", 40.0)
    assert forecast_event_id("i-1", "memory", 40.0) != forecast_event_id("i-1", "memory", 100.0)
    assert forecast_event_id("i-1", "memory", 40.0).startswith("forecast-")


# --- properties over generated curves ---------------------------------------------------------

leads = st.floats(min_value=60, max_value=3600)


@settings(max_examples=150, deadline=None)
@given(
    level=st.floats(min_value=5, max_value=74),
    amplitude=st.floats(min_value=0, max_value=5),
    count=st.integers(min_value=20, max_value=90),
    seed=st.integers(min_value=0, max_value=2**32),
    lead=leads,
)
def test_flat_noise_never_forecasts(
    level: float, amplitude: float, count: int, seed: int, lead: float
) -> None:
    assert run(noise(level, amplitude, count, seed), lead).verdict is not Verdict.SOON


@settings(max_examples=150, deadline=None)
@given(
    level=st.floats(min_value=5, max_value=70),
    amplitude=st.floats(min_value=0, max_value=2),
    count=st.integers(min_value=20, max_value=60),
    seed=st.integers(min_value=0, max_value=2**32),
    where=st.floats(min_value=0, max_value=1),
    height=st.floats(min_value=0, max_value=79.9),
    lead=leads,
)
def test_a_single_spike_never_forecasts(
    level: float, amplitude: float, count: int, seed: int, where: float, height: float, lead: float
) -> None:
    values = spike(noise(level, amplitude, count, seed), round(where * (count - 1)), max(height, level))

    assert run(values, lead).verdict is not Verdict.SOON


@settings(max_examples=200, deadline=None)
@given(
    start=st.floats(min_value=0, max_value=60),
    rate=st.floats(min_value=0.05, max_value=5),  # percent a minute
    minutes=st.integers(min_value=MIN_SAMPLES, max_value=120),
    lead=leads,
)
def test_a_steady_ramp_forecasts_the_crossing_at_the_right_time(
    start: float, rate: float, minutes: int, lead: float
) -> None:
    values = [start + rate * m for m in range(minutes)]
    found = run(values, lead)
    now_value = values[-1]
    if now_value > 80:
        assert found.verdict is Verdict.CROSSED
        return
    true_crossing = (80 - now_value) / rate * MIN

    assert found.crosses_in is not None
    assert found.crosses_in == pytest.approx(true_crossing, rel=1e-6, abs=1e-6)
    assert found.verdict is (Verdict.SOON if found.crosses_in < lead else Verdict.LATER)


@settings(max_examples=150, deadline=None)
@given(
    start=st.floats(min_value=0, max_value=50),
    rate=st.floats(min_value=0.1, max_value=3),
    up=st.integers(min_value=MIN_SAMPLES, max_value=40),
    down_rate=st.floats(min_value=0.05, max_value=3),
    down=st.integers(min_value=MIN_SAMPLES // 2, max_value=30),
    lead=leads,
)
def test_a_ramp_that_turned_down_does_not_forecast(
    start: float, rate: float, up: int, down_rate: float, down: int, lead: float
) -> None:
    climbed = [min(start + rate * m, 79.0) for m in range(up)]
    values = climbed + [climbed[-1] - down_rate * m for m in range(1, down + 1)]

    assert run(values, lead).verdict is not Verdict.SOON


# --- the rule's keys, the settings, the decision ---------------------------------------------

GOOD = {"alarm_type": "memory", "above": 80, "forecast": True}


def test_a_forecast_rule_parses_with_its_lead_time() -> None:
    policy = parse_policy({"rules": [{**GOOD, "lead_time": 900}, {"alarm_type": "disk", "forecast": True}]})

    assert [(r.forecast, r.lead_time) for r in policy.rules] == [(True, 900.0), (True, None)]
    assert parse_policy({"rules": [{"alarm_type": "memory", "above": 80}]}).rules[0].forecast is False


@pytest.mark.parametrize(
    ("name", "rule", "fragment"),
    [
        (
            "forecast not a boolean",
            {**GOOD, "forecast": "yes"},
            "rule 1: key 'forecast': expected true or false",
        ),
        ("forecast on a cpu rule", {**GOOD, "alarm_type": "cpu"}, "rule 1: key 'forecast': needs a memory"),
        ("forecast on memory without above", {"alarm_type": "memory", "forecast": True}, "key 'forecast'"),
        (
            "forecast on a disk percent rule",
            {"alarm_type": "disk", "above": 90, "forecast": True},
            "key 'forecast'",
        ),
        (
            "forecast on a rule that does nothing",
            {**GOOD, "action": "none"},
            "key 'forecast': only an 'upgrade'",
        ),
        (
            "lead_time without forecast",
            {"alarm_type": "memory", "above": 80, "lead_time": 60},
            "key 'lead_time'",
        ),
        ("lead_time of zero", {**GOOD, "lead_time": 0}, "key 'lead_time': expected seconds > 0"),
        ("lead_time past a day", {**GOOD, "lead_time": 90000}, "key 'lead_time'"),
        ("lead_time not a number", {**GOOD, "lead_time": "10m"}, "key 'lead_time': expected a number"),
    ],
)
def test_each_forecast_mistake_names_file_rule_and_key(
    name: str, rule: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"rules": [rule]}, "ops/policy.toml")

    message = str(info.value)
    assert message.startswith("POLICY_FILE ops/policy.toml: ") and fragment in message, message
    assert "\n" not in message


def test_the_forecast_settings_default_and_stop_on_a_bad_value_with_one_line() -> None:
    assert (Settings().forecast_window_seconds, Settings().forecast_min_samples) == (1800.0, 10)
    parsed = Settings.from_env({"FORECAST_WINDOW_SECONDS": "600", "FORECAST_MIN_SAMPLES": "5"})
    assert (parsed.forecast_window_seconds, parsed.forecast_min_samples) == (600.0, 5)
    for env in (
        {"FORECAST_WINDOW_SECONDS": "0"},
        {"FORECAST_MIN_SAMPLES": "2"},
        {"FORECAST_MIN_SAMPLES": "x"},
    ):
        with pytest.raises(ConfigError) as raised:
            Settings.from_env(env)
        (name,) = env
        assert str(raised.value).startswith(f"{name}=") and "\n" not in str(raised.value)


NOW = 1_790_000_000.0
INSTANCE = "inst-1"
SETTINGS = Settings(instance_ids=(INSTANCE,))
FORECASTING = Policy((Rule("memory-80", "memory", above=80, forecast=True, lead_time=600),))


def forecast(**changes: Any) -> Alarm:
    """A forecast alarm as the watchdog builds it: 71 % rising 1 %/min, 80 % in 9 min."""
    found = judge(
        fit(curve(ramp(21)), MEMORY_80, 21 * MIN, window=WINDOW, min_samples=MIN_SAMPLES),
        MEMORY_80,
        LeadTime(600, "rule"),
    )
    body = forecast_alarm(
        INSTANCE, MEMORY_80, found, "memory-80", window=WINDOW, now=NOW, triggered_at="2026-09-21T12:00:00Z"
    )
    body["triggered_at"] = NOW - 5
    body["forecast"].update(changes)
    return Alarm("forecast-1", NOW - 1, body, event_key(body))


def test_a_forecast_alarm_carries_its_projection_and_evidence() -> None:
    body = forecast().body

    assert (body["source"], body["alarm_type"], body["value"]) == ("forecast", "memory", 71.0)
    f = body["forecast"]
    assert (f["rule"], f["threshold"], f["crosses_in_seconds"], f["lead_time_seconds"]) == (
        "memory-80",
        80.0,
        540.0,
        600.0,
    )
    # Where the trend is once a plan change started now would be done: 10 min on, 81 %.
    assert f["projected_value"] == pytest.approx(81.0) and f["fit"]["method"] == "theil-sen"
    assert f["fit"]["samples"] == 22 and f["fit"]["rate_per_minute"] == pytest.approx(1.0)
    assert f["explanation"] == (
        "memory 71% rising 1.0%/min, projected to cross 80% in 9 min; the rule's lead time is 10 min"
    )


DECIDE_CASES: list[tuple[str, Alarm, Policy, DecisionState, Any]] = [
    (
        "a forecast upgrades under a forecast rule",
        forecast(projected_value=80.5),
        FORECASTING,
        DecisionState(),
        "upgrade",
    ),
    (
        "a forecast never fires a rule without forecast",
        forecast(projected_value=95),
        Policy((Rule("memory-80", "memory", above=80),)),
        DecisionState(),
        Skip(SkipReason.NO_RULE, "no rule with forecast = true for alarm_type 'memory'"),
    ),
    (
        "the first forecast rule decides, after one that does not forecast",
        forecast(projected_value=85),
        Policy((Rule("plain", "memory", above=80), Rule("ahead", "memory", above=80, forecast=True))),
        DecisionState(),
        "upgrade",
    ),
    (
        "a projection not past the threshold",
        forecast(projected_value=79.9),
        FORECASTING,
        DecisionState(),
        SkipReason.BELOW_THRESHOLD,
    ),
    (
        "a forecast without a projection",
        forecast(projected_value=None),
        FORECASTING,
        DecisionState(),
        SkipReason.VALUE_NOT_NUMERIC,
    ),
    (
        "a forecast during a pause",
        forecast(projected_value=85),
        FORECASTING,
        DecisionState(pause=Pause(INSTANCE, NOW + 600, "ops", "deploy", NOW - 10)),
        SkipReason.PAUSED,
    ),
]


@pytest.mark.parametrize(
    ("name", "given_alarm", "policy", "state", "expected"), DECIDE_CASES, ids=[c[0] for c in DECIDE_CASES]
)
def test_decide_a_forecast(
    name: str, given_alarm: Alarm, policy: Policy, state: DecisionState, expected: Any
) -> None:
    decision = decide(given_alarm, state, SETTINGS, NOW, policy)

    if expected == "upgrade":
        assert isinstance(decision, Upgrade)
        # The nodes do not show the condition yet: no check that they do.
        assert decision.condition is None and decision.scope == f"{INSTANCE}/memory"
        assert decision.reason.startswith("Automatic upgrade ahead of a memory forecast: memory 71% rising")
    elif isinstance(expected, Skip):
        assert decision == expected
    else:
        assert isinstance(decision, Skip) and decision.reason is expected, decision


def test_an_ordinary_alarm_under_a_forecast_rule_is_decided_as_before() -> None:
    body = {"alarm_type": "memory", "value": 85, "instance_id": INSTANCE, "triggered_at": NOW - 5}
    decision = decide(Alarm("e", NOW, body, event_key(body)), DecisionState(), SETTINGS, NOW, FORECASTING)

    assert isinstance(decision, Upgrade) and decision.condition is not None
    assert decision.reason == "Automatic upgrade triggered by memory alarm (85%)"
