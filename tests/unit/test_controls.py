"""The operator's controls as tables: pause windows, who acts, approval answers, and how a
pause or an approval shows in the decision and in the claim rules."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key, parse_timestamp
from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.controls import (
    GLOBAL,
    ControlError,
    Pause,
    approval_refusal,
    clean_text,
    effective_pause,
    operator_name,
    pause_until,
)
from shared.policy import DecisionState, Policy, Rule, Skip, SkipReason, Upgrade, decide
from shared.policy_file import PolicyError, parse_policy
from shared.settings import Settings

NOW = 1_790_000_000.0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"duration": 600}, NOW + 600),
        ({"duration": 0.5}, NOW + 0.5),
        ({"until": "2026-09-21T15:00:00Z"}, parse_timestamp("2026-09-21T15:00:00Z")),
        ({"until": NOW + 60}, NOW + 60),
    ],
)
def test_a_pause_ends_at_its_until_or_after_its_duration(body: dict[str, Any], expected: float) -> None:
    assert pause_until(body, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "exactly one"),
        ({"until": "2026-01-01T00:00:00Z", "duration": 60}, "exactly one"),
        ({"duration": -5}, "past"),
        ({"duration": 0}, "past"),
        ({"duration": "ten"}, "number of seconds"),
        ({"duration": True}, "number of seconds"),
        ({"duration": float("inf")}, "number of seconds"),
        ({"until": "tomorrow"}, "ISO 8601"),
        ({"until": NOW - 1}, "past"),
        ({"duration": 91 * 86400}, "at most 90 days"),
    ],
)
def test_a_pause_request_that_makes_no_sense_is_refused_with_what_to_fix(
    body: dict[str, Any], why: str
) -> None:
    with pytest.raises(ControlError) as caught:
        pause_until(body, NOW)
    assert caught.value.error == "bad_pause" and why in caught.value.detail


def pause(scope: str, until: float) -> Pause:
    return Pause(scope, until, "alice", "maintenance", NOW - 10)


@pytest.mark.parametrize(
    ("pauses", "instance", "expected"),
    [
        ([], "i1", None),
        ([pause("i1", NOW + 60)], "i1", "i1"),
        ([pause("i1", NOW + 60)], "i2", None),
        ([pause("i1", NOW)], "i1", None),  # ended at NOW
        ([pause(GLOBAL, NOW + 60)], "i2", GLOBAL),
        ([pause("i1", NOW + 60), pause(GLOBAL, NOW + 600)], "i1", GLOBAL),  # the longer one
        ([pause("i1", NOW + 600), pause(GLOBAL, NOW + 60)], "i1", "i1"),
    ],
)
def test_the_pause_that_holds_an_instance_is_its_own_or_the_global_one(
    pauses: list[Pause], instance: str, expected: str | None
) -> None:
    found = effective_pause(pauses, instance, NOW)
    assert (found.scope if found else None) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "token"), ("", "token"), ("  alice ", "alice"), ("x" * 100, "x" * 100)],
)
def test_who_acted_is_the_name_given_else_token(given: Any, expected: str) -> None:
    assert operator_name(given) == expected


@pytest.mark.parametrize("bad", [42, ["alice"], "ali\x00ce", "bob\nmallory", "tab\there", "x" * 501])
def test_a_name_or_reason_that_is_not_plain_text_is_refused(bad: Any) -> None:
    with pytest.raises(ControlError):
        clean_text(bad, "reason")


@pytest.mark.parametrize(
    ("status", "deadline", "expected"),
    [
        ("awaiting_approval", NOW + 60, None),
        ("awaiting_approval", NOW, "expired"),
        ("approved", NOW + 60, "already_approved"),
        ("denied", NOW + 60, "already_denied"),
        ("expired", NOW - 60, "expired"),
        ("succeeded", NOW - 60, "already_approved"),  # approved, then carried out
        ("succeeded", None, "not_awaiting_approval"),  # an upgrade that never asked
        (None, None, "not_found"),
    ],
)
def test_an_approval_answer_is_possible_only_while_it_awaits_within_its_window(
    status: str | None, deadline: float | None, expected: str | None
) -> None:
    refusal = approval_refusal(status, deadline, NOW)
    assert (refusal.error if refusal else None) == expected


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (ClaimRow("s", ClaimStatus.AWAITING, "w1", NOW + 1, NOW + 1800), ClaimVerdict.AWAITING_APPROVAL),
        (ClaimRow("s", ClaimStatus.AWAITING, "w1", NOW, NOW + 1800), ClaimVerdict.GRANTED),
    ],
    ids=["awaiting", "awaiting-past-its-deadline"],
)
def test_a_claim_awaiting_approval_holds_until_the_approval_deadline(
    row: ClaimRow, expected: ClaimVerdict
) -> None:
    assert claim_verdict(row, NOW) is expected


SETTINGS = Settings(instance_ids=("i1",))


def memory(value: float) -> Alarm:
    body = {"alarm_type": "memory", "value": value, "instance_id": "i1", "triggered_at": NOW}
    return Alarm("e1", NOW, body, event_key(body))


@pytest.mark.parametrize(
    ("value", "paused", "expected"),
    [
        (85, False, "upgrade"),
        (85, True, SkipReason.PAUSED),
        (50, True, SkipReason.BELOW_THRESHOLD),  # a pause does not hide why nothing would happen
    ],
)
def test_a_pause_turns_an_upgrade_into_a_paused_skip_that_names_who_and_until_when(
    value: float, paused: bool, expected: Any
) -> None:
    state = DecisionState(pause=pause("i1", NOW + 600) if paused else None)

    decision = decide(memory(value), state, SETTINGS, NOW)

    if expected == "upgrade":
        assert isinstance(decision, Upgrade)
        return
    assert isinstance(decision, Skip) and decision.reason is expected
    if expected is SkipReason.PAUSED:
        assert "alice" in decision.detail and "2026-" in decision.detail


def test_an_approve_rule_carries_its_timeout_into_the_upgrade() -> None:
    policy = Policy((Rule("careful", "memory", plan="hare-1", above=80, approve=True, approve_timeout=900),))

    decision = decide(memory(85), DecisionState(), SETTINGS, NOW, policy)

    assert isinstance(decision, Upgrade) and decision.approve and decision.approve_timeout == 900


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"approve": "yes"}, "key 'approve': expected true or false"),
        ({"approve_timeout": 60}, "key 'approve_timeout': only means something with approve = true"),
        (
            {"approve": True, "approve_timeout": 0},
            "key 'approve_timeout': expected seconds > 0 and at most 604800 (7 days)",
        ),
        (
            {"approve": True, "approve_timeout": 1e12},
            "key 'approve_timeout': expected seconds > 0 and at most 604800 (7 days)",
        ),
        (
            {"approve": True, "action": "none"},
            "key 'approve': only an 'upgrade' or 'resize_disk' rule can ask for approval",
        ),
    ],
)
def test_a_wrong_approval_key_in_the_policy_file_is_one_line_naming_it(
    rule: dict[str, Any], problem: str
) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy({"rules": [{"alarm_type": "memory", **rule}]}, "p.toml")
    assert str(caught.value) == f"POLICY_FILE p.toml: rule 1: {problem}"


def test_approve_in_the_policy_file_with_its_default_timeout() -> None:
    policy = parse_policy({"rules": [{"alarm_type": "memory", "above": 80, "approve": True}]})
    assert policy.rules[0].approve and policy.rules[0].approve_timeout == 3600
