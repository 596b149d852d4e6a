"""The disk resize's pure parts, as tables: the size to ask for, CloudAMQP's interval between
two resizes (made or seen), the skip a cooling claim names, the ``resize_disk`` rules of a
policy file and their start-up checks, and what Slack and PagerDuty say of a resize."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.disk import DiskKnown, DiskTarget, is_shared, next_size, resize_wait
from shared.notifications import ChannelKind, Endpoint, action_notice, alarm_data
from shared.policy import (
    DecisionState,
    Policy,
    Rule,
    Skip,
    SkipReason,
    Upgrade,
    cooling_down,
    decide,
    resize_cooldown_warnings,
    resolve_disk,
)
from shared.policy_file import PolicyError, load_policy, parse_policy
from shared.settings import Settings
from worker import channels

NOW = 1_790_000_000.0
HOUR = 3600.0
SIX_HOURS = 6 * HOUR
SETTINGS = Settings(instance_ids=("i1",), cooldown_seconds=1800)


def resize(extra_disk: int | None = None, ceiling: int | None = None, cooldown: float = SIX_HOURS) -> Upgrade:
    return Upgrade(
        "i1", "extra disk", "why", "i1/disk", cooldown, disk=DiskTarget(extra_disk, ceiling, False)
    )


@pytest.mark.parametrize(
    ("target", "ceiling", "current", "expected"),
    [
        (None, None, 0, 25),
        (None, None, 25, 50),
        (None, None, 30, 50),  # a size not on the list: the next one above it
        (None, None, 1000, 2000),
        (None, None, 2000, SkipReason.AT_CEILING),  # the largest CloudAMQP sells
        (None, 100, 50, 100),
        (None, 100, 100, SkipReason.AT_CEILING),  # at max_extra_disk
        (None, 75, 50, SkipReason.AT_CEILING),  # the next size would pass it
        (250, None, 0, 250),
        (250, None, 250, SkipReason.ALREADY_AT_OR_ABOVE_TARGET),
        (250, None, 500, SkipReason.ALREADY_AT_OR_ABOVE_TARGET),  # never a shrink
    ],
)
def test_the_extra_disk_to_ask_for(
    target: int | None, ceiling: int | None, current: int, expected: int | SkipReason
) -> None:
    found = resolve_disk(resize(target, ceiling), current)

    if isinstance(expected, SkipReason):
        assert isinstance(found, Skip) and found.reason is expected, found
    else:
        assert found == expected


def test_next_sizes_and_shared_plans() -> None:
    assert [next_size(n) for n in (0, 25, 50, 100, 250, 500, 1000, 2000)] == [
        25, 50, 100, 250, 500, 1000, 2000, None
    ]  # fmt: skip
    assert is_shared("lemur") and is_shared("Tiger") and not is_shared("bunny-1") and not is_shared(None)


@pytest.mark.parametrize(
    ("known", "current", "waits", "says"),
    [
        (None, 0, False, None),  # never read: nothing to count from
        (DiskKnown(25, None), 25, False, None),  # read before, never changed
        (DiskKnown(25, NOW - HOUR), 25, True, "the last resize was 1 h ago"),
        (DiskKnown(25, NOW - SIX_HOURS + 60), 25, True, "next resize in 1 min"),
        (DiskKnown(25, NOW - SIX_HOURS), 25, False, None),
        # Someone else resized it: when is not said, so the interval counts from now.
        (DiskKnown(25, None), 50, True, "from 25 GB to 50 GB outside the autopilot"),
        (DiskKnown(25, NOW - 30 * HOUR), 50, True, "next resize in 6 h"),
    ],
)
def test_a_resize_waits_for_cloudamqps_interval_since_the_last_one_made_or_seen(
    known: DiskKnown | None, current: int, waits: bool, says: str | None
) -> None:
    found = resize_wait(known, current, NOW, SIX_HOURS)

    assert (found is not None) is waits, found
    if found is not None:
        assert says is not None and says in found
        assert "once every 6 h (DISK_RESIZE_INTERVAL_SECONDS=21600)" in found


@pytest.mark.parametrize(
    ("upgrade", "reason", "says"),
    [
        (resize(cooldown=SIX_HOURS), SkipReason.RESIZE_INTERVAL, "once every 6 h"),
        # A rule whose own cooldown is longer than the interval: its cooldown is what binds.
        (resize(cooldown=2 * SIX_HOURS), SkipReason.COOLING_DOWN, "cooldown ends in"),
        (Upgrade("i1", "next", "why", "i1/memory", SIX_HOURS), SkipReason.COOLING_DOWN, "cooldown ends"),
    ],
)
def test_a_cooling_claim_names_the_six_hour_limit_for_a_disk_resize(
    upgrade: Upgrade, reason: SkipReason, says: str
) -> None:
    skip = cooling_down(upgrade, NOW - HOUR, NOW - HOUR + upgrade.cooldown_seconds, NOW, SIX_HOURS)

    assert skip.reason is reason and says in skip.detail, skip
    if reason is SkipReason.RESIZE_INTERVAL:
        assert "started 1 h ago" in skip.detail and "next resize in 5 h" in skip.detail


def disk_alarm(value: Any = 92, alarm_type: str = "disk") -> Alarm:
    body = {"alarm_type": alarm_type, "value": value, "instance_id": "i1", "triggered_at": NOW}
    return Alarm("e1", NOW, body, event_key(body))


def test_a_resize_rule_decides_a_disk_resize_whose_cooldown_is_never_shorter_than_the_interval() -> None:
    rule = Rule("grow", "disk", action="resize_disk", cooldown_seconds=600, disk=DiskTarget(None, 500))
    policy = Policy((rule,))

    decision = decide(disk_alarm(), DecisionState(), SETTINGS, NOW, policy)

    assert isinstance(decision, Upgrade) and decision.kind == "resize_disk"
    assert decision.disk == DiskTarget(None, 500, False)
    assert decision.cooldown_seconds == SETTINGS.disk_resize_interval_seconds == SIX_HOURS
    assert decision.scope == "i1/disk"
    assert decision.reason == "Automatic disk resize triggered by disk alarm (92%)"
    # Verified like the memory rule: the broker check looks at the nodes' disk headroom.
    assert decision.condition is not None and decision.condition.alarm_type == "disk"
    longer = Policy((Rule("grow", "disk", action="resize_disk", cooldown_seconds=86400, disk=DiskTarget()),))
    again = decide(disk_alarm(), DecisionState(), SETTINGS, NOW, longer)
    assert isinstance(again, Upgrade) and again.cooldown_seconds == 86400


def test_the_start_says_which_resize_rules_cooldown_is_raised_to_the_interval() -> None:
    policy = Policy(
        (
            Rule("short", "disk", action="resize_disk", cooldown_seconds=3600, disk=DiskTarget()),
            Rule("default", "disk", action="resize_disk", disk=DiskTarget()),  # COOLDOWN_SECONDS=1800
            Rule("long", "disk", action="resize_disk", cooldown_seconds=86400, disk=DiskTarget()),
            Rule("memory", "memory", above=80, cooldown_seconds=60),
        )
    )

    warnings = resize_cooldown_warnings(policy, SETTINGS)

    assert len(warnings) == 2
    assert warnings[0].startswith("rule 1 (short): cooldown_seconds 3600 is shorter than ")
    assert warnings[1].startswith("rule 2 (default): COOLDOWN_SECONDS 1800 is shorter than ")
    assert all("DISK_RESIZE_INTERVAL_SECONDS=21600" in w and "6 h apart" in w for w in warnings)


def test_the_example_policy_loads_and_its_disk_rule_resizes() -> None:
    policy = load_policy(str(Path(__file__).resolve().parents[2] / "policy.example.toml"))

    decision = decide(disk_alarm(), DecisionState(), SETTINGS, NOW, policy)

    assert isinstance(decision, Upgrade) and (decision.rule, decision.kind) == ("disk-resize", "resize_disk")
    assert decision.disk == DiskTarget(None, 500, False)
    assert resize_cooldown_warnings(policy, SETTINGS) == []  # its cooldown is the six hours


def rules(**rule: Any) -> dict[str, Any]:
    return {"rules": [{"alarm_type": "disk", "action": "resize_disk", **rule}]}


def test_a_policy_file_resize_rule_reads_its_target() -> None:
    [grow] = parse_policy(rules(extra_disk="next", max_extra_disk=250)).rules
    [fixed] = parse_policy(rules(extra_disk=100, approve=True, allow_downtime=True)).rules
    [plain] = parse_policy({"max_plan": "panda-1", **rules()}).rules

    assert (grow.action, grow.disk) == ("resize_disk", DiskTarget(None, 250, False))
    assert fixed.disk == DiskTarget(100, None, True) and fixed.approve
    assert plain.disk == DiskTarget() and plain.max_plan is None  # the plans' ceiling is not its


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"rules": [{"alarm_type": "memory", "action": "resize_disk"}]},
            "rule 1: key 'action': 'resize_disk' answers disk alarms only, not 'memory'",
        ),
        (
            rules(extra_disk=30),
            "rule 1: key 'extra_disk': 30 is not an extra disk size: expected 'next' or one",
        ),
        (rules(extra_disk=0), "rule 1: key 'extra_disk': 0 is not an extra disk size"),
        (rules(extra_disk="more"), "rule 1: key 'extra_disk': 'more' is not an extra disk size"),
        (rules(max_extra_disk=3000), "rule 1: key 'max_extra_disk': 3000 is not an extra disk size"),
        (
            rules(extra_disk=500, max_extra_disk=100),
            "rule 1: key 'max_extra_disk': 100 GB is below extra_disk",
        ),
        (
            rules(allow_downtime=True),
            "rule 1: key 'allow_downtime': true needs approve = true: a person approves each resize",
        ),
        (rules(allow_downtime="yes", approve=True), "rule 1: key 'allow_downtime': expected true or false"),
        (rules(plan="hare-1"), "rule 1: key 'plan': a 'resize_disk' rule resizes the disk and never changes"),
        (
            {"rules": [{"alarm_type": "disk", "extra_disk": 25}]},
            "rule 1: key 'extra_disk': only means something with action = 'resize_disk'",
        ),
        (rules(forecast=True), "rule 1: key 'forecast': only an 'upgrade' rule can act on a forecast"),
        (
            {"rules": [{"alarm_type": "disk", "action": "grow"}]},
            "key 'action': expected 'upgrade', 'resize_disk'",
        ),
    ],
)
def test_a_resize_rule_mistake_is_one_line_naming_file_rule_and_key(
    data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(data, "policy.toml")

    message = str(caught.value)
    assert "\n" not in message and message.startswith("POLICY_FILE policy.toml: ")
    assert problem in message, message


def resize_payload(status: str, **action: Any) -> dict[str, Any]:
    row = {
        "action_id": "ev-9",
        "status": status,
        "instance_id": "i-1",
        "alarm_type": "disk",
        "incident_id": "inc-9",
        "from_plan": "hare-1",
        "plan": None,
        "kind": "resize_disk",
        "extra_disk_from": 25,
        "extra_disk_to": 50,
        **action,
    }
    alarm = Alarm("ev-9", NOW, {"alarm_type": "disk", "value": 92, "instance_id": "i-1"}, "key")
    notice = action_notice(row, alarm_data(alarm))
    assert notice is not None
    assert notice.data["action"]["kind"] == "resize_disk"
    assert (notice.data["action"]["extra_disk_from"], notice.data["action"]["extra_disk_to"]) == (
        row["extra_disk_from"],
        row["extra_disk_to"],
    )
    return {"type": notice.type.value, "timestamp": "2026-12-03T10:00:00.000Z", "data": notice.data}


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (
            resize_payload("succeeded"),
            "Resized the disk of i-1: extra disk 25 → 50 GB (disk alarm, value 92)",
        ),
        (
            resize_payload("dry_run", extra_disk_from=None, extra_disk_to=None),
            "Dry run: would resize the disk of i-1: extra disk ? → the next size up (disk alarm, value 92)",
        ),
        (
            resize_payload("failed", detail="CloudAMQP API answered 400: Invalid"),
            "Disk resize of i-1 (extra disk 25 → 50 GB) failed: CloudAMQP API answered 400: Invalid",
        ),
        (resize_payload("awaiting_approval"), "Disk resize of i-1 (extra disk 25 → 50 GB) awaits approval"),
    ],
)
def test_slack_and_pagerduty_say_a_disk_resize_with_its_sizes(payload: dict[str, Any], text: str) -> None:
    slack = Endpoint("slack-x", ChannelKind.SLACK, "https://hooks.slack.com/services/T/B/secret")
    pagerduty = Endpoint("pd-x", ChannelKind.PAGERDUTY, "http://pd", "ROUTING")

    message = json.loads(channels.slack_request(slack, payload, None).body)
    change = json.loads(channels.pagerduty_request(pagerduty, payload, None).body)

    assert message["text"] == text
    blocks = json.dumps(message["blocks"], ensure_ascii=False)
    assert "*Disk*" in blocks and "*Plan*" not in blocks  # a resize changes no plan
    assert change["payload"]["summary"] == text
