"""``shared.store.segments``: where a batch is cut into the runs ``Unit.record_events`` takes
at once (a table test; pure)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.incidents import plan_incident
from shared.store import Arrival, segments


def arrival(event_id: str, **body: Any) -> Arrival:
    body = {"alarm_type": "memory", "value": 85, "instance_id": "i1", **body}
    alarm = Alarm(event_id, 100.0, body, event_key(body))
    return Arrival(alarm, "i1", plan_incident(alarm, "i1"))


OPEN_A = {"message": "A"}
OPEN_B = {"message": "B"}
RESOLVE_A = {"message": "A", "resolved": True}


@pytest.mark.parametrize(
    ("batch", "runs"),
    [
        ([], []),
        ([("e1", OPEN_A)], [[0]]),
        # Groupings, resolves and other keys go together (record_events applies a run with a
        # resolve one alarm at a time, in order).
        ([("e1", OPEN_A), ("e2", OPEN_A), ("e3", OPEN_B)], [[0, 1, 2]]),
        ([("e1", OPEN_A), ("e2", RESOLVE_A), ("e3", OPEN_A)], [[0, 1, 2]]),
        # The same event again: it must see what its first delivery wrote.
        ([("e1", OPEN_A), ("e2", OPEN_B), ("e1", OPEN_A)], [[0, 1], [2]]),
        ([("e1", OPEN_A), ("e1", OPEN_A), ("e1", OPEN_A)], [[0], [1], [2]]),
        # A run cut starts afresh: an event of the first run may come again in the second.
        ([("e1", OPEN_A), ("e2", OPEN_A), ("e1", OPEN_A), ("e2", OPEN_A)], [[0, 1], [2, 3]]),
    ],
)
def test_segments(batch: list[tuple[str, dict[str, Any]]], runs: list[list[int]]) -> None:
    assert segments([arrival(event_id, **body) for event_id, body in batch]) == runs
