"""The state store: events, incidents, actions, cooldown claims and the operator's controls,
behind one interface.

Every operation is written once; ``shared.db`` runs it on SQLite or PostgreSQL. Operations
that must be atomic across processes and hosts are single conditional statements (the claim
upsert, an approval's answer), or run under the locks a batch's first step takes on the
incident keys and claim scopes it reads before it writes them.

Where things are, by aggregate:

- ``shared.store.incidents``: events and incidents;
- ``shared.store.actions``: action rows and the notifications they cause;
- ``shared.store.claims``: cooldown claims;
- ``shared.store.controls``: pauses, approvals and the audit trail;
- ``shared.store.disk``: instances' disk history (resizes made or seen);
- ``shared.store.unit``: one write transaction, and a batch's first step (``load``, ``apply``);
- ``shared.store.reads``: the read side (the API's lists and the console);
- ``shared.store.schema``: the migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from shared import outbox
from shared.db import Database, open_database
from shared.disk import DiskKnown
from shared.errors import StoreError
from shared.notifications import Notice
from shared.records import AUTOPILOT as AUTOPILOT
from shared.records import ActionRecord as ActionRecord
from shared.records import ApprovalDecision as ApprovalDecision
from shared.records import ApprovalRequest as ApprovalRequest
from shared.records import Asking as Asking
from shared.records import AuditEntry as AuditEntry
from shared.records import Finish as Finish
from shared.snapshot import Arrival as Arrival
from shared.statuses import DONE_STATUSES as DONE_STATUSES
from shared.statuses import HANDED_OFF as HANDED_OFF
from shared.statuses import RECONFIGURING as RECONFIGURING
from shared.statuses import ActionStatus as ActionStatus
from shared.statuses import is_decided as is_decided
from shared.statuses import is_done as is_done
from shared.store.claims import ClaimResult as ClaimResult
from shared.store.incidents import EventRecord as EventRecord
from shared.store.reads import Reads
from shared.store.schema import MIGRATIONS as MIGRATIONS
from shared.store.unit import Unit as Unit


class Store(Reads):
    """All reads and writes of the state store."""

    def __init__(self, db: Database):
        self.db = db
        self.outbox = outbox.Outbox(db)

    @classmethod
    async def open(cls, url: str) -> Store:
        """Open and migrate the store; ``StoreError`` with one line when it cannot."""
        db = await open_database(url)
        store = cls(db)
        try:
            await store.migrate()
        except StoreError:
            await db.close()
            raise
        except Exception as exc:
            await db.close()
            raise StoreError(f"cannot prepare the state store schema: {exc}") from exc
        return store

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> None:
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(7461207)")
            await tx.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = await tx.fetchrow("SELECT MAX(version) AS v FROM schema_version")
            current = int(row["v"]) if row and row["v"] is not None else 0
            for version, statements in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                for statement in statements:
                    await tx.execute(statement)
                await tx.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def ping(self) -> None:
        async with self.db.transaction(write=False) as tx:
            await tx.fetchrow("SELECT 1 AS ok")

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[Unit]:
        """One write transaction for several operations: what one step of an alarm writes
        (its event, incident change, claim and decision) commits together, or not at all."""
        async with self.db.transaction() as tx:
            yield Unit(tx)

    # The single operations the worker runs outside an alarm's first step.

    async def renew_claim(self, scope: str, owner: str, lease_until: float) -> bool:
        async with self.unit() as unit:
            return await unit.renew_claim(scope, owner, lease_until)

    async def finish_claim(
        self,
        scope: str,
        owner: str,
        *,
        succeeded: bool,
        record: ActionRecord | None = None,
        audit: AuditEntry | None = None,
    ) -> bool:
        [written] = await self.finish_claims([Finish(scope, owner, succeeded, record, audit)])
        return written

    async def finish_claims(self, finishes: Sequence[Finish]) -> list[bool]:
        """``Unit.finish_claims`` in a transaction of its own."""
        async with self.unit() as unit:
            return await unit.finish_claims(finishes)

    async def ask(self, askings: Sequence[Asking]) -> list[bool]:
        """``Unit.ask`` in a transaction of its own."""
        async with self.unit() as unit:
            return await unit.ask(askings)

    async def confirm_action(
        self,
        action_id: str,
        status: ActionStatus,
        detail: str,
        now: float,
        reconfigure_seconds: float | None = None,
    ) -> bool:
        async with self.unit() as unit:
            return await unit.confirm_action(action_id, status, detail, now, reconfigure_seconds)

    async def disk_known(self, instance_id: str) -> DiskKnown | None:
        """``Unit.disk_known`` in a read transaction of its own."""
        async with self.db.transaction(write=False) as tx:
            return await Unit(tx).disk_known(instance_id)

    async def notify(self, notice: Notice, now: float | None = None) -> bool:
        """Write a notification in a transaction of its own (one with no state change to join)."""
        async with self.unit() as unit:
            return await unit.notify(
                notice.type, notice.key, notice.data, instance_id=notice.instance_id, now=now
            )

    async def revoke_session(self, session_id: str, until: float, now: float) -> None:
        """End a console session for every copy of its cookie (and forget expired ones)."""
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM console_revoked WHERE until_at < $1", now)
            await tx.execute(
                """INSERT INTO console_revoked (session_id, until_at) VALUES ($1, $2)
                   ON CONFLICT (session_id) DO NOTHING""",
                session_id,
                until,
            )
