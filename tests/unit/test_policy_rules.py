"""Rule matching, ladder stepping and policy-file validation, as tables."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.plans import Ladder, parse_plan
from shared.policy import (
    DecisionState,
    Policy,
    Rule,
    Skip,
    SkipReason,
    Upgrade,
    decide,
    made_already,
    off_ladder_warnings,
    resolve_plan,
)
from shared.policy_file import PolicyError, parse_policy
from shared.records import Asked
from shared.settings import Settings
from shared.statuses import ActionStatus, unanswered
from tests.unit.test_disk_resize import resize

NOW = 1_790_000_000.0
SETTINGS = Settings(instance_ids=("i1", "i2"), cooldown_seconds=1800)
LADDER = Ladder.of(("squirrel-1", "bunny-1", "hare-1", "rabbit-1", "panda-1"))


def alarm(alarm_type: str = "memory", value: Any = 85, instance: str = "i1") -> Alarm:
    body = {"alarm_type": alarm_type, "value": value, "instance_id": instance, "triggered_at": NOW}
    return Alarm("e1", NOW, body, event_key(body))


POLICY = Policy(
    (
        Rule("mem-i2", "memory", plan="rabbit-1", above=70, instances=("i2",), cooldown_seconds=60),
        Rule("mem", "memory", plan="next", above=80, ladder=LADDER, max_plan=parse_plan("rabbit-1")),
        Rule("disk-band", "disk", plan="next", above=50, below=90),
        Rule("queue", "queue", action="none"),
    )
)


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        (
            "first match wins: the per-instance override",
            alarm(value=75, instance="i2"),
            ("mem-i2", "rabbit-1"),
        ),
        ("override does not apply to other instances", alarm(value=75), SkipReason.BELOW_THRESHOLD),
        ("general memory rule", alarm(value=85), ("mem", "next")),
        ("disk inside the band", alarm("disk", 60), ("disk-band", "next")),
        ("disk above the band", alarm("disk", 95), SkipReason.BELOW_THRESHOLD),
        ("disk value not a number", alarm("disk", "full"), SkipReason.VALUE_NOT_NUMERIC),
        ("queue rule only opens incidents", alarm("queue", 10_000), SkipReason.NO_ACTION),
        ("no rule for cpu", alarm("cpu", 99), SkipReason.NO_RULE),
    ],
)
def test_rule_matching(name: str, given: Alarm, expected: Any) -> None:
    decision = decide(given, DecisionState(), SETTINGS, NOW, POLICY)

    if isinstance(expected, SkipReason):
        assert isinstance(decision, Skip) and decision.reason is expected, decision
    else:
        assert isinstance(decision, Upgrade), decision
        assert (decision.rule, decision.plan) == expected


def test_rule_cooldown_and_scope_are_per_instance_and_alarm_type() -> None:
    decision = decide(alarm(value=75, instance="i2"), DecisionState(), SETTINGS, NOW, POLICY)

    assert isinstance(decision, Upgrade)
    assert (decision.scope, decision.cooldown_seconds) == ("i2/memory", 60)
    disk = decide(alarm("disk", 60, "i2"), DecisionState(), SETTINGS, NOW, POLICY)
    assert isinstance(disk, Upgrade) and disk.scope == "i2/disk" and disk.cooldown_seconds == 1800


def upgrade(plan: str = "next", max_plan: str | None = None, ladder: Ladder = LADDER) -> Upgrade:
    return Upgrade(
        "i1",
        plan,
        "why",
        "i1/memory",
        1800,
        ladder=ladder,
        max_plan=parse_plan(max_plan) if max_plan else None,
    )


@pytest.mark.parametrize(
    ("name", "target", "current", "expected"),
    [
        ("next from bunny-1", upgrade(), "bunny-1", "hare-1"),
        ("three nodes stay three nodes", upgrade(), "hare-3", "rabbit-3"),
        ("five nodes stay five nodes", upgrade(), "bunny-5", "hare-5"),
        ("top of the ladder", upgrade(), "panda-1", SkipReason.AT_CEILING),
        ("top of the ladder, -3 variant", upgrade(), "panda-3", SkipReason.AT_CEILING),
        ("next would pass max_plan", upgrade(max_plan="hare-1"), "hare-1", SkipReason.AT_CEILING),
        ("max_plan reached exactly by this step", upgrade(max_plan="rabbit-1"), "hare-1", "rabbit-1"),
        ("current plan not on the ladder", upgrade(), "lemur-1", SkipReason.PLAN_NOT_ON_LADDER),
        ("current plan unreadable", upgrade(), None, SkipReason.PLAN_UNKNOWN),
        ("fixed plan, already there", upgrade("rabbit-1"), "rabbit-1", SkipReason.ALREADY_AT_OR_ABOVE_TARGET),
        ("fixed plan, already above", upgrade("hare-1"), "panda-1", SkipReason.ALREADY_AT_OR_ABOVE_TARGET),
        ("fixed plan, below it", upgrade("rabbit-1"), "bunny-1", "rabbit-1"),
        ("fixed plan off the ladder passes through", upgrade("bunny-2"), "bunny-1", "bunny-2"),
        (
            "fixed plan off the ladder, already on it",
            upgrade("bunny-2"),
            "bunny-2",
            SkipReason.ALREADY_AT_OR_ABOVE_TARGET,
        ),
        ("fixed plan, no read possible", upgrade("bunny-2"), None, "bunny-2"),
    ],
)
def test_resolve_plan(name: str, target: Upgrade, current: str | None, expected: Any) -> None:
    result = resolve_plan(target, current)

    if isinstance(expected, SkipReason):
        assert isinstance(result, Skip) and result.reason is expected, result
    else:
        assert result == expected


@pytest.mark.parametrize(
    ("rule", "asked", "now_on", "made"),
    [
        # ``next`` asked hare-1 from bunny-1: hare-1 now is that change made, never a step to do.
        ("next", "hare-1", "hare-1", True),
        ("next", "hare-1", "rabbit-1", True),  # more than asked: nothing to ask either
        ("next", "hare-1", "bunny-1", False),  # not made (or undone): asked again, hare-1
        ("next", "hare-3", "hare-1", False),  # the nodes count too
        ("rabbit-1", "rabbit-1", "rabbit-1", True),
        ("next", "bunny-2", "bunny-2", True),  # off the ladder: by name
        ("next", "bunny-2", "bunny-1", False),
        ("next", "hare-1", None, False),  # nothing read (the blog's world): asked again
    ],
)
def test_a_change_whose_answer_never_came_is_made_when_the_instance_shows_it(
    rule: str, asked: str, now_on: str | None, made: bool
) -> None:
    assert made_already(upgrade(rule), Asked(NOW, asked, "bunny-1"), now_on, None) is made


@pytest.mark.parametrize(
    ("asked_to", "extra_disk", "made"), [(25, 25, True), (25, 50, True), (25, 0, False), (25, None, False)]
)
def test_a_disk_resize_whose_answer_never_came_is_made_when_the_nodes_show_it(
    asked_to: int, extra_disk: int | None, made: bool
) -> None:
    assert made_already(resize(), Asked(NOW, None, "hare-1", 0, asked_to), "hare-1", extra_disk) is made


@pytest.mark.parametrize(
    ("status", "reason", "asked_at", "expected"),
    [
        (ActionStatus.RETRYING, "unanswered", NOW, True),  # no answer came
        (ActionStatus.IN_PROGRESS, None, NOW, True),  # its worker stopped while the call was out
        (ActionStatus.IN_PROGRESS, None, None, False),  # stopped before anything was asked
        (ActionStatus.IN_PROGRESS, "reconfiguring", NOW, False),  # CloudAMQP answered: followed
        (ActionStatus.RETRYING, None, NOW, False),  # CloudAMQP answered no (a 503)
        (ActionStatus.RETRYING, "busy", NOW, False),
        (ActionStatus.SUCCEEDED, None, NOW, False),
        (ActionStatus.FAILED, "unanswered", NOW, False),  # parked: an operator's to look at
        (None, None, None, False),  # no action row
    ],
)
def test_which_action_rows_leave_a_change_unanswered(
    status: ActionStatus | None, reason: str | None, asked_at: float | None, expected: bool
) -> None:
    assert unanswered(status, reason, asked_at) is expected


def test_the_seed_plan_is_not_on_the_default_ladder_and_warned_about() -> None:
    warnings = off_ladder_warnings(Policy.default(Settings(upgrade_plan="bunny-2")))

    assert len(warnings) == 1 and "bunny-2" in warnings[0]
    assert off_ladder_warnings(Policy.default(Settings(upgrade_plan="next"))) == []


GOOD_RULE = {"alarm_type": "memory", "above": 80, "plan": "next"}


@pytest.mark.parametrize(
    ("name", "data", "fragment"),
    [
        ("unknown top-level key", {"rules": [GOOD_RULE], "rulez": []}, "key 'rulez': unknown key"),
        (
            "unknown rule key",
            {"rules": [GOOD_RULE, {**GOOD_RULE, "abve": 3}]},
            "rule 2: key 'abve': unknown key",
        ),
        ("unknown alarm type", {"rules": [{**GOOD_RULE, "alarm_type": "ram"}]}, "rule 1: key 'alarm_type'"),
        (
            "max_plan not a plan name",
            {"rules": [{**GOOD_RULE, "max_plan": "biggest"}]},
            "rule 1: key 'max_plan'",
        ),
        (
            "max_plan not on the ladder",
            {"rules": [{**GOOD_RULE, "max_plan": "lemur-1"}]},
            "rule 1: key 'max_plan'",
        ),
        (
            "ladder entry not a plan name",
            {"ladder": ["bunny-1", "huge"], "rules": [GOOD_RULE]},
            "key 'ladder'",
        ),
        (
            "rule ladder entry not a plan name",
            {"rules": [{**GOOD_RULE, "ladder": ["x"]}]},
            "rule 1: key 'ladder'",
        ),
        ("below not above 'above'", {"rules": [{**GOOD_RULE, "below": 80}]}, "rule 1: key 'below'"),
        ("threshold not a number", {"rules": [{**GOOD_RULE, "above": "80%"}]}, "rule 1: key 'above'"),
        ("unknown action", {"rules": [{**GOOD_RULE, "action": "restart"}]}, "rule 1: key 'action'"),
        ("no rules", {"ladder": ["bunny-1"]}, "key 'rules'"),
        (
            "negative cooldown",
            {"rules": [{**GOOD_RULE, "cooldown_seconds": -1}]},
            "rule 1: key 'cooldown_seconds'",
        ),
    ],
)
def test_each_policy_mistake_names_file_rule_and_key(name: str, data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data, "ops/policy.toml")

    message = str(info.value)
    assert message.startswith("POLICY_FILE ops/policy.toml: ") and fragment in message, message
    assert "\n" not in message


def test_a_top_level_max_plan_is_every_rules_default_ceiling() -> None:
    policy = parse_policy({"max_plan": "hare-1", "rules": [GOOD_RULE, {**GOOD_RULE, "max_plan": "panda-1"}]})

    assert [str(r.max_plan) for r in policy.rules] == ["hare-1", "panda-1"]
