"""The edges: HTTP status → our errors, Retry-After, message → Alarm."""

from __future__ import annotations

import os

import pytest

from shared.alarm import event_key, new_id
from shared.envelope import decode_alarm
from shared.errors import DecodeError, PermanentError, RetryableError
from worker.cloudamqp import classify, parse_retry_after


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, None),
        (202, None),
        (400, PermanentError),
        (401, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
        (429, RetryableError),
        (500, RetryableError),
        (502, RetryableError),
        (503, RetryableError),
    ],
)
def test_classify(status: int, expected: type[Exception] | None) -> None:
    if expected is None:
        classify(status, "", None)
        return
    with pytest.raises(expected) as info:
        classify(status, '{"error": "plan unknown"}', None)
    assert str(status) in str(info.value)


def test_retry_after_seconds_dates_and_caps() -> None:
    assert parse_retry_after("1", 0) == 1
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60
    assert parse_retry_after("99999", 0) == 1800
    assert parse_retry_after("soon", 0) is None
    assert parse_retry_after(None, 0) is None


def test_decode_keeps_the_body_and_reads_our_headers() -> None:
    alarm = decode_alarm(
        b'{"alarm_type": "memory", "extra": [1]}',
        {"x-autopilot-event-id": "ev1", "x-autopilot-attempts": 2, "x-autopilot-replayed": "2026-01-01"},
        None,
        5.0,
    )

    assert alarm.event_id == "ev1" and alarm.attempts == 2 and alarm.replayed
    assert alarm.body == {"alarm_type": "memory", "extra": [1]}
    assert alarm.received_at == 5.0


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not json", b"[1]", b'"text"'])
def test_garbage_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_alarm(body, {}, "m1", 0.0)


def test_event_key_is_content_based_and_order_independent() -> None:
    assert event_key({"a": 1, "b": 2}) == event_key({"b": 2, "a": 1})
    assert event_key({"a": 1}) != event_key({"a": 2})


def test_ids_are_32_hex_digits_and_a_forked_child_does_not_repeat_its_parent() -> None:
    first, second = new_id(), new_id()
    assert first != second and len(first) == 32 and int(first, 16) >= 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert child != new_id()
