"""The receiver's lanes (``receiver.lanes``): which queue an alarm goes to, as a table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from receiver.lanes import Lanes
from shared.settings import Settings
from shared.topology import FAST_QUEUE, WORK_QUEUE

NOW = 1_800_000_000.0
MANAGED = ("inst-a", "inst-b")


def alarm(instance: str = "inst-a", value: Any = 85, **changes: Any) -> dict[str, Any]:
    triggered = datetime.fromtimestamp(NOW - 60, UTC).isoformat().replace("+00:00", "Z")
    body = {"alarm_type": "memory", "value": value, "instance_id": instance, "triggered_at": triggered}
    body.update(changes)
    return body


def lanes() -> Lanes:
    return Lanes(Settings(instance_ids=MANAGED, cooldown_seconds=1800), None)


@pytest.mark.parametrize(
    ("body", "queue"),
    [
        (alarm(), FAST_QUEUE),  # the default rule would upgrade it
        (alarm(value=60), WORK_QUEUE),  # below the threshold
        (alarm("inst-unmanaged"), WORK_QUEUE),
        (alarm(alarm_type="cpu"), WORK_QUEUE),  # no rule for it
        (alarm(resolved=True), WORK_QUEUE),
        (alarm(metadata={"resolved": True}), WORK_QUEUE),
        (alarm(triggered_at="2000-01-01T00:00:00Z"), WORK_QUEUE),  # stale
        (alarm(value="high"), WORK_QUEUE),  # not a number: no rule can fire
        ({"message": "queue depth"}, WORK_QUEUE),
    ],
)
def test_given_a_first_alarm_then_only_what_the_policy_would_upgrade_goes_to_the_fast_lane(
    body: dict[str, Any], queue: str
) -> None:
    assert lanes().queue_for(body, NOW) == queue


@pytest.mark.parametrize(
    ("earlier", "later", "after", "queue"),
    [
        (alarm(), alarm(), 1.0, WORK_QUEUE),  # an identical re-send
        (alarm(), alarm(value=95), 1.0, WORK_QUEUE),  # a reminder of the same instance
        (alarm(), alarm("inst-b"), 1.0, FAST_QUEUE),  # another instance
        (alarm(), alarm(), 1801.0, FAST_QUEUE),  # the cooldown is over: worth a look again
        (alarm(value=60), alarm(value=90), 1.0, FAST_QUEUE),  # crossed the threshold
    ],
)
def test_given_an_earlier_alarm_then_repeats_within_the_cooldown_go_to_the_work_queue(
    earlier: dict[str, Any], later: dict[str, Any], after: float, queue: str
) -> None:
    router = lanes()
    router.queue_for(earlier, NOW)
    assert router.queue_for(later, NOW + after) == queue


def test_given_more_pairs_than_remembered_then_the_oldest_is_forgotten() -> None:
    router = Lanes(Settings(instance_ids=MANAGED), None, remembered=1)
    assert router.queue_for(alarm("inst-a"), NOW) == FAST_QUEUE
    assert router.queue_for(alarm("inst-b"), NOW) == FAST_QUEUE
    assert router.queue_for(alarm("inst-b"), NOW) == WORK_QUEUE
    assert router.queue_for(alarm("inst-a"), NOW) == FAST_QUEUE  # forgotten: first again


def test_given_the_fast_lane_switched_off_then_everything_goes_to_the_work_queue() -> None:
    router = Lanes(Settings(instance_ids=MANAGED, fast_lane=False), None)
    assert router.queue_for(alarm(), NOW) == WORK_QUEUE
