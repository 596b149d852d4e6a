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
QUIET_A = {"message": "A", "metadata": {"resolved": True}}  # no incident change
NO_KEY = {"alarm_type": None}  # ungroupable


@pytest.mark.parametrize(
    ("batch", "runs"),
    [
        ([], []),
        ([("e1", OPEN_A)], [[0]]),
        # Groupings into one key, and other keys, go together.
        ([("e1", OPEN_A), ("e2", OPEN_A), ("e3", OPEN_B)], [[0, 1, 2]]),
        # The same event again: it must see what its first delivery wrote.
        ([("e1", OPEN_A), ("e2", OPEN_B), ("e1", OPEN_A)], [[0, 1], [2]]),
        # A resolve cannot join groupings of its key, nor they a resolve.
        ([("e1", OPEN_A), ("e2", RESOLVE_A), ("e3", OPEN_A)], [[0], [1], [2]]),
        ([("e1", RESOLVE_A), ("e2", RESOLVE_A)], [[0], [1]]),
        # A resolve of another key, and alarms that change no incident, join any run.
        (
            [("e1", OPEN_A), ("e2", OPEN_B | {"resolved": True}), ("e3", QUIET_A), ("e4", NO_KEY)],
            [[0, 1, 2, 3]],
        ),
        ([("e1", RESOLVE_A), ("e2", QUIET_A), ("e3", NO_KEY), ("e4", OPEN_B)], [[0, 1, 2, 3]]),
        # A run cut for one reason starts afresh: the resolve after it joins the new run.
        ([("e1", OPEN_A), ("e1", OPEN_B), ("e3", RESOLVE_A)], [[0], [1, 2]]),
    ],
)
def test_segments(batch: list[tuple[str, dict[str, Any]]], runs: list[list[int]]) -> None:
    assert segments([arrival(event_id, **body) for event_id, body in batch]) == runs
