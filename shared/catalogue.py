"""What CloudAMQP sells: the plan catalogue of ``GET /api/plans``, as a plain value.

Pure: the worker reads the listing (``worker.catalogue``), keeps it in the store with when it
was read, and hands a ``Catalogue`` to the decision. A plan name is looked up as a plan name
(``Hare-3`` is ``hare-3``); a name CloudAMQP does not sell comes with the closest names it
does sell (``bunny-2`` → ``bunny-1``, ``bunny-3``), so a typo is a one-line fix.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.plans import parse_plan

BACKEND = "rabbitmq"  # the instances this project manages; LavinMQ plans are not ours to pick


@dataclass(frozen=True)
class Offer:
    """One plan CloudAMQP sells: its monthly price in USD, and whether it is shared."""

    name: str
    price: float
    shared: bool = False


def plan_key(name: str) -> str:
    """How a plan name is looked up: as a plan (``Hare-3`` → ``hare-3``), else as text."""
    plan = parse_plan(name)
    return str(plan) if plan is not None else name.strip().lower()


@dataclass(frozen=True)
class Catalogue:
    """The plans CloudAMQP sells, by ``plan_key``, and when they were read (epoch seconds).

    ``read_at`` None: expected (an API key is set) but never read — nothing can be said to be
    unsold, and no price is known."""

    offers: Mapping[str, Offer] = field(default_factory=dict)
    read_at: float | None = None

    @property
    def known(self) -> bool:
        return self.read_at is not None

    @classmethod
    def from_listing(cls, items: Iterable[Any], read_at: float) -> Catalogue:
        """``GET /api/plans``' answer (``[{"name", "price", "backend", "shared"}, …]``);
        ValueError when it holds no RabbitMQ plan with a price."""
        offers: dict[str, Offer] = {}
        for item in items:
            if not isinstance(item, Mapping):
                continue
            name, price = item.get("name"), item.get("price")
            backend = item.get("backend")
            if not isinstance(name, str) or not name.strip() or backend not in (None, BACKEND):
                continue
            if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price):
                continue
            offers[plan_key(name)] = Offer(name.strip(), float(price), item.get("shared") is True)
        if not offers:
            raise ValueError("the plan list holds no RabbitMQ plan with a price")
        return cls(offers, read_at)

    def offer(self, name: str | None) -> Offer | None:
        return self.offers.get(plan_key(name)) if name else None

    def sells(self, name: str) -> bool:
        return plan_key(name) in self.offers

    def price(self, name: str | None) -> float | None:
        found = self.offer(name)
        return found.price if found is not None else None

    def closest(self, name: str, count: int = 2) -> list[str]:
        """The plans sold whose names are nearest ``name``: the same family with the nearest
        node counts first (``bunny-2`` → ``bunny-1``, ``bunny-3``), else the most alike names."""
        wanted = parse_plan(name)
        if wanted is None:
            names = {key: offer.name for key, offer in self.offers.items()}
            alike = difflib.get_close_matches(plan_key(name), list(names), n=count, cutoff=0.6)
            return [names[key] for key in alike]
        by_family: dict[str, list[tuple[int, int, str]]] = {}
        for offer in self.offers.values():
            plan = parse_plan(offer.name)
            if plan is not None:
                by_family.setdefault(plan.family, []).append(
                    (abs(plan.nodes - wanted.nodes), plan.nodes, offer.name)
                )
        # The family itself, else the most alike family names (a typo: ``rabit-1``).
        families = [wanted.family] if wanted.family in by_family else []
        families = families or difflib.get_close_matches(wanted.family, list(by_family), n=count, cutoff=0.6)
        found = [name for family in families for _, _, name in sorted(by_family[family])]
        return found[:count]

    def unsold(self, name: str) -> str:
        """``'bunny-2' is not a plan CloudAMQP sells (closest: bunny-1, bunny-3)``."""
        near = self.closest(name)
        hint = f" (closest: {', '.join(near)})" if near else ""
        return f"{name!r} is not a plan CloudAMQP sells{hint}"

    def to_json(self) -> str:
        """The catalogue as the store keeps it (the listing's own shape)."""
        listing = [
            {"name": o.name, "price": o.price, "backend": BACKEND, "shared": o.shared}
            for o in self.offers.values()
        ]
        return json.dumps(listing, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, read_at: float) -> Catalogue:
        return cls.from_listing(json.loads(text), read_at)
