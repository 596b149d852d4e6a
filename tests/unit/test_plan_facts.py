"""The instance page's plan: as CloudAMQP last showed it, unless our last upgrade is newer."""

from __future__ import annotations

from typing import Any

import pytest

from receiver.console_data import plan_facts


def upgrade(at: float, plan_from: str, plan_to: str) -> dict[str, Any]:
    return {"at": at, "detail": {"plan_from": plan_from, "plan_to": plan_to}}


CASES: list[tuple[str, list[dict[str, Any]], tuple[str, float] | None, str | None]] = [
    ("nothing known", [], None, None),
    ("only our last upgrade", [upgrade(100.0, "bunny-1", "hare-1")], None, "hare-1"),
    ("only what was read", [], ("rabbit-1", 50.0), "rabbit-1"),
    ("read after our upgrade", [upgrade(100.0, "bunny-1", "hare-1")], ("rabbit-3", 200.0), "rabbit-3"),
    ("read before our upgrade", [upgrade(100.0, "bunny-1", "hare-1")], ("bunny-1", 50.0), "hare-1"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "upgrades", "read", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_plan_shown(
    name: str, upgrades: list[dict[str, Any]], read: tuple[str, float] | None, expected: str | None
) -> None:
    assert plan_facts(upgrades, read).current == expected
