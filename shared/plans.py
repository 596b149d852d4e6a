"""CloudAMQP plan names and the upgrade ladder, as pure functions.

A plan is ``<family>-<nodes>`` (``bunny-1``, ``hare-3``). The ladder orders families from
smallest to largest; stepping up keeps the node count, so ``hare-3`` → ``rabbit-3``. A plan is
on the ladder when its family is and its node count is 1, 3 or 5 (so the seed's ``bunny-2`` is
not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_LADDER: tuple[str, ...] = (
    "squirrel-1", "bunny-1", "hare-1", "rabbit-1", "panda-1", "ape-1", "hippo-1", "lion-1", "rhino-1",
)  # fmt: skip

# CloudAMQP's dedicated plans come as single nodes and 3- or 5-node clusters.
NODE_VARIANTS = frozenset({1, 3, 5})

_PLAN = re.compile(r"^([a-z][a-z0-9]*)-([0-9]+)$")


@dataclass(frozen=True)
class Plan:
    family: str
    nodes: int

    def __str__(self) -> str:
        return f"{self.family}-{self.nodes}"


def parse_plan(name: str) -> Plan | None:
    """``hare-3`` → Plan("hare", 3); None when the text is not a plan name."""
    match = _PLAN.match(name.strip().lower()) if isinstance(name, str) else None
    return Plan(match.group(1), int(match.group(2))) if match else None


@dataclass(frozen=True)
class Ladder:
    families: tuple[str, ...]

    @classmethod
    def of(cls, names: tuple[str, ...]) -> Ladder:
        """A ladder from plan names (their node counts do not matter; families do)."""
        families: list[str] = []
        for name in names:
            plan = parse_plan(name)
            if plan is None:
                raise ValueError(f"{name!r} is not a plan name (like bunny-1)")
            if plan.family in families:
                raise ValueError(f"{plan.family!r} appears twice")
            families.append(plan.family)
        if not families:
            raise ValueError("the ladder is empty")
        return cls(tuple(families))

    def position(self, plan: Plan) -> int | None:
        """Rung of ``plan`` (None when its family or node count is not on the ladder)."""
        if plan.family not in self.families or plan.nodes not in NODE_VARIANTS:
            return None
        return self.families.index(plan.family)

    def next_step(self, current: Plan) -> Plan | None:
        """One family up, same node count; None at the top (or when not on the ladder)."""
        pos = self.position(current)
        if pos is None or pos + 1 >= len(self.families):
            return None
        return Plan(self.families[pos + 1], current.nodes)

    def step_down(self, current: Plan) -> Plan | None:
        """One family down, same node count; None at the bottom (or when not on the ladder)."""
        pos = self.position(current)
        if pos is None or pos == 0:
            return None
        return Plan(self.families[pos - 1], current.nodes)

    def at_or_above(self, current: Plan, target: Plan) -> bool:
        """Is ``current`` already at least ``target``? Off-ladder plans compare by name."""
        cur, tgt = self.position(current), self.position(target)
        if cur is None or tgt is None:
            return current == target
        return cur >= tgt and current.nodes >= target.nodes

    def above(self, plan: Plan, ceiling: Plan) -> bool:
        """Is ``plan`` past ``ceiling`` on this ladder?"""
        pos, top = self.position(plan), self.position(ceiling)
        return pos is not None and top is not None and pos > top


def plan_shows(target: str, current: str | None) -> bool:
    """Does the instance's ``current`` plan show the ``target`` an upgrade asked for? Names
    compare as plans (``Hare-3`` is ``hare-3``), and as text when either is no plan name."""
    if current is None:
        return False
    if current == target:
        return True
    wanted, shown = parse_plan(target), parse_plan(current)
    return wanted is not None and shown is not None and shown == wanted
