"""What every part of the store's write side shares: the open transaction, and the locks a
batch's first step takes on the rows it reads before it writes them."""

from __future__ import annotations

from collections.abc import Sequence

from shared.db import Tx

# Lock names (``Part._lock``): one namespace per kind of row.
INCIDENT, CLAIM = "incident:", "claim:"


class Part:
    """The store's writes inside one open transaction; each aggregate adds its own."""

    def __init__(self, tx: Tx):
        self.tx = tx

    async def _lock(self, names: Sequence[str]) -> None:
        """PostgreSQL: transaction locks on these names (an incident key, a claim scope), taken
        in one order by every transaction, so that the first step's read, fold and write of a
        key or a scope is never interleaved with another's. (SQLite: a write transaction holds
        the whole file already.)"""
        if self.tx.dialect != "postgresql" or not names:
            return
        await self.tx.execute(
            """SELECT pg_advisory_xact_lock(hashtextextended(name, 7461207))
               FROM (SELECT name FROM unnest(CAST($1 AS text[])) AS name ORDER BY name) AS ordered""",
            sorted(set(names)),
        )
