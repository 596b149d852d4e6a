"""What a plan change costs, and whether it may be made: a pure function of the catalogue, the
plan the instance is on, the plan asked for and the spending caps.

Specific to plan changes (another remedy prices itself elsewhere). ``assess_plan_change``
answers a ``PlanChange`` (both monthly prices and the difference, for every place a person
decides: the action, the audit entry, the notifications, the console, the approval) or a
``Refused`` with the reason a skip records:

- ``unknown_plan``: CloudAMQP does not sell the plan asked for (the closest ones named);
- ``not_in_place``: a move between a shared and a dedicated plan, which CloudAMQP refuses
  for RabbitMQ ("Please create a new instance");
- ``over_budget``: the plan costs more a month than the cap (a rule's ``max_monthly_price``,
  else ``MAX_MONTHLY_PRICE``), or the increase would take what the autopilot added to the
  instance's bill within 30 days past ``MAX_MONTHLY_INCREASE``. A price that is not known
  (no catalogue could be read) is over any cap: a cap is a promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from shared.catalogue import Catalogue

INCREASE_WINDOW = 30 * 86400.0  # MAX_MONTHLY_INCREASE counts the increases of this long


def money(amount: float) -> str:
    """``$5,499``, ``$19.50``."""
    return f"${amount:,.0f}" if float(amount).is_integer() else f"${amount:,.2f}"


def signed(amount: float) -> str:
    """``+$200``, ``-$100``, ``+$0``."""
    return ("-" if amount < 0 else "+") + money(abs(amount))


@dataclass(frozen=True)
class PlanChange:
    """A plan change and its monthly prices (None where not known)."""

    from_plan: str | None
    to_plan: str
    from_price: float | None = None
    to_price: float | None = None

    @property
    def difference(self) -> float | None:
        if self.from_price is None or self.to_price is None:
            return None
        return self.to_price - self.from_price

    @property
    def increase(self) -> float | None:
        """What it adds to the monthly bill: the difference, or the whole new price when the
        current one is not known (never less than nothing)."""
        if self.to_price is None:
            return None
        return max(self.to_price - (self.from_price or 0.0), 0.0)

    def describe(self) -> str:
        """``bunny-1 → rabbit-1, $99 → $299 a month, +$200``."""
        plans = f"{self.from_plan or '?'} → {self.to_plan}"
        if self.to_price is None:
            return f"{plans} (price not known)"
        if self.from_price is None:
            return f"{plans}, {money(self.to_price)} a month"
        assert self.difference is not None
        prices = f"{money(self.from_price)} → {money(self.to_price)} a month"
        return f"{plans}, {prices}, {signed(self.difference)}"

    def as_dict(self) -> dict[str, Any]:
        """What a notification, the audit trail and the API say of it."""
        return {
            "from_plan": self.from_plan,
            "to_plan": self.to_plan,
            "from_price": self.from_price,
            "to_price": self.to_price,
            "difference": self.difference,
            "text": self.describe(),
        }


def priced(catalogue: Catalogue | None, from_plan: str | None, to_plan: str) -> PlanChange:
    """The change with the prices the catalogue knows."""
    if catalogue is None:
        return PlanChange(from_plan, to_plan)
    return PlanChange(from_plan, to_plan, catalogue.price(from_plan), catalogue.price(to_plan))


@dataclass(frozen=True)
class Caps:
    """The spending caps that apply to one upgrade."""

    max_monthly_price: float | None = None
    price_cap_name: str = "MAX_MONTHLY_PRICE"  # or "max_monthly_price of rule 'memory'"
    max_monthly_increase: float | None = None
    increased: float = 0.0  # what the autopilot added to the instance's bill within 30 days


class Refusal(StrEnum):
    UNKNOWN_PLAN = "unknown_plan"
    NOT_IN_PLACE = "not_in_place"
    OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class Refused:
    reason: Refusal
    detail: str
    change: PlanChange


def assess_plan_change(
    catalogue: Catalogue | None, from_plan: str | None, to_plan: str, caps: Caps
) -> PlanChange | Refused:
    """May ``from_plan`` → ``to_plan`` be asked for, and at what price? ``catalogue`` None:
    nothing is checked (no API key, no catalogue to check against)."""
    change = priced(catalogue, from_plan, to_plan)
    if catalogue is None:
        return change
    if catalogue.known and not catalogue.sells(to_plan):
        return Refused(Refusal.UNKNOWN_PLAN, catalogue.unsold(to_plan), change)
    current, target = catalogue.offer(from_plan), catalogue.offer(to_plan)
    if current is not None and target is not None and current.shared != target.shared:
        kinds = {True: "shared", False: "dedicated"}
        detail = (
            f"CloudAMQP cannot move {current.name} ({kinds[current.shared]}) to {target.name} "
            f"({kinds[target.shared]}) in place: that takes a new instance"
        )
        return Refused(Refusal.NOT_IN_PLACE, detail, change)
    over = _over_budget(change, caps, catalogue)
    return change if over is None else Refused(Refusal.OVER_BUDGET, over, change)


def _over_budget(change: PlanChange, caps: Caps, catalogue: Catalogue) -> str | None:
    why = "no plan catalogue could be read yet" if not catalogue.known else "CloudAMQP lists no price"
    unknown = f"the price of {change.to_plan} is not known ({why})"
    cap = caps.max_monthly_price
    if cap is not None:
        if change.to_price is None:
            return f"{unknown}; {caps.price_cap_name} is {money(cap)}"
        if change.to_price > cap:
            return (
                f"{change.to_plan} costs {money(change.to_price)} a month, over "
                f"{caps.price_cap_name} {money(cap)}"
            )
    limit = caps.max_monthly_increase
    if limit is None:
        return None
    increase = change.increase
    if increase is None:
        return f"{unknown}; MAX_MONTHLY_INCREASE is {money(limit)}"
    if increase > 0 and caps.increased + increase > limit:
        return (
            f"{change.describe()} would take what the autopilot added to this instance in 30 days "
            f"to {money(caps.increased + increase)} a month, over MAX_MONTHLY_INCREASE {money(limit)}"
        )
    return None
