"""CloudAMQP's plan catalogue and the price of a plan change, as tables (``shared.catalogue``,
``shared.pricing``): pure, against the prices ``GET /api/plans`` was recorded answering."""

from __future__ import annotations

import json

import pytest

from shared.catalogue import Catalogue
from shared.pricing import Caps, PlanChange, Refusal, Refused, assess_plan_change, money, signed
from tests.cloudamqp_stand_in import PRICES, SHARED_PLANS

READ_AT = 1_790_000_000.0
LISTING = [
    {"name": name, "price": price, "backend": "rabbitmq", "shared": name in SHARED_PLANS}
    for name, price in PRICES.items()
]
CATALOGUE = Catalogue.from_listing(LISTING, READ_AT)


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("bunny-2", ["bunny-1", "bunny-3"]),  # the blog's target: same family, nearest node counts
        ("rabbit-4", ["rabbit-3", "rabbit-5"]),
        ("squirrel-3", ["squirrel-1"]),  # the only squirrel sold
        ("rabit-1", ["rabbit-1", "rabbit-3"]),  # a typo: the most alike names
        ("wombat-1", []),  # nothing alike
    ],
)
def test_a_name_not_sold_comes_with_the_closest_names_sold(name: str, closest: list[str]) -> None:
    assert not CATALOGUE.sells(name)
    assert CATALOGUE.closest(name) == closest


def test_the_unsold_sentence_names_the_plan_and_the_closest() -> None:
    assert (
        CATALOGUE.unsold("bunny-2") == "'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)"
    )


def test_names_are_looked_up_as_plans_and_shared_plans_are_marked() -> None:
    assert CATALOGUE.sells("Hare-3") and CATALOGUE.price(" hare-3 ") == 597
    lemur = CATALOGUE.offer("lemur")
    assert lemur is not None and lemur.shared and lemur.price == 0
    assert CATALOGUE.price(None) is None and CATALOGUE.price("bunny-2") is None


def test_the_listing_keeps_rabbitmq_plans_with_a_price_and_survives_the_store() -> None:
    listing = [
        *LISTING[:3],
        {"name": "lavinmq-1", "price": 10, "backend": "lavinmq", "shared": False},
        {"name": "bad-1", "price": "lots", "backend": "rabbitmq"},
        {"name": "", "price": 1},
        "not a plan",
    ]
    catalogue = Catalogue.from_listing(listing, READ_AT)
    assert sorted(catalogue.offers) == ["lemur", "squirrel-1", "tiger"]
    again = Catalogue.from_json(catalogue.to_json(), READ_AT)
    assert again == catalogue and json.loads(catalogue.to_json())[0]["name"] == "lemur"
    with pytest.raises(ValueError, match="no RabbitMQ plan"):
        Catalogue.from_listing([{"name": "lavinmq-1", "price": 1, "backend": "lavinmq"}], READ_AT)


def test_money_reads_as_a_bill() -> None:
    assert [money(5499), money(19.5), money(0), signed(200), signed(-100.0)] == [
        "$5,499", "$19.50", "$0", "+$200", "-$100",
    ]  # fmt: skip


def test_a_plan_change_says_both_prices_and_the_difference() -> None:
    change = PlanChange("bunny-1", "rabbit-1", 99, 299)
    assert change.describe() == "bunny-1 → rabbit-1, $99 → $299 a month, +$200"
    assert change.as_dict() == {
        "from_plan": "bunny-1", "to_plan": "rabbit-1", "from_price": 99, "to_price": 299,
        "difference": 200, "text": "bunny-1 → rabbit-1, $99 → $299 a month, +$200",
    }  # fmt: skip
    assert PlanChange(None, "rabbit-1", None, 299).describe() == "? → rabbit-1, $299 a month"
    assert PlanChange("bunny-1", "rabbit-1").describe() == "bunny-1 → rabbit-1 (price not known)"


NO_CAPS = Caps()
UNKNOWN = Catalogue()  # an API key, but no catalogue could be read yet


@pytest.mark.parametrize(
    ("name", "catalogue", "current", "target", "caps", "expected"),
    [
        ("sold, no cap", CATALOGUE, "bunny-1", "rabbit-1", NO_CAPS, (99, 299)),
        (
            "not sold",
            CATALOGUE,
            "bunny-1",
            "bunny-2",
            NO_CAPS,
            (Refusal.UNKNOWN_PLAN, "closest: bunny-1, bunny-3"),
        ),
        (
            "shared to dedicated",
            CATALOGUE,
            "lemur",
            "bunny-1",
            NO_CAPS,
            (Refusal.NOT_IN_PLACE, "lemur (shared)"),
        ),
        (
            "dedicated to shared",
            CATALOGUE,
            "bunny-1",
            "tiger",
            NO_CAPS,
            (Refusal.NOT_IN_PLACE, "tiger (shared)"),
        ),
        (
            "over the cap",
            CATALOGUE,
            "bunny-1",
            "rabbit-1",
            Caps(200),
            (Refusal.OVER_BUDGET, "rabbit-1 costs $299 a month, over MAX_MONTHLY_PRICE $200"),
        ),
        ("at the cap", CATALOGUE, "bunny-1", "rabbit-1", Caps(299), (99, 299)),
        (
            "the rule's cap is named",
            CATALOGUE,
            "bunny-1",
            "rhino-1",
            Caps(3000, "max_monthly_price of rule 'memory'"),
            (Refusal.OVER_BUDGET, "$5,499 a month, over max_monthly_price of rule 'memory' $3,000"),
        ),
        (
            "increase within 30 days' cap",
            CATALOGUE,
            "bunny-1",
            "rabbit-1",
            Caps(max_monthly_increase=300, increased=100),
            (99, 299),
        ),
        (
            "increase past 30 days' cap",
            CATALOGUE,
            "bunny-1",
            "rabbit-1",
            Caps(max_monthly_increase=300, increased=150),
            (Refusal.OVER_BUDGET, "to $350 a month, over MAX_MONTHLY_INCREASE $300"),
        ),
        (
            "a move down never passes the increase cap",
            CATALOGUE,
            "rabbit-1",
            "bunny-1",
            Caps(max_monthly_increase=0, increased=900),
            (299, 99),
        ),
        (
            "an unknown current plan counts whole",
            CATALOGUE,
            None,
            "rabbit-1",
            Caps(max_monthly_increase=250),
            (Refusal.OVER_BUDGET, "? → rabbit-1"),
        ),
        (
            "no catalogue yet, a cap: refused",
            UNKNOWN,
            "bunny-1",
            "rabbit-1",
            Caps(1000),
            (Refusal.OVER_BUDGET, "not known (no plan catalogue could be read yet)"),
        ),
        ("no catalogue yet, no cap: unchecked", UNKNOWN, "bunny-1", "bunny-2", NO_CAPS, (None, None)),
        ("no API key: nothing checked", None, "bunny-1", "bunny-2", Caps(1), (None, None)),
    ],
)
def test_assess_plan_change(
    name: str,
    catalogue: Catalogue | None,
    current: str | None,
    target: str,
    caps: Caps,
    expected: tuple[object, object],
) -> None:
    found = assess_plan_change(catalogue, current, target, caps)

    if isinstance(expected[0], Refusal):
        assert isinstance(found, Refused), found
        assert found.reason is expected[0] and str(expected[1]) in found.detail, found.detail
        assert found.change.to_plan == target
    else:
        assert isinstance(found, PlanChange), found
        assert (found.from_price, found.to_price) == expected
