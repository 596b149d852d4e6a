"""The rules of retention as pure functions (``shared.retention``): the limits and cutoffs,
what is finished, an incident's first and last event, the pace of the batches; and the
settings that carry them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.retention import (
    DAY,
    ORDER,
    Kind,
    Limits,
    Pace,
    action_prunable,
    cutoffs,
    ends_going,
    first_and_last,
    next_size,
    notification_prunable,
    pause_after,
    run_deadline,
)
from shared.settings import ConfigError, Settings
from shared.statuses import ActionStatus

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        (
            Limits(),
            {
                Kind.EVENTS: NOW - 30 * DAY,
                Kind.NOTIFICATIONS: NOW - 30 * DAY,
                Kind.INCIDENTS: NOW - 365 * DAY,
                Kind.ACTIONS: NOW - 730 * DAY,
                Kind.AUDIT: NOW - 730 * DAY,
            },
        ),
        (Limits(events=0, notifications=0, incidents=0, audit=0), {}),
        (Limits(events=0.5, notifications=0, incidents=0, audit=0), {Kind.EVENTS: NOW - DAY / 2}),
        (
            Limits(events=7, notifications=1, incidents=0, audit=90),
            {
                Kind.EVENTS: NOW - 7 * DAY,
                Kind.NOTIFICATIONS: NOW - DAY,
                Kind.ACTIONS: NOW - 90 * DAY,
                Kind.AUDIT: NOW - 90 * DAY,
            },
        ),
    ],
)
def test_each_kind_with_a_limit_has_a_cutoff_and_0_keeps_for_ever(
    limits: Limits, expected: dict[Kind, float]
) -> None:
    assert cutoffs(limits, NOW) == expected


def test_events_are_pruned_before_incidents_so_an_incident_takes_its_copies_first() -> None:
    assert list(cutoffs(Limits(), NOW)) == list(ORDER)
    assert ORDER.index(Kind.EVENTS) < ORDER.index(Kind.INCIDENTS)


@pytest.mark.parametrize(
    ("status", "prunable"),
    [
        (ActionStatus.SUCCEEDED, True),
        (ActionStatus.SKIPPED, True),
        (ActionStatus.DRY_RUN, True),
        (ActionStatus.FAILED, True),
        (ActionStatus.UNCONFIRMED, True),
        (ActionStatus.DENIED, True),
        (ActionStatus.EXPIRED, True),
        (ActionStatus.IN_PROGRESS, False),  # calling, or a plan change being applied
        (ActionStatus.RETRYING, False),  # its message waits in a delay queue
        (ActionStatus.AWAITING_APPROVAL, False),
        (ActionStatus.APPROVED, False),
    ],
)
def test_an_action_goes_only_once_finished(status: ActionStatus, prunable: bool) -> None:
    assert action_prunable(status) is prunable


def test_every_action_status_has_its_case_above() -> None:
    assert {s for s in ActionStatus if action_prunable(s)} | {
        ActionStatus.IN_PROGRESS,
        ActionStatus.RETRYING,
        ActionStatus.AWAITING_APPROVAL,
        ActionStatus.APPROVED,
    } == set(ActionStatus)


@pytest.mark.parametrize(
    ("published", "deliveries", "prunable"),
    [
        (True, [], True),  # no endpoint was routed to
        (True, ["delivered"], True),
        (True, ["delivered", "disabled"], True),  # the other endpoint answered 410 Gone
        (True, ["delivered", "retrying"], False),
        (True, ["queued"], False),
        (True, ["parked"], False),  # undelivered: given up, not delivered
        (False, [], False),
    ],
)
def test_a_notification_goes_once_every_endpoint_has_it(
    published: bool, deliveries: list[str], prunable: bool
) -> None:
    assert notification_prunable(published, deliveries) is prunable


def event(event_id: str, recorded_at: float, received_at: float | None = None, **rest: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "recorded_at": recorded_at,
        "received_at": recorded_at if received_at is None else received_at,
        "instance_id": "i1",
        "alarm_type": "memory",
        "incident_change": "grouped",
        "body": "{}",
        **rest,
    }


@pytest.mark.parametrize(
    ("copies", "kept", "expected"),
    [
        ((None, None), (None, None), (None, None)),
        ((None, None), ("a", "c"), ("a", "c")),  # nothing pruned yet
        (("a", "b"), (None, None), ("a", "b")),  # every event pruned: the copies
        (("a", "b"), ("x", "y"), ("a", "y")),  # grouped again since: its newest kept event
        (("a", None), ("x", "y"), ("a", "y")),  # its first went, its last is kept
    ],
)
def test_an_incidents_first_and_last_event_are_its_copies_or_its_kept_events(
    copies: tuple[str | None, str | None],
    kept: tuple[str | None, str | None],
    expected: tuple[str | None, str | None],
) -> None:
    times = {"a": 1.0, "b": 5.0, "c": 9.0, "x": 6.0, "y": 9.0}
    rows = {name: event(name, at) for name, at in times.items()}

    def pick(name: str | None) -> dict[str, Any] | None:
        return rows[name] if name else None

    first, last = first_and_last(pick(copies[0]), pick(copies[1]), pick(kept[0]), pick(kept[1]))

    assert (first and first["event_id"], last and last["event_id"]) == expected


def going(
    name: str, at: float, *, first: bool = False, last: bool = False, copies: Any = (None, None)
) -> Any:
    """An event of incident ``i`` a batch prunes, and the incident's copies so far."""
    return {
        **event(name, at),
        "incident_id": "i",
        "is_first": first,
        "is_last": last,
        "first_copy": copies[0] and json.dumps(event(copies[0], 1.0)),
        "last_copy": copies[1] and json.dumps(event(copies[1], 8.0)),
    }


def names(copies: tuple[str | None, str | None]) -> tuple[str | None, str | None]:
    return tuple(json.loads(c)["event_id"] if c else None for c in copies)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([going("a", 1.0, first=True)], ("a", None)),  # its first goes, a later one is kept
        ([going("z", 9.0, last=True)], (None, "z")),
        ([going("a", 1.0, first=True, last=True)], ("a", "a")),  # its only event
        ([going("a", 1.0, first=True), going("z", 9.0, last=True)], ("a", "z")),
        ([going("b", 2.0, first=True, copies=("a", None))], ("a", None)),  # the first copy stands
        ([going("z", 9.0, last=True, copies=(None, "y"))], (None, "z")),  # newer than the copy
        ([going("x", 7.0, last=True, copies=(None, "y"))], (None, "y")),  # older: the copy stands
        ([going("n", 0.5, first=True, copies=(None, None))], ("n", None)),
    ],
)
def test_of_the_events_going_an_incident_copies_its_first_for_good_and_its_newest_last(
    rows: list[dict[str, Any]], expected: tuple[str | None, str | None]
) -> None:
    assert names(ends_going(rows)["i"]) == expected


@pytest.mark.parametrize(
    ("size", "took", "expected"),
    [
        (100, 0.002, 100),  # on budget
        (100, 0.001, 200),  # quick: towards the budget
        (100, 0.0001, 200),  # very quick: at most doubled
        (100, 0.004, 50),
        (100, 1.0, 50),  # very slow: at most halved
        (10, 1.0, 10),  # never below least
        (4000, 0.0001, 5000),  # never above most
    ],
)
def test_a_batch_is_sized_towards_the_budget(size: int, took: float, expected: int) -> None:
    assert next_size(size, took, Pace()) == expected


@pytest.mark.parametrize(("took", "expected"), [(0.0, 0.02), (0.001, 0.02), (0.01, 0.04), (0.5, 2.0)])
def test_the_pause_after_a_batch_is_four_times_what_it_took_and_at_least_20_ms(
    took: float, expected: float
) -> None:
    assert pause_after(took, Pace()) == pytest.approx(expected)


def test_a_run_ends_before_its_slot_could_be_taken_again() -> None:
    assert run_deadline(1000.0, 3600.0) == 1000.0 + 2880.0


# --- the settings -------------------------------------------------------------------------------


def test_the_limits_default_to_30_30_365_730_days_and_an_hourly_run() -> None:
    s = Settings.from_env({})

    assert s.retention == Limits(events=30, notifications=30, incidents=365, audit=730)
    assert s.retention_interval_seconds == 3600


def test_the_limits_are_read_from_their_variables() -> None:
    s = Settings.from_env(
        {
            "RETENTION_EVENTS_DAYS": "14",
            "RETENTION_NOTIFICATIONS_DAYS": "0",
            "RETENTION_INCIDENTS_DAYS": "90.5",
            "RETENTION_AUDIT_DAYS": "3650",
            "RETENTION_INTERVAL_SECONDS": "0",
        }
    )

    assert s.retention == Limits(events=14, notifications=0, incidents=90.5, audit=3650)
    assert s.retention_interval_seconds == 0


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("RETENTION_EVENTS_DAYS", "-1"),
        ("RETENTION_NOTIFICATIONS_DAYS", "thirty"),
        ("RETENTION_INCIDENTS_DAYS", "inf"),
        ("RETENTION_AUDIT_DAYS", "nan"),
        ("RETENTION_INTERVAL_SECONDS", "-5"),
    ],
)
def test_a_bad_limit_is_one_line_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: value})

    assert str(info.value).startswith(f"{var}=") and "\n" not in str(info.value)


WATCHED = {
    "CLOUDAMQP_INSTANCE_ID": "i1",
    "CLOUDAMQP_INSTANCE_MANAGEMENT_URL": "https://u:p@i1.example.com",
}


def test_events_kept_shorter_than_the_advice_quiet_window_stop_a_watching_process() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**WATCHED, "RETENTION_EVENTS_DAYS": "3"})

    message = str(info.value)
    assert (
        message.startswith("RETENTION_EVENTS_DAYS=3 is invalid") and "ADVICE_QUIET_WINDOW_SECONDS" in message
    )


@pytest.mark.parametrize(
    "env",
    [
        {**WATCHED, "RETENTION_EVENTS_DAYS": "7"},  # as long as the window
        {**WATCHED, "RETENTION_EVENTS_DAYS": "0"},  # for ever
        {**WATCHED, "RETENTION_EVENTS_DAYS": "3", "ADVICE_QUIET_WINDOW_SECONDS": "86400"},
        {**WATCHED, "RETENTION_EVENTS_DAYS": "3", "WATCHDOG_INTERVAL_SECONDS": "0"},  # no watchdog
        {"RETENTION_EVENTS_DAYS": "3"},  # no management URL: no watchdog
    ],
)
def test_events_kept_shorter_are_fine_where_nothing_asks_for_them(env: dict[str, str]) -> None:
    assert Settings.from_env(env).retention_events_days == float(env["RETENTION_EVENTS_DAYS"])
