"""The decision with CloudAMQP's catalogue and the spending caps as inputs (``shared.policy``):
a plan not sold, a shared ↔ dedicated move and a plan over budget are skips before anything
is claimed; over budget, a rule that asks turns into an approval request. Tables, no I/O."""

from __future__ import annotations

from typing import Any

import pytest

from shared.alarm import Alarm, event_key
from shared.catalogue import Catalogue
from shared.plans import Ladder, parse_plan
from shared.policy import (
    OVER_BUDGET_ASK,
    DecisionState,
    Policy,
    Rule,
    Skip,
    SkipReason,
    Upgrade,
    decide,
    price_check,
    unsold_plan_warnings,
)
from shared.policy_file import PolicyError, parse_policy
from shared.pricing import PlanChange
from shared.settings import Settings
from tests.cloudamqp_stand_in import PRICES, SHARED_PLANS

NOW = 1_790_000_000.0
SETTINGS = Settings(instance_ids=("i1",), upgrade_plan="bunny-2")
CATALOGUE = Catalogue.from_listing(
    [{"name": n, "price": p, "backend": "rabbitmq", "shared": n in SHARED_PLANS} for n, p in PRICES.items()],
    NOW,
)


def alarm(value: Any = 85) -> Alarm:
    body = {"alarm_type": "memory", "value": value, "instance_id": "i1", "triggered_at": NOW}
    return Alarm("e1", NOW, body, event_key(body))


def rule(**changes: Any) -> Policy:
    return Policy((Rule("memory", "memory", **{"plan": "next", "above": 80, **changes}),))


@pytest.mark.parametrize(
    ("name", "policy", "settings", "state", "expected"),
    [
        (
            "the seed's bunny-2 is not sold: no call",
            None,
            SETTINGS,
            DecisionState(current_plan="bunny-1"),
            (SkipReason.UNKNOWN_PLAN, "'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"),
        ),
        (
            "next from the plan last read, priced",
            rule(),
            SETTINGS,
            DecisionState(current_plan="bunny-1"),
            ("hare-1", "bunny-1 → hare-1, $99 → $199 a month, +$100", False),
        ),
        (
            "next past the rule's cap",
            rule(max_monthly_price=150),
            SETTINGS,
            DecisionState(current_plan="bunny-1"),
            (
                SkipReason.OVER_BUDGET,
                "hare-1 costs $199 a month, over max_monthly_price of rule 'memory' $150",
            ),
        ),
        (
            "next past MAX_MONTHLY_PRICE",
            rule(),
            Settings(instance_ids=("i1",), max_monthly_price=150),
            DecisionState(current_plan="bunny-1"),
            (SkipReason.OVER_BUDGET, "over MAX_MONTHLY_PRICE $150"),
        ),
        (
            "the rule's cap wins over MAX_MONTHLY_PRICE",
            rule(max_monthly_price=500),
            Settings(instance_ids=("i1",), max_monthly_price=150),
            DecisionState(current_plan="bunny-1"),
            ("hare-1", "bunny-1 → hare-1, $99 → $199 a month, +$100", False),
        ),
        (
            "over budget with over_budget = ask: an approval request, priced",
            rule(max_monthly_price=150, over_budget=OVER_BUDGET_ASK),
            SETTINGS,
            DecisionState(current_plan="bunny-1"),
            ("hare-1", "bunny-1 → hare-1, $99 → $199 a month, +$100", True),
        ),
        (
            "over budget with approve = true: an approval request, priced",
            rule(max_monthly_price=150, approve=True),
            SETTINGS,
            DecisionState(current_plan="bunny-1"),
            ("hare-1", "bunny-1 → hare-1, $99 → $199 a month, +$100", True),
        ),
        (
            "shared to dedicated is refused before any call",
            rule(plan="bunny-1"),
            SETTINGS,
            DecisionState(current_plan="tiger"),
            (SkipReason.NOT_IN_PLACE, "CloudAMQP cannot move tiger (shared) to bunny-1 (dedicated) in place"),
        ),
        (
            "MAX_MONTHLY_INCREASE counts what the autopilot added within 30 days",
            rule(),
            Settings(instance_ids=("i1",), max_monthly_increase=150),
            DecisionState(current_plan="bunny-1", increased=100),
            (SkipReason.OVER_BUDGET, "over MAX_MONTHLY_INCREASE $150"),
        ),
        (
            "next with no plan read yet: priced after the instance is read",
            rule(max_monthly_price=150),
            SETTINGS,
            DecisionState(),
            ("next", None, False),
        ),
        (
            "a fixed plan is priced without the current plan",
            rule(plan="rabbit-1", max_monthly_price=250),
            SETTINGS,
            DecisionState(),
            (SkipReason.OVER_BUDGET, "rabbit-1 costs $299 a month"),
        ),
    ],
)
def test_decide_with_the_catalogue(
    name: str, policy: Policy | None, settings: Settings, state: DecisionState, expected: tuple[Any, ...]
) -> None:
    decision = decide(alarm(), state, settings, NOW, policy, CATALOGUE)

    if isinstance(expected[0], SkipReason):
        assert isinstance(decision, Skip), decision
        assert decision.reason is expected[0] and expected[1] in decision.detail, decision.detail
        return
    assert isinstance(decision, Upgrade), decision
    plan, text, asks = expected
    target = decision.change.to_plan if decision.change is not None else decision.plan
    assert (target, decision.change.describe() if decision.change else None, decision.approve) == (
        plan,
        text,
        asks,
    )
    assert (decision.budget_note is not None) == (asks and name.startswith("over budget"))


def test_without_an_api_key_nothing_is_checked_and_the_seed_plan_stands() -> None:
    decision = decide(alarm(), DecisionState(current_plan="bunny-1"), SETTINGS, NOW, None, None)
    assert isinstance(decision, Upgrade) and decision.plan == "bunny-2" and decision.change is None


def test_an_approval_stands_for_the_price_it_showed_and_no_more_and_never_for_a_plan_not_sold() -> None:
    upgrade = decide(
        alarm(), DecisionState(current_plan="bunny-1"), SETTINGS, NOW, rule(max_monthly_price=10)
    )
    assert isinstance(upgrade, Upgrade)
    over = price_check(upgrade, "bunny-1", "hare-1", CATALOGUE, SETTINGS, 0.0)
    assert isinstance(over, Skip) and over.reason is SkipReason.OVER_BUDGET
    approved = price_check(upgrade, "bunny-1", "hare-1", CATALOGUE, SETTINGS, 0.0, approved_price=199)
    assert approved == PlanChange("bunny-1", "hare-1", 99, 199)
    dearer = price_check(upgrade, "bunny-1", "rabbit-1", CATALOGUE, SETTINGS, 0.0, approved_price=199)
    assert isinstance(dearer, Skip) and dearer.reason is SkipReason.OVER_BUDGET  # more than was shown
    unsold = price_check(upgrade, "bunny-1", "bunny-2", CATALOGUE, SETTINGS, 0.0, approved_price=10_000)
    assert isinstance(unsold, Skip) and unsold.reason is SkipReason.UNKNOWN_PLAN


def test_plan_names_not_sold_are_one_warning_each_with_the_closest() -> None:
    assert unsold_plan_warnings(Policy.default(SETTINGS), CATALOGUE, from_settings=True) == [
        "UPGRADE_PLAN 'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"
    ]
    odd = Policy(
        (
            Rule(
                "m",
                "memory",
                plan="rabit-1",
                ladder=Ladder.of(("bunny-1", "wombat-1", "hare-1")),
                max_plan=parse_plan("hare-1"),
            ),
        )
    )
    assert unsold_plan_warnings(odd, CATALOGUE) == [
        "rule 1 (m): plan 'rabit-1' is not a plan CloudAMQP sells (closest: rabbit-1, rabbit-3)",
        "rule 1 (m): ladder 'wombat-1' is not a plan CloudAMQP sells",
    ]
    assert unsold_plan_warnings(Policy.default(SETTINGS), Catalogue(), from_settings=True) == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ({"max_monthly_price": "lots"}, "rule 1: key 'max_monthly_price': expected a number"),
        ({"max_monthly_price": -1}, "rule 1: key 'max_monthly_price': expected US dollars a month, >= 0"),
        ({"over_budget": "pay"}, "rule 1: key 'over_budget': expected 'skip' or 'ask'"),
        ({"action": "none", "over_budget": "ask"}, "only an 'upgrade' rule can ask"),
        ({"action": "none", "max_monthly_price": 10}, "only an 'upgrade' rule spends money"),
    ],
)
def test_budget_keys_are_checked_at_start(toml: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_policy({"rules": [{"alarm_type": "memory", **toml}]}, "p.toml")


def test_budget_keys_and_fields_are_read() -> None:
    policy = parse_policy(
        {
            "rules": [{"alarm_type": "memory", "max_monthly_price": 500, "over_budget": "ask"}],
            "fields": {"alarm_type": "type", "instance_id": "metadata.instance"},
        }
    )
    assert (policy.rules[0].max_monthly_price, policy.rules[0].over_budget) == (500.0, "ask")
    assert policy.fields.describe() == {"alarm_type": "type", "instance_id": "metadata.instance"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "type"}, "[fields] key 'kind': not a field the autopilot reads"),
        ({"alarm_type": 3}, "[fields] key 'alarm_type': expected the payload's key or dotted path"),
        ({"instance_id": "metadata..instance"}, "[fields] key 'instance_id': 'metadata..instance' is not"),
        ("type", "[fields] key 'fields': expected a table"),
    ],
)
def test_a_bad_field_map_stops_the_start_naming_the_key(fields: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy({"rules": [{"alarm_type": "memory"}], "fields": fields}, "p.toml")
