"""The claim rule in one pure function (``shared.claims.take_claim``, what the first step's fold
uses) and one statement (``Unit.try_claim``, what an approved upgrade uses): on every kind of
row — none, held, stale, awaiting, done, released; its lease and its cooldown run out or not —
they agree on the verdict and on the row left behind, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import pytest

from shared.claims import ClaimAsk, ClaimRow, ClaimStatus, take_claim
from shared.store import Store

NOW, LEASE, COOLDOWN = 10_000.0, 60.0, 600.0
STATUSES = [None, *ClaimStatus]
CASES = list(itertools.product(STATUSES, (NOW - 1, NOW, NOW + 1), (NOW - 1, NOW + 1)))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    yield opened
    await opened.close()


async def test_the_pure_claim_rule_and_the_store_statement_agree_on_every_kind_of_row(store: Store) -> None:
    for n, (status, lease_until, cooldown_until) in enumerate(CASES):
        scope = f"i{n}/memory"
        existing = None
        if status is not None:
            existing = ClaimRow(scope, status, "holder", lease_until, cooldown_until, f"i{n}", NOW - 100)
            async with store.db.transaction() as tx:
                await tx.execute(
                    """INSERT INTO claims (scope, instance_id, status, owner, claimed_at, lease_until,
                           cooldown_until) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    scope,
                    existing.instance_id,
                    status.value,
                    existing.owner,
                    existing.claimed_at,
                    lease_until,
                    cooldown_until,
                )
        ask = ClaimAsk(scope, f"i{n}", "asker", NOW, LEASE, COOLDOWN)
        verdict, row = take_claim(existing, ask)

        async with store.unit() as unit:
            result = await unit.try_claim(scope, f"i{n}", "asker", NOW, LEASE, COOLDOWN)
        async with store.db.transaction(write=False) as tx:
            stored = await tx.fetchrow("SELECT * FROM claims WHERE scope = $1", scope)

        case = f"{status} lease={lease_until - NOW:+g} cooldown={cooldown_until - NOW:+g}"
        assert result.verdict is verdict, case
        expected = row or existing
        if expected is None:
            assert stored is None, case
            continue
        assert stored is not None, case
        got = (
            stored["status"],
            stored["owner"],
            float(stored["lease_until"]),
            float(stored["cooldown_until"]),
        )
        assert got == (
            expected.status.value,
            expected.owner,
            expected.lease_until,
            expected.cooldown_until,
        ), case
