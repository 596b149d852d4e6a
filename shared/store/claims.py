"""Cooldown claims in the store: at most one upgrade per instance and alarm type per cooldown,
with any number of workers. The rule is ``shared.claims``' (pure); the statements here
carry it out on rows locked in scope order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shared.claims import ClaimRow, ClaimStatus, ClaimVerdict, claim_verdict
from shared.db import Row, lit, rows_cte
from shared.queries import Query
from shared.records import ActionRecord, Finish
from shared.store.actions import Actions
from shared.store.disk import Disks
from shared.store.part import CLAIM

_AWAITING = lit(ClaimStatus.AWAITING)
_DONE = lit(ClaimStatus.DONE)
_HELD = lit(ClaimStatus.HELD)
_RELEASED = lit(ClaimStatus.RELEASED)
_STALE = lit(ClaimStatus.STALE)


@dataclass(frozen=True)
class ClaimResult:
    verdict: ClaimVerdict
    row: ClaimRow | None


def claim_of(row: Row) -> ClaimRow:
    return ClaimRow(
        scope=row["scope"],
        status=ClaimStatus(row["status"]),
        owner=row["owner"],
        lease_until=float(row["lease_until"]),
        cooldown_until=float(row["cooldown_until"]),
        instance_id=row.get("instance_id") or "",
        claimed_at=float(row.get("claimed_at") or 0.0),
    )


class Claims(Actions, Disks):
    """Claim rows, inside one open transaction (an upgrade's end writes its action, audit
    entry and disk history with its claim)."""

    def _locked_claims(self, scopes: Sequence[str]) -> Query[dict[str, ClaimRow]]:
        """The claim rows of these scopes (at least one), locked, in scope order."""
        cte, args = rows_cte(self.tx.dialect, "v", [("scope", "text")], [(sc,) for sc in scopes])
        lock = " FOR UPDATE OF c" if self.tx.dialect == "postgresql" else ""
        return Query(
            f"""WITH {cte} SELECT c.* FROM claims c WHERE c.scope IN (SELECT scope FROM v)
               ORDER BY c.scope{lock}""",
            args,
            lambda rows: {row["scope"]: claim_of(row) for row in rows},
        )

    async def _put_claims(self, rows: Sequence[ClaimRow]) -> None:
        """The claim rows as the fold left them (their rows locked by ``load``)."""
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [
                ("scope", "text"),
                ("instance_id", "text"),
                ("status", "text"),
                ("owner", "text"),
                ("claimed_at", "float8"),
                ("lease_until", "float8"),
                ("cooldown_until", "float8"),
            ],
            [
                (
                    r.scope,
                    r.instance_id,
                    r.status.value,
                    r.owner,
                    r.claimed_at,
                    r.lease_until,
                    r.cooldown_until,
                )
                for r in rows
            ],
        )
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO claims (scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until)
               SELECT scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until
               FROM v WHERE true
               ON CONFLICT (scope) DO UPDATE SET instance_id = excluded.instance_id,
                   status = excluded.status, owner = excluded.owner, claimed_at = excluded.claimed_at,
                   lease_until = excluded.lease_until, cooldown_until = excluded.cooldown_until""",
            *args,
        )

    async def try_claim(
        self, scope: str, instance_id: str, owner: str, now: float, lease: float, cooldown: float
    ) -> ClaimResult:
        """Take the claim on ``scope`` in one conditional upsert (see ``claim_verdict``).

        A held lease that ran out is not taken: the same statement marks it ``stale`` and
        gives its holder (still the owner) one more lease from now, and says ``NOTICED``."""
        await self._lock([CLAIM + scope])
        row = await self.tx.fetchrow(
            f"""INSERT INTO claims (scope, instance_id, status, owner, claimed_at,
                   lease_until, cooldown_until)
               VALUES ($1, $2, {_HELD}, $3, $4, $5, $6)
               ON CONFLICT (scope) DO UPDATE SET
                   status = CASE WHEN claims.status = {_HELD} THEN {_STALE} ELSE {_HELD} END,
                   owner = CASE WHEN claims.status = {_HELD} THEN claims.owner ELSE excluded.owner END,
                   claimed_at = CASE WHEN claims.status = {_HELD}
                                THEN claims.claimed_at ELSE excluded.claimed_at END,
                   lease_until = excluded.lease_until,
                   cooldown_until = CASE WHEN claims.status = {_HELD}
                                    THEN claims.cooldown_until ELSE excluded.cooldown_until END
               WHERE claims.status = {_RELEASED}
                  OR (claims.status IN ({_HELD}, {_STALE}, {_AWAITING})
                      AND claims.lease_until <= excluded.claimed_at)
                  OR (claims.status = {_DONE} AND claims.cooldown_until <= excluded.claimed_at)
               RETURNING scope, instance_id, status, owner, claimed_at, lease_until, cooldown_until""",
            scope,
            instance_id,
            owner,
            now,
            now + lease,
            now + cooldown,
        )
        if row is not None:
            if row["owner"] == owner:
                return ClaimResult(ClaimVerdict.GRANTED, None)
            return ClaimResult(ClaimVerdict.NOTICED, claim_of(row))
        current = await self.tx.fetchrow("SELECT * FROM claims WHERE scope = $1", scope)
        claim = claim_of(current) if current else None
        verdict = claim_verdict(claim, now)
        # The upsert refused, so the rules cannot say "granted" (or "noticed") for this row.
        if verdict in (ClaimVerdict.GRANTED, ClaimVerdict.NOTICED):
            verdict = ClaimVerdict.HELD
        return ClaimResult(verdict, claim)

    async def renew_claim(self, scope: str, owner: str, lease_until: float) -> bool:
        """The holder is still at work: extend its lease (and end a takeover notice)."""
        row = await self.tx.fetchrow(
            f"""UPDATE claims SET status = {_HELD}, lease_until = $3
               WHERE scope = $1 AND owner = $2 AND status IN ({_HELD}, {_STALE})
               RETURNING scope""",
            scope,
            owner,
            lease_until,
        )
        return row is not None

    async def finish_claim(
        self, scope: str, owner: str, *, succeeded: bool, record: ActionRecord | None = None
    ) -> bool:
        """``finish_claims`` of one claim."""
        [written] = await self.finish_claims([Finish(scope, owner, succeeded, record)])
        return written

    async def finish_claims(self, finishes: Sequence[Finish]) -> list[bool]:
        """Each claim ``done`` (cooldown runs from the claim) or ``released``, only by its
        owner, with the action's outcome and the audit entry in the same transaction: no one
        sees the cooldown without the outcome. A handful of statements for any number of
        claims. Returns, for each, what ``write_action`` would (True without a record)."""
        audits = [f.audit for f in finishes if f.audit is not None]
        if audits:
            await self.audit_many(audits)
        await self.record_disk([mark for f in finishes for mark in f.disk])
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [("scope", "text"), ("owner", "text"), ("status", "text")],
            sorted(
                (f.scope, f.owner, (ClaimStatus.DONE if f.succeeded else ClaimStatus.RELEASED).value)
                for f in finishes
            ),
        )
        if self.tx.dialect == "postgresql":
            # Rows locked in scope order, as alarms' claims are taken (an UPDATE ... FROM
            # locks them in whatever order its join reads them: a deadlock with a batch).
            await self.tx.execute(
                f"""WITH {cte} SELECT c.scope FROM claims c
                    WHERE c.scope IN (SELECT scope FROM v) ORDER BY c.scope FOR UPDATE OF c""",
                *args,
            )
        await self.tx.execute(
            f"""WITH {cte}
               UPDATE claims SET status = v.status FROM v
               WHERE claims.scope = v.scope AND claims.owner = v.owner""",
            *args,
        )
        records = [f.record for f in finishes if f.record is not None]
        written = iter(await self.write_actions(records))
        return [next(written) if f.record is not None else True for f in finishes]
