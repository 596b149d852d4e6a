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
    store_lines,
    token_lines,
    webhook_url,
    worst_case,
)
from shared.plans import Ladder, parse_plan
from shared.policy import Policy, Rule
from shared.retention import DAY, Kind
from shared.settings import Settings
from shared.store.retention import Facts
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


STORE_NOW = 1_800_000_000.0


def facts(size: int | None, free: int | None, incremental: bool | None, events_days: float | None) -> Facts:
    oldest: dict[Kind, float | None] = {kind: None for kind in Kind}
    if events_days is not None:
        oldest[Kind.EVENTS] = STORE_NOW - events_days * DAY
    return Facts(oldest, size, free, incremental)


SQLITE_5MB, OFF = facts(5 << 20, 0, True, 3), {"RETENTION_INTERVAL_SECONDS": "0"}


@pytest.mark.parametrize(
    ("env", "found", "size", "retention"),
    [
        (
            {},
            SQLITE_5MB,
            ("ok", "5.0 MB (the SQLite file; 0 bytes free)"),
            ("ok", "events 3 days old (kept 30 days)"),
        ),
        (
            {},
            facts(5 << 20, 1 << 20, False, 3),
            ("warn", "1.0 MB free pages the file never hands back"),
            ("ok", "audit: none"),
        ),
        (
            {},
            facts(2 << 30, None, None, 40),
            ("ok", "2.0 GB (the PostgreSQL database)"),
            ("ok", "events 40 days"),
        ),
        (OFF, facts(1 << 20, 0, True, 40), ("ok", "1.0 MB"), ("warn", "pruning is off")),
        (OFF, facts(1 << 20, 0, True, 20), ("ok", "1.0 MB"), ("ok", "events 20 days old")),
        (
            {"RETENTION_EVENTS_DAYS": "0"},
            facts(1 << 20, 0, True, 400),
            ("ok", "1.0 MB"),
            ("ok", "(kept for ever)"),
        ),
        ({}, facts(None, None, None, 0.5), None, ("ok", "events 12 h old")),
    ],
)
def test_the_store_lines_say_its_size_and_oldest_rows_and_warn_where_they_can_only_grow(
    env: dict[str, str], found: Facts, size: tuple[str, str] | None, retention: tuple[str, str]
) -> None:
    lines = {line.check: line for line in store_lines(Settings.from_env(env), found, STORE_NOW)}
    if size is None:
        assert "store size" not in lines
    else:
        assert (lines["store size"].level.value, size[1] in lines["store size"].text) == (size[0], True), (
            lines
        )
    assert (lines["retention"].level.value, retention[1] in lines["retention"].text) == (
        retention[0],
        True,
    ), lines
