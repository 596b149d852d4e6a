"""What the store keeps for pricing plan changes: CloudAMQP's plan catalogue with when it was
read (the last good copy, for when the API does not answer), each instance's plan as last
read (so that ``next`` can be priced before the instance is read again), and what the
autopilot's upgrades added to an instance's monthly bill (``MAX_MONTHLY_INCREASE``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from shared.catalogue import Catalogue
from shared.db import Database, lit, rows_cte
from shared.queries import Query
from shared.statuses import ActionStatus
from shared.store.part import Part

CATALOGUE_SOURCE = "cloudamqp"  # the one catalogue kept (a key for a table that may hold more)

# The upgrades that spent money, or are about to: made, being made, or approved to be made.
_SPENT = ", ".join(
    lit(s)
    for s in (
        ActionStatus.SUCCEEDED,
        ActionStatus.UNCONFIRMED,
        ActionStatus.IN_PROGRESS,
        ActionStatus.APPROVED,
    )
)

MIGRATION = [
    """CREATE TABLE plan_catalogue (
        source TEXT PRIMARY KEY,
        listing TEXT NOT NULL,
        read_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE instance_plans (
        instance_id TEXT PRIMARY KEY,
        plan TEXT NOT NULL,
        read_at DOUBLE PRECISION NOT NULL
    )""",
    "ALTER TABLE actions ADD COLUMN from_price DOUBLE PRECISION",
    "ALTER TABLE actions ADD COLUMN to_price DOUBLE PRECISION",
    # MAX_MONTHLY_INCREASE sums an instance's priced upgrades of the last 30 days: only priced
    # rows are indexed, so the alarms that never spend cost this index nothing.
    "CREATE INDEX actions_priced ON actions (instance_id, created_at) WHERE to_price IS NOT NULL",
]


class Prices(Part):
    """The plans of a batch's instances and what was spent on them, inside one transaction."""

    def _plans_of(self, instances: Sequence[str]) -> Query[dict[str, str]]:
        """These instances' plans (at least one instance) as last read."""
        cte, args = rows_cte(self.tx.dialect, "v", [("instance_id", "text")], [(i,) for i in instances])
        return Query(
            f"""WITH {cte} SELECT instance_id, plan FROM instance_plans
               WHERE instance_id IN (SELECT instance_id FROM v)""",
            args,
            lambda rows: {row["instance_id"]: row["plan"] for row in rows},
        )

    async def increases_of(
        self, instances: Sequence[str], since: float, *, leaving_out: str = ""
    ) -> dict[str, float]:
        """What the autopilot's upgrades since ``since`` added to each instance's monthly bill
        (price rises only; a plan whose old price is not known counts whole), leaving out the
        action ``leaving_out`` (the one being priced)."""
        if not instances:
            return {}
        return await self._increases(instances, since, leaving_out).run(self.tx)

    def _increases(
        self, instances: Sequence[str], since: float, leaving_out: str = ""
    ) -> Query[dict[str, float]]:
        """``increases_of`` as a read (at least one instance)."""
        cte, args = rows_cte(self.tx.dialect, "v", [("instance_id", "text")], [(i,) for i in instances], 3)
        return Query(
            f"""WITH {cte}
               SELECT instance_id, SUM(CASE WHEN to_price > COALESCE(from_price, 0)
                                            THEN to_price - COALESCE(from_price, 0) ELSE 0 END) AS added
               FROM actions
               WHERE to_price IS NOT NULL AND instance_id IN (SELECT instance_id FROM v)
                 AND created_at >= $1 AND action_id <> $2 AND status IN ({_SPENT})
               GROUP BY instance_id""",
            [since, leaving_out, *args],
            lambda rows: {row["instance_id"]: float(row["added"] or 0.0) for row in rows},
        )

    async def note_plans(self, plans: Mapping[str, str], now: float) -> None:
        """Remember each instance's plan as just read."""
        await self.note_reads([(instance, plan, now) for instance, plan in plans.items()])

    async def note_reads(self, reads: Sequence[tuple[str, str, float]]) -> None:
        """Remember plans as read — (instance, plan, when), one per instance — unless a later
        read is kept already."""
        if not reads:
            return
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [("instance_id", "text"), ("plan", "text"), ("read_at", "float8")],
            sorted(reads),
        )
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO instance_plans (instance_id, plan, read_at)
               SELECT instance_id, plan, read_at FROM v WHERE true
               ON CONFLICT (instance_id) DO UPDATE SET plan = excluded.plan, read_at = excluded.read_at
               WHERE instance_plans.read_at <= excluded.read_at""",
            *args,
        )

    async def save_catalogue(self, catalogue: Catalogue) -> None:
        assert catalogue.read_at is not None
        await self.tx.execute(
            """INSERT INTO plan_catalogue (source, listing, read_at) VALUES ($1, $2, $3)
               ON CONFLICT (source) DO UPDATE SET listing = excluded.listing, read_at = excluded.read_at""",
            CATALOGUE_SOURCE,
            catalogue.to_json(),
            catalogue.read_at,
        )


async def kept_catalogue(db: Database) -> Catalogue | None:
    """The last catalogue read (None: never read, or unreadable)."""
    async with db.transaction(write=False) as tx:
        row = await tx.fetchrow(
            "SELECT listing, read_at FROM plan_catalogue WHERE source = $1", CATALOGUE_SOURCE
        )
    if row is None:
        return None
    try:
        return Catalogue.from_json(row["listing"], float(row["read_at"]))
    except ValueError:
        return None


async def instance_plans(db: Database) -> dict[str, tuple[str, float]]:
    """Every instance's plan as last read, and when."""
    async with db.transaction(write=False) as tx:
        rows = await tx.fetch("SELECT instance_id, plan, read_at FROM instance_plans")
    return {row["instance_id"]: (row["plan"], float(row["read_at"])) for row in rows}
