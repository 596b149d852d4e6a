"""Events and incidents in the store: each event recorded once (by event id), grouped into
incidents by their key, at most one open per key."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from shared.db import Row, lit, member_of, rows_cte
from shared.flapping import FlapMark, FlapRule, Transition
from shared.incidents import IncidentChange
from shared.queries import Query
from shared.snapshot import Arrival, FlapWrite, KeyState, Writes
from shared.statuses import IncidentStatus
from shared.store.part import Part

_OPEN = lit(IncidentStatus.OPEN)
_RESOLVED = lit(IncidentStatus.RESOLVED)


@dataclass(frozen=True)
class EventRecord:
    """What recording one event did (``Unit.record_event``)."""

    new: bool
    incident_id: str | None
    incident_change: str | None


_EVENT_COLUMNS = (
    ("event_id", "text"),
    ("event_key", "text"),
    ("received_at", "float8"),
    ("instance_id", "text"),
    ("alarm_type", "text"),
    ("incident_key", "text"),
    ("ungroupable", "text"),
    ("body", "text"),
)
_INCIDENT_COLUMNS = (
    ("incident_id", "text"),
    ("incident_key", "text"),
    ("instance_id", "text"),
    ("alarm_type", "text"),
    ("n", "int"),
    ("last_value", "text"),
)


# What the flap rule reads of an incident (``KeyState``).
_STATE_COLUMNS = """i.incident_id, i.incident_key, i.status, i.instance_id, i.alarm_type, i.flap_episodes,
    i.flapping_since, i.flap_transitions, i.flap_window, i.flap_quiet, i.resolves_at"""
_FLAP_COLUMNS = (
    ("incident_id", "text"),
    ("status", "text"),
    ("resolved_at", "float8"),
    ("flap_episodes", "int"),
    ("flapping_since", "float8"),
    ("flap_transitions", "int"),
    ("flap_window", "float8"),
    ("flap_quiet", "float8"),
    ("resolves_at", "float8"),
    ("last_seen", "float8"),
)


def flap_mark(row: Row) -> FlapMark | None:
    """How an incident row is marked flapping, or None (it never flapped)."""
    if not row["flap_episodes"]:
        return None
    return FlapMark(
        float(row["flapping_since"]),
        int(row["flap_transitions"]),
        float(row["flap_window"]),
        float(row["flap_quiet"]),
        int(row["flap_episodes"]),
    )


def key_state(row: Row) -> KeyState:
    """An incident row as its key's latest incident."""
    resolves_at = row["resolves_at"]
    return KeyState(
        row["incident_id"],
        row["status"] == IncidentStatus.OPEN,
        row["instance_id"],
        row["alarm_type"],
        flap_mark(row),
        None if resolves_at is None else float(resolves_at),
    )


def with_transitions(states: dict[str, KeyState], key_rows: Sequence[Row]) -> dict[str, KeyState]:
    """The keys' latest incidents: ``states`` (their open ones) completed by the keys' rows
    (``Incidents._key_rows``) — the incident each names, and its recent transitions."""
    for row in key_rows:
        # An open incident is the latest (the row may predate it, written with the rule off).
        state = states.get(row["of_key"]) or (key_state(row) if row["incident_id"] else KeyState())
        state.transitions = transitions_of(row["transitions"])
        states[row["of_key"]] = state
    return states


def transitions_json(transitions: Sequence[Transition]) -> str:
    return json.dumps([[t.at, int(t.opening)] for t in transitions], separators=(",", ":"))


def transitions_of(text: str) -> list[Transition]:
    return [Transition(float(at), bool(opening)) for at, opening in json.loads(text)]


class Incidents(Part):
    """Events and incidents, inside one open transaction."""

    async def _insert_events(self, arrivals: Sequence[Arrival], now: float) -> set[str]:
        """Record each event once (by event id), in event id order (the order every batch
        takes their index entries in); the ids this call recorded."""
        first: dict[str, Arrival] = {}
        for a in arrivals:
            first.setdefault(a.alarm.event_id, a)
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            _EVENT_COLUMNS,
            [
                (
                    a.alarm.event_id,
                    a.alarm.event_key,
                    a.alarm.received_at,
                    a.instance_id,
                    a.alarm.alarm_type,
                    a.plan.key,
                    a.plan.reason if a.plan.change is IncidentChange.UNGROUPABLE else None,
                    json.dumps(a.alarm.body, ensure_ascii=False),
                )
                for _, a in sorted(first.items())
            ],
            first=2,
        )
        inserted = await self.tx.fetch(
            f"""WITH {cte}
               INSERT INTO events (event_id, event_key, received_at, recorded_at, instance_id,
                   alarm_type, incident_key, ungroupable, body)
               SELECT event_id, event_key, received_at, CAST($1 AS DOUBLE PRECISION), instance_id,
                   alarm_type, incident_key, ungroupable, body FROM v WHERE true
               ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
            now,
            *args,
        )
        return {row["event_id"] for row in inserted}

    async def _key_states(self, keys: Sequence[str], flap: FlapRule) -> dict[str, KeyState]:
        """The keys' latest incidents: the open one (locked on PostgreSQL) and, with the flap
        rule on, the one the key's row names, with the key's recent transitions."""
        if not keys:
            return {}
        states = await self._open_incidents(keys).run(self.tx)
        return with_transitions(states, await self._key_rows(keys).run(self.tx)) if flap.on else states

    def _open_incidents(self, keys: Sequence[str]) -> Query[dict[str, KeyState]]:
        """The keys' open incidents (at least one key), locked on PostgreSQL."""
        lock = " FOR UPDATE OF i" if self.tx.dialect == "postgresql" else ""
        # By ``member_of``, not a join with the keys' rows: the open incidents' index is
        # partial, and a join planned while the store was new stays a nested loop over every
        # open incident, batch after batch (docs/benchmarks.md).
        among, keys_arg = member_of(self.tx.dialect, "i.incident_key", keys, 1)
        return Query(
            f"""SELECT {_STATE_COLUMNS} FROM incidents i WHERE i.status = {_OPEN} AND {among}
               ORDER BY i.incident_key{lock}""",
            [keys_arg],
            lambda rows: {row["incident_key"]: key_state(row) for row in rows},
        )

    def _key_rows(self, keys: Sequence[str]) -> Query[list[Row]]:
        """The keys' rows (at least one key): their recent transitions and the incident each
        names (``with_transitions``)."""
        cte, args = rows_cte(self.tx.dialect, "v", [("incident_key", "text")], [(k,) for k in keys])
        return Query(
            f"""WITH {cte} SELECT k.incident_key AS of_key, k.transitions, {_STATE_COLUMNS}
               FROM incident_keys k LEFT JOIN incidents i ON i.incident_id = k.incident_id
               WHERE k.incident_key IN (SELECT incident_key FROM v) ORDER BY k.incident_key""",
            args,
            list,
        )

    def _recorded(self, event_ids: Sequence[str]) -> Query[dict[str, Row]]:
        """What the store holds about events recorded before (at least one): incident,
        action, approval."""
        cte, args = rows_cte(self.tx.dialect, "v", [("event_id", "text")], [(i,) for i in event_ids])
        return Query(
            f"""WITH {cte}
               SELECT e.event_id, e.incident_id, e.incident_change, a.status, a.reason, a.plan,
                   a.extra_disk_to, p.deadline, a.asked_at, a.from_plan, a.extra_disk_from
               FROM v JOIN events e ON e.event_id = v.event_id
               LEFT JOIN actions a ON a.action_id = e.event_id
               LEFT JOIN approvals p ON p.action_id = e.event_id""",
            args,
            lambda rows: {row["event_id"]: row for row in rows},
        )

    async def _apply_incidents_of(self, writes: Writes, now: float) -> None:
        dialect = self.tx.dialect
        if writes.grouped:
            cte, args = rows_cte(
                dialect,
                "v",
                [("incident_id", "text"), ("n", "int"), ("last_value", "text")],
                [
                    (iid, g.count, None if g.last_value is None else json.dumps(g.last_value))
                    for iid, g in sorted(writes.grouped.items())
                ],
                first=2,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE incidents SET event_count = incidents.event_count + v.n,
                       last_seen = CAST($1 AS DOUBLE PRECISION),
                       last_value = COALESCE(v.last_value, incidents.last_value)
                   FROM v WHERE incidents.incident_id = v.incident_id""",
                now,
                *args,
            )
        if writes.resolved:
            cte, args = rows_cte(dialect, "v", [("incident_id", "text")], [(i,) for i in writes.resolved], 2)
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE incidents SET status = {_RESOLVED}, resolved_at = CAST($1 AS DOUBLE PRECISION),
                       last_seen = CAST($1 AS DOUBLE PRECISION)
                   WHERE incident_id IN (SELECT incident_id FROM v)""",
                now,
                *args,
            )
        # Those the flap rule closes first, the rest after the new ones: at most one open
        # incident per key after every statement (incidents_open_key).
        closing = {
            iid: flap
            for iid, flap in writes.flaps.items()
            if flap.status is IncidentStatus.RESOLVED and iid not in writes.new_incidents
        }
        await self._apply_flaps(closing)
        if writes.new_incidents:
            cte, args = rows_cte(
                dialect,
                "v",
                (*_INCIDENT_COLUMNS, ("status", "text")),
                [
                    (
                        n.incident_id,
                        n.key,
                        n.instance_id,
                        n.alarm_type,
                        n.count,
                        None if n.last_value is None else json.dumps(n.last_value),
                        (IncidentStatus.RESOLVED if n.resolved else IncidentStatus.OPEN).value,
                    )
                    for n in writes.new_incidents.values()
                ],
                first=2,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   INSERT INTO incidents (incident_id, incident_key, title, status, instance_id,
                       alarm_type, first_seen, last_seen, event_count, last_value, resolved_at)
                   SELECT incident_id, incident_key, incident_key, status, instance_id, alarm_type,
                       CAST($1 AS DOUBLE PRECISION), CAST($1 AS DOUBLE PRECISION), n, last_value,
                       CASE WHEN status = {_RESOLVED} THEN CAST($1 AS DOUBLE PRECISION) END
                   FROM v WHERE true""",
                now,
                *args,
            )
        await self._apply_flaps({iid: flap for iid, flap in writes.flaps.items() if iid not in closing})
        if writes.event_incidents:
            cte, args = rows_cte(
                dialect,
                "v",
                [("event_id", "text"), ("incident_id", "text"), ("incident_change", "text")],
                writes.event_incidents,
            )
            await self.tx.execute(
                f"""WITH {cte}
                   UPDATE events SET incident_id = v.incident_id, incident_change = v.incident_change
                   FROM v WHERE events.event_id = v.event_id""",
                *args,
            )
        if writes.keys:
            await self._put_keys(writes, now)

    async def _apply_flaps(self, flaps: dict[str, FlapWrite]) -> None:
        """The status and flap marking of incidents the flap rule changed, as they are to be."""
        if not flaps:
            return
        rows = [_flap_row(iid, flap) for iid, flap in sorted(flaps.items())]
        cte, args = rows_cte(self.tx.dialect, "v", _FLAP_COLUMNS, rows)
        await self.tx.execute(
            f"""WITH {cte}
               UPDATE incidents SET status = v.status, resolved_at = v.resolved_at,
                   flap_episodes = v.flap_episodes, flapping_since = v.flapping_since,
                   flap_transitions = v.flap_transitions, flap_window = v.flap_window,
                   flap_quiet = v.flap_quiet, resolves_at = v.resolves_at,
                   last_seen = COALESCE(v.last_seen, incidents.last_seen)
               FROM v WHERE incidents.incident_id = v.incident_id""",
            *args,
        )

    async def _put_keys(self, writes: Writes, now: float) -> None:
        rows = [
            (k, row.incident_id, transitions_json(row.transitions)) for k, row in sorted(writes.keys.items())
        ]
        columns = [("incident_key", "text"), ("incident_id", "text"), ("transitions", "text")]
        cte, args = rows_cte(self.tx.dialect, "v", columns, rows, first=2)
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO incident_keys (incident_key, incident_id, transitions, updated_at)
               SELECT incident_key, incident_id, transitions, CAST($1 AS DOUBLE PRECISION) FROM v WHERE true
               ON CONFLICT (incident_key) DO UPDATE SET incident_id = excluded.incident_id,
                   transitions = excluded.transitions, updated_at = excluded.updated_at""",
            now,
            *args,
        )


def _flap_row(incident_id: str, flap: FlapWrite) -> tuple[object, ...]:
    mark = flap.mark
    return (
        incident_id, flap.status.value, flap.resolved_at, mark.episodes, mark.since, mark.transitions,
        mark.window, mark.quiet, flap.resolves_at, flap.last_seen,
    )  # fmt: skip
