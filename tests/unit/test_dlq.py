"""The dead-letter CLI's pure parts: replay headers, message IDs, the list table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared.dlq import describe, message_ref, parse_args, render_table, summary_row
from shared.envelope import replay_headers

PARKED_HEADERS = {
    "x-autopilot-event-id": "ev1",
    "x-autopilot-received-at": "2026-02-20T08:30:00.000Z",
    "x-autopilot-attempts": 5,
    "x-autopilot-error": "CloudAMQP API answered 503",
    "x-autopilot-status": "retries_exhausted",
    "x-autopilot-failed-at": "2026-02-20T09:00:00Z",
    "x-delivery-count": 3,
    "x-death": [{"count": 1, "reason": "expired"}],
    "x-first-death-queue": "cloudamqp.alarms.retry.10s",
}


def test_given_parked_headers_when_replayed_then_attempts_reset_marked_and_parking_headers_gone() -> None:
    headers = replay_headers(PARKED_HEADERS, "2026-02-21T10:00:00.000Z")

    assert headers == {
        "x-autopilot-event-id": "ev1",
        "x-autopilot-received-at": "2026-02-20T08:30:00.000Z",
        "x-autopilot-attempts": 0,
        "x-autopilot-replayed": "2026-02-21T10:00:00.000Z",
    }


@pytest.mark.parametrize(
    ("message_id", "headers", "expected"),
    [
        ("m1", {"x-autopilot-event-id": "ev1"}, "m1"),
        (None, {"x-autopilot-event-id": "ev1"}, "ev1"),
        (None, {"x-autopilot-event-id": b"ev1"}, "ev1"),
        (None, {}, "body-"),
    ],
)
def test_given_a_message_then_its_id_is_message_id_else_event_id_else_a_body_hash(
    message_id: str | None, headers: dict[str, object], expected: str
) -> None:
    ref = message_ref(message_id, headers, b"{garbage")

    assert ref.startswith(expected)
    assert ref == message_ref(message_id, headers, b"{garbage")


def test_given_parked_messages_then_the_table_has_one_aligned_line_each() -> None:
    alarm = json.dumps({"alarm_type": "memory", "value": 85, "instance_id": "i-1"}).encode()
    rows = [
        summary_row("ev1", PARKED_HEADERS, alarm),
        summary_row("ev2", {"x-first-death-reason": b"delivery_limit"}, b"\xff"),
    ]

    lines = render_table(rows).splitlines()

    assert lines[0].split() == ["FAILED", "AT", "ID", "INSTANCE", "ALARM", "ATTEMPTS", "STATUS", "ERROR"]
    assert lines[1].split()[:7] == [
        "2026-02-20T09:00:00Z",
        "ev1",
        "i-1",
        "memory",
        "85",
        "5",
        "retries_exhausted",
    ]
    assert "broker:delivery_limit" in lines[2] and "(not an alarm)" in lines[2]
    assert lines[1].index("ev1") == lines[2].index("ev2") == lines[0].index("ID")


def test_given_a_body_that_is_not_json_then_show_gives_it_as_text_and_headers_as_json() -> None:
    headers = {"x-autopilot-failed-at": datetime(2026, 2, 20, tzinfo=UTC), "raw": b"\x00"}
    view = describe("body-1", None, headers, b"{not json")

    assert view["body_text"] == "{not json" and "body" not in view
    json.dumps(view)


@pytest.mark.parametrize("argv", [["replay"], ["replay", "id1", "--all"], ["show"], ["purge", "now"]])
def test_given_a_contradictory_command_line_then_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)

    assert info.value.code == 2
