"""One write transaction of the store (``Store.unit()``), and an alarm batch's first step in
it: ``load`` reads once what the step needs, ``worker.first_step.plan_batch`` folds the
batch over that snapshot in memory (pure), and ``apply`` writes what the fold changed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from shared import outbox
from shared.alarm import Alarm, new_id
from shared.flapping import OFF, FlapRule
from shared.incidents import IncidentPlan
from shared.queries import Together
from shared.records import Asking
from shared.snapshot import Arrival, EventState, Snapshot, Writes, record_arrival, settle_due
from shared.statuses import HANDED_OFF
from shared.store.actions import asked_of
from shared.store.claims import Claims
from shared.store.controls import running_pauses
from shared.store.incidents import EventRecord, Incidents, with_transitions
from shared.store.part import CLAIM, INCIDENT
from shared.store.prices import Prices


class Unit(Claims, Incidents, Prices):
    """The store's writes inside one open transaction: of the operator's controls, actions,
    claims, events and incidents (each aggregate's part in its own module)."""

    async def load(
        self,
        arrivals: Sequence[Arrival],
        scopes: Iterable[str],
        now: float,
        flap: FlapRule = OFF,
        *,
        plans: bool = False,
        increases_since: float | None = None,
        asked_since: float = 0.0,
        quiet_before: float = float("-inf"),
    ) -> Snapshot:
        """Everything a batch's first step needs, read once: its events recorded (those
        recorded first by this call are ``new``; what the others have — incident, action,
        approval), the latest incidents of its keys (with the flap rule on, their recent
        transitions too) and the claim rows of its scopes (locked, in key and then scope
        order, as every batch locks them), the decided contents, the running pauses and the
        plan changes under way of its instances; with ``plans``, its instances' plans as last
        read, and with ``increases_since``, what the autopilot added to their monthly bills
        since then (``MAX_MONTHLY_INCREASE``). Among the changes under way: those asked of
        CloudAMQP since ``asked_since`` whose answer never came, and those whose worker went
        quiet while it waited for the answer (asked before ``quiet_before``)."""
        snapshot = Snapshot(scopes=set(scopes), flap=flap)
        if not arrivals:
            return snapshot
        keys = sorted({a.plan.key for a in arrivals if a.plan.key is not None})
        # Nobody else opens an incident of these keys or takes a claim of these scopes until
        # this transaction ends (a row that exists is also locked by the reads below).
        await self._lock([INCIDENT + k for k in keys] + [CLAIM + sc for sc in snapshot.scopes])
        snapshot.new = await self._insert_events(arrivals, now)
        earlier_ids = sorted({a.alarm.event_id for a in arrivals} - snapshot.new)
        instances = sorted({a.instance_id for a in arrivals if a.instance_id is not None})
        # The rest in one round trip on PostgreSQL, row locks in this order (incidents, claims).
        read = Together(self.tx)
        earlier = read.add(self._recorded(earlier_ids)) if earlier_ids else None
        opened = read.add(self._open_incidents(keys)) if keys else None
        key_rows = read.add(self._key_rows(keys)) if keys and flap.on else None
        decided = read.add(self._decided_events(sorted({a.alarm.event_key for a in arrivals})))
        claims = read.add(self._locked_claims(sorted(snapshot.scopes))) if snapshot.scopes else None
        pauses = read.add(running_pauses(now))
        reconfiguring = (
            read.add(self._reconfiguring(instances, asked_since, quiet_before)) if instances else None
        )
        known_plans = read.add(self._plans_of(instances)) if plans and instances else None
        increases = (
            read.add(self._increases(instances, increases_since))
            if increases_since is not None and instances
            else None
        )
        await read.run()
        for event_id, row in (earlier.value if earlier else {}).items():
            snapshot.events[event_id] = EventState(
                row["incident_id"],
                row["incident_change"],
                row["status"],
                row["reason"],
                row["plan"],
                float(row["deadline"])
                if row["status"] in HANDED_OFF and row["deadline"] is not None
                else None,
                row["extra_disk_to"],
                asked_of(row),
            )
        snapshot.keys = opened.value if opened else {}
        if key_rows is not None:
            snapshot.keys = with_transitions(snapshot.keys, key_rows.value)
        snapshot.decided = decided.value
        snapshot.claims = claims.value if claims else {}
        snapshot.pauses = pauses.value
        snapshot.reconfiguring = reconfiguring.value if reconfiguring else {}
        snapshot.plans = known_plans.value if known_plans else {}
        snapshot.increases = increases.value if increases else {}
        return snapshot

    async def apply(self, writes: Writes, now: float) -> list[bool]:
        """Write what a batch's first step changed, in a handful of set-based statements;
        for each action row (in ``writes.actions`` order) whether it was written (False:
        another delivery of the event had the final word first)."""
        await self._apply_incidents_of(writes, now)
        if writes.notices:
            await outbox.insert_many(self.tx, [(notice, now) for notice in writes.notices])
        written = await self.write_actions(writes.actions) if writes.actions else []
        if writes.claims:
            await self._put_claims(sorted(writes.claims.values(), key=lambda c: c.scope))
        for request in writes.approvals:
            await self._put_approval(request)
        if writes.audits:
            await self.audit_many(writes.audits)
        return written

    async def ask(self, askings: Sequence[Asking]) -> list[bool]:
        """Write down changes about to be asked of CloudAMQP (``Actions.asking``) with the
        plans their calls just read (the latest read of each instance); one True each."""
        reads: dict[str, tuple[str, str, float]] = {}
        for a in sorted(askings, key=lambda a: a.asked.at):
            if a.read_plan is not None:
                reads[a.instance_id] = (a.instance_id, a.read_plan, a.asked.at)
        await self.note_reads(list(reads.values()))
        await self.asking(askings)
        return [True for _ in askings]

    async def record_event(
        self, alarm: Alarm, instance_id: str | None, plan: IncidentPlan, now: float
    ) -> EventRecord:
        """``record_events`` of one alarm."""
        [record] = await self.record_events([Arrival(alarm, instance_id, plan)], now)
        return record

    async def record_events(
        self, arrivals: Sequence[Arrival], now: float, flap: FlapRule = OFF
    ) -> list[EventRecord]:
        """Record events (each once, by event id) and their incident changes, in order: the
        first step's read and write (``load``, ``apply``) with nothing decided in between."""
        snapshot = await self.load(arrivals, (), now, flap)
        writes = Writes()
        records = []
        for arrival in arrivals:
            new, state = record_arrival(snapshot, writes, arrival, now, new_id)
            records.append(EventRecord(new, state.incident_id, state.incident_change))
        await self.apply(writes, now)
        return records

    async def settle_quiet(self, now: float, limit: int) -> list[str]:
        """Resolve flapping incidents whose quiet period has passed (at most ``limit``), under
        the locks of their keys, as the first step would (``shared.snapshot.settle_due``);
        the incidents resolved."""
        rows = await self.tx.fetch(
            """SELECT incident_key FROM incidents WHERE resolves_at <= $1
               ORDER BY resolves_at, incident_id LIMIT $2""",
            now,
            limit,
        )
        keys = sorted({row["incident_key"] for row in rows})
        if not keys:
            return []
        await self._lock([INCIDENT + k for k in keys])
        snapshot = Snapshot(keys=await self._key_states(keys, OFF))
        writes = Writes()
        settled = settle_due(snapshot, writes, now)
        await self.apply(writes, now)
        return settled
