"""After a prepared statement's first five runs PostgreSQL settles on one generic plan for it,
made from what it believes of its tables then, and a worker's connections keep that plan until
the tables are next analysed (a minute or more on a new store). A batch's read of its keys'
open incidents must stay an index lookup even when the store was empty when it was planned:
written as a join with the batch's rows, it became a nested loop over every open incident,
batch after batch (docs/benchmarks.md)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.alarm import Alarm, event_key
from shared.flapping import OFF
from shared.incidents import plan_incident
from shared.store import Arrival, Store, Unit
from tests.support import Recording


def arrival(n: int) -> Arrival:
    body = {"alarm_type": "memory", "value": 85, "instance_id": f"i{n}", "message": f"memory on i{n}"}
    a = Alarm(f"e{n}", 100.0, body, event_key(body))
    return Arrival(a, f"i{n}", plan_incident(a, f"i{n}"))


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(postgres_url)
    yield opened
    await opened.close()


async def test_the_open_incidents_of_a_batch_are_found_by_index_with_a_plan_made_on_an_empty_store(
    store: Store, postgres_url: str
) -> None:
    keys = sorted(a.plan.key for a in map(arrival, range(0, 1200, 20)) if a.plan.key)
    async with store.db.transaction() as tx:
        recording = Recording(tx)
        assert await Unit(recording)._key_states(keys, OFF) == {}
    [(sql, args)] = recording.ran  # the read of the open incidents

    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("ALTER TABLE incidents SET (autovacuum_enabled = false)")
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE keys_read AS {sql}")
        # (EXECUTE takes no bound parameters: the keys as an array literal, quoted by the server.)
        [keys_arg] = args
        keys_literal = await conn.fetchval("SELECT quote_literal($1::text[]::text)", keys_arg)
        async with conn.transaction():  # planned now, on the empty store, and kept
            await conn.fetch(f"EXECUTE keys_read({keys_literal})")
        async with store.unit() as unit:
            await unit.record_events([arrival(n) for n in range(1200)], 100.0)  # 1,200 open
        async with conn.transaction():
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, FORMAT TEXT) EXECUTE keys_read({keys_literal})")
    finally:
        await conn.close()
    plan = "\n".join(row[0] for row in rows)
    assert re.search(r"actual time=\S+ rows=60(\.0+)? loops=1", plan.split("\n")[0]), plan  # 60 open
    assert "Join" not in plan and "Nested Loop" not in plan, plan
    assert "Index Cond: (incident_key = ANY" in plan, plan
