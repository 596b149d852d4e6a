"""``shared.queries.fetch_together``: reads made together give what each gives alone, on both stores;
on PostgreSQL in one statement, with the row locks each takes alone. A batch's first step reads
this way: three round trips on PostgreSQL (lock, events, the rest), whatever the batch holds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from shared.alarm import Alarm, event_key
from shared.db import Row
from shared.flapping import FlapRule
from shared.incidents import plan_incident
from shared.queries import Query, fetch_together
from shared.store import Arrival, Store, Unit
from tests.support import Recording


async def seeded(url: str) -> Store:
    opened = await Store.open(url)
    async with opened.db.transaction() as tx:
        for n, (scope, until) in enumerate([("a", 10.5), ("b", 20.0), ("c", 30.25)]):
            await tx.execute(
                """INSERT INTO claims (scope, instance_id, status, owner, claimed_at, lease_until,
                   cooldown_until) VALUES ($1, $2, 'done', $3, $4, $5, $6)""",
                scope,
                f"i-{scope}",
                f"w/{n}",
                1.0,
                until,
                until + 0.125,
            )
    return opened


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """Three claim rows, on either store."""
    opened = await seeded(database_url)
    yield opened
    await opened.close()


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[Store]:
    """The same on PostgreSQL."""
    opened = await seeded(postgres_url)
    yield opened
    await opened.close()


def claims_by(scopes: list[str], at_least: float, locked: bool = False) -> Query[list[Row]]:
    lock = " FOR UPDATE" if locked else ""
    return Query(
        f"""SELECT scope, owner, lease_until, cooldown_until FROM claims
           WHERE scope IN (SELECT value FROM unnest($1::text[]) AS value) AND lease_until >= $2
           ORDER BY scope{lock}""",
        [scopes, at_least],
        list,
    )


def sqlite_claims_by(scopes: list[str], at_least: float) -> Query[list[Row]]:
    marks = ", ".join(f"${n + 3}" for n in range(len(scopes)))
    return Query(
        f"""SELECT scope, owner, lease_until, cooldown_until FROM claims
           WHERE lease_until >= $1 AND owner <> $2 AND scope IN ({marks}) ORDER BY scope""",
        [at_least, "nobody", *scopes],
        list,
    )


def queries(dialect: str) -> list[Query[Any]]:
    count = Query(
        "SELECT COUNT(*) AS n FROM claims WHERE lease_until > $1", [15.0], lambda rows: rows[0]["n"]
    )
    if dialect == "postgresql":
        return [claims_by(["a", "b"], 0.0), count, claims_by(["c"], 99.0), claims_by(["a", "b", "c"], 20.0)]
    return [sqlite_claims_by(["a", "b"], 0.0), count, sqlite_claims_by(["c"], 99.0)]


def as_floats(rows: list[Row]) -> list[Row]:
    """JSON gives a DOUBLE PRECISION with no fraction as an int: compare values as numbers."""
    return [{k: float(v) if isinstance(v, int | float) else v for k, v in row.items()} for row in rows]


async def test_given_several_reads_then_together_they_give_what_each_gives_alone(store: Store) -> None:
    async with store.db.transaction() as tx:
        reads = queries(tx.dialect)
        alone = [await query.run(tx) for query in reads]
        together = await fetch_together(tx, reads)
    assert alone[2] == [] and alone[1] == 2
    assert len(alone[0]) == 2
    assert [r if isinstance(r, int) else as_floats(r) for r in together] == [
        r if isinstance(r, int) else as_floats(r) for r in alone
    ]
    assert together[0][0]["cooldown_until"] == 10.625  # fractions kept exactly


async def test_given_postgresql_then_reads_together_are_one_statement(pg_store: Store) -> None:
    async with pg_store.db.transaction() as tx:
        recording = Recording(tx)
        await fetch_together(recording, queries(tx.dialect))
    assert len(recording.ran) == 1


async def test_given_a_locking_read_among_others_then_its_rows_are_locked_until_commit(
    postgres_url: str,
) -> None:
    opened = await Store.open(postgres_url)
    try:
        async with opened.db.transaction() as tx:
            await tx.execute(
                """INSERT INTO claims (scope, instance_id, status, owner, claimed_at, lease_until,
                   cooldown_until) VALUES ('x', 'i-x', 'done', 'w', 1, 2, 3),
                   ('y', 'i-y', 'done', 'w', 1, 2, 3)"""
            )
        other = await asyncpg.connect(postgres_url)
        try:
            async with opened.db.transaction() as tx:
                count = Query("SELECT COUNT(*) AS n FROM claims", [], lambda rows: rows[0]["n"])
                await fetch_together(tx, [count, claims_by(["x"], 0.0, locked=True)])
                with pytest.raises(asyncpg.LockNotAvailableError):
                    async with other.transaction():
                        await other.fetch("SELECT scope FROM claims WHERE scope = 'x' FOR UPDATE NOWAIT")
                async with other.transaction():  # only the rows the locking read returned
                    assert await other.fetch("SELECT scope FROM claims WHERE scope = 'y' FOR UPDATE NOWAIT")
            async with other.transaction():
                assert await other.fetch("SELECT scope FROM claims WHERE scope = 'x' FOR UPDATE NOWAIT")
        finally:
            await other.close()
    finally:
        await opened.close()


async def test_given_placeholders_that_do_not_match_the_arguments_then_refused(pg_store: Store) -> None:
    gap = Query("SELECT scope FROM claims WHERE lease_until > $2", [1.0, 2.0], list)
    async with pg_store.db.transaction() as tx:
        with pytest.raises(ValueError, match=r"placeholders \[2\] for 2 arguments"):
            await fetch_together(tx, [gap, claims_by(["a"], 0.0)])


def arrival(n: int, instance: str) -> Arrival:
    body = {"alarm_type": "memory", "value": 85, "instance_id": instance, "message": f"memory {n}"}
    alarm = Alarm(f"e{n}", 100.0 + n, body, event_key(body))
    return Arrival(alarm, instance, plan_incident(alarm, instance))


async def test_given_a_batch_then_its_first_step_reads_in_three_round_trips_on_postgresql(
    postgres_url: str,
) -> None:
    opened = await Store.open(postgres_url)
    try:
        batch = [arrival(n, f"i{n % 3}") for n in range(8)]
        scopes = {f"upgrade:i{n}" for n in range(3)}
        flap = FlapRule(openings=4, window=600.0, quiet=300.0)
        for first_time in (True, False):  # all new, then all recorded before
            async with opened.db.transaction() as tx:
                recording = Recording(tx)
                snapshot = await Unit(recording).load(
                    batch, scopes, 200.0, flap, plans=True, increases_since=0.0, asked_since=0.0
                )
            assert len(recording.ran) == 3  # the locks, the events, one read of the rest
            ids = {a.alarm.event_id for a in batch}
            assert (snapshot.new, set(snapshot.events)) == ((ids, set()) if first_time else (set(), ids))
    finally:
        await opened.close()


async def test_given_times_to_the_microsecond_then_together_they_come_back_exactly(pg_store: Store) -> None:
    times = [1765046400.1234567, 1765046400.0, 0.1 + 0.2, -1.5e-7, 2.0**53 + 2]
    stamps = Query("SELECT unnest($1::float8[]) AS t", [times], lambda rows: [row["t"] for row in rows])
    async with pg_store.db.transaction() as tx:
        alone = await stamps.run(tx)
        [together, _] = await fetch_together(tx, [stamps, claims_by(["a"], 0.0)])
    assert alone == times
    assert [float(t) for t in together] == times  # (1765046400.0 comes back as the int 1765046400)
