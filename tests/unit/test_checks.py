"""The set-up check's verdicts (``shared.checks``), as tables: pure functions of what was read.
The checks against real services are in tests/integration/test_check.py."""

from __future__ import annotations

import pytest

from shared.catalogue import Catalogue
from shared.checks import (
    Level,
    Line,
    Report,
    cost_lines,
    instance_lines,
    plan_lines,
    public_url_line,
    token_lines,
    webhook_url,
    worst_case,
)
from shared.plans import Ladder, parse_plan
from shared.policy import Policy, Rule
from shared.settings import Settings
from tests.cloudamqp_stand_in import PRICES, SHARED_PLANS

CATALOGUE = Catalogue.from_listing(
    [{"name": n, "price": p, "backend": "rabbitmq", "shared": n in SHARED_PLANS} for n, p in PRICES.items()],
    1.0,
)
LISTING = [
    {"id": 359559, "name": "seed-instance", "plan": "bunny-1", "providerid": "3555175d-4055"},
    {"id": 359560, "name": "other", "plan": "hare-3", "providerid": "e0c6e389"},
]
STRONG = "Zq7-kP2mX9vR4tW8yB1nC6dF0gH3jL5s"


@pytest.mark.parametrize(
    ("webhook", "operator", "levels"),
    [
        (None, None, [Level.WARN, Level.WARN]),
        ("short", "sixteen-chars-ok", [Level.WARN, Level.WARN]),
        ("a" * 40, STRONG, [Level.WARN, Level.OK]),  # long, but one character forty times
        (STRONG[::-1], STRONG, [Level.OK, Level.OK]),
    ],
)
def test_tokens_set_and_strong_enough(webhook: str | None, operator: str | None, levels: list[Level]) -> None:
    lines = token_lines(Settings(webhook_token=webhook, operator_token=operator))
    assert [line.level for line in lines] == levels
    shown = "\n".join(f"{line.text} {line.fix}" for line in lines)
    assert all(secret not in shown for secret in (webhook, operator) if secret)


def test_the_webhook_url_given_to_cloudamqp_hides_the_token() -> None:
    local = Settings(webhook_token=STRONG)
    assert webhook_url(local) == "http://localhost:8080/cloudamqp/alarm/<WEBHOOK_TOKEN>"
    assert public_url_line(local).level is Level.WARN
    public = Settings(webhook_token=STRONG, public_url="https://autopilot.example.com")
    line = public_url_line(public)
    assert (
        line.level is Level.OK
        and "https://autopilot.example.com/cloudamqp/alarm/<WEBHOOK_TOKEN>" in line.text
    )
    assert STRONG not in line.text
    assert public_url_line(Settings(public_url="http://autopilot.example.com")).level is Level.WARN


def test_each_configured_instance_is_found_by_id_uuid_or_name_with_its_plan_and_price() -> None:
    settings = Settings(instance_ids=("3555175d-4055", "359560", "seed-instance", "missing"))
    lines = instance_lines(settings, LISTING, CATALOGUE)
    assert [line.level for line in lines] == [Level.OK, Level.OK, Level.OK, Level.FAIL]
    assert lines[0].text == "seed-instance, API id 359559, on bunny-1 ($99 a month)"
    assert lines[1].text == "other, API id 359560, on hare-3 ($597 a month)"
    assert lines[3].check == "instance missing" and "other, seed-instance" in (lines[3].fix or "")


def test_every_plan_named_is_sold_or_a_fail_naming_the_closest() -> None:
    default = Policy.default(Settings(upgrade_plan="bunny-2"))
    [line] = plan_lines(default, CATALOGUE, from_settings=True)
    assert (line.level, line.check) == (Level.FAIL, "UPGRADE_PLAN")
    assert line.text == "'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"
    [sold] = plan_lines(Policy.default(Settings(upgrade_plan="hare-1")), CATALOGUE, from_settings=True)
    assert sold.level is Level.OK
    assert plan_lines(default, Catalogue(), from_settings=True) == []  # nothing read: nothing said


def test_a_rules_worst_case_is_the_dearest_plan_it_can_reach() -> None:
    climb = Rule("m", "memory", plan="next", max_plan=parse_plan("panda-1"))
    assert worst_case(climb, CATALOGUE, [1]) == ("panda-1", 499)
    assert worst_case(climb, CATALOGUE, [1, 3]) == ("panda-3", 1497)
    assert worst_case(Rule("m", "memory"), CATALOGUE, []) == ("rhino-1", 5499)  # the ladder's top
    assert worst_case(Rule("m", "memory", plan="rabbit-1"), CATALOGUE, [5]) == ("rabbit-1", 299)
    small = Rule("d", "disk", plan="next", ladder=Ladder.of(("bunny-1", "rabbit-1")))
    assert worst_case(small, CATALOGUE, [1]) == ("rabbit-1", 299)


def test_the_worst_case_is_said_with_its_cap() -> None:
    policy = Policy(
        (
            Rule("capped", "memory", plan="next", max_monthly_price=1000, over_budget="ask"),
            Rule("open", "disk", plan="next"),
            Rule("quiet", "queue", action="none"),
        )
    )
    lines = cost_lines(policy, Settings(), CATALOGUE, [1])
    assert [(line.level, line.check) for line in lines] == [
        (Level.OK, "rule 1 (capped)"),
        (Level.WARN, "rule 2 (open)"),
    ]
    assert "worst case rhino-1 at $5,499 a month; over max_monthly_price of rule 'capped' $1,000 it asks" in (
        lines[0].text
    )


def test_the_report_exits_0_with_warnings_and_1_with_a_failure() -> None:
    fine = Report((Line(Level.OK, "a", "fine"), Line(Level.WARN, "b", "hm", "do this")), 1.0)
    assert fine.exit_code == 0 and fine.as_dict()["ok"] is True
    assert "fix: do this" in fine.render() and fine.render().endswith("0 failed, 1 warning(s), 1 ok")
    broken = Report((*fine.lines, Line(Level.FAIL, "c", "broken")), 1.0)
    assert broken.exit_code == 1 and broken.as_dict()["failed"] == 1
