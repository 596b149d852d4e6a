"""Instances' extra disk in the store: the history of resizes the autopilot made or saw (and
the size first read), and what it says now — the size last known and when it last changed,
which CloudAMQP's interval between two resizes counts from (``shared.disk.resize_wait``)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.db import rows_cte
from shared.disk import AUTOPILOT, SEEN, DiskKnown
from shared.records import DiskMark
from shared.store.part import Part


class Disks(Part):
    """Disk history rows, inside one open transaction."""

    async def record_disk(self, marks: Sequence[DiskMark]) -> None:
        """Write disk history marks (each once, by its id)."""
        if not marks:
            return
        cte, args = rows_cte(
            self.tx.dialect,
            "v",
            [
                ("mark_id", "text"),
                ("instance_id", "text"),
                ("at", "float8"),
                ("source", "text"),
                ("extra_disk_from", "int"),
                ("extra_disk_to", "int"),
                ("action_id", "text"),
            ],
            [
                (m.mark_id, m.instance_id, m.at, m.source, m.extra_disk_from, m.extra_disk_to, m.action_id)
                for m in marks
            ],
        )
        await self.tx.execute(
            f"""WITH {cte}
               INSERT INTO disk_history (mark_id, instance_id, at, source, extra_disk_from,
                   extra_disk_to, action_id)
               SELECT mark_id, instance_id, at, source, extra_disk_from, extra_disk_to, action_id
               FROM v WHERE true
               ON CONFLICT (mark_id) DO NOTHING""",
            *args,
        )

    async def disk_known(self, instance_id: str) -> DiskKnown | None:
        """The instance's extra disk as last read or set, and when it last changed — a mark of
        a resize made or seen; a ``read`` mark only says what it was (None: never read)."""
        last = await self.tx.fetchrow(
            """SELECT extra_disk_to FROM disk_history WHERE instance_id = $1
               ORDER BY at DESC, mark_id DESC LIMIT 1""",
            instance_id,
        )
        if last is None:
            return None
        changed = await self.tx.fetchrow(
            f"""SELECT MAX(at) AS at FROM disk_history
               WHERE instance_id = $1 AND source IN ('{AUTOPILOT}', '{SEEN}')""",
            instance_id,
        )
        at = changed["at"] if changed is not None else None
        return DiskKnown(int(last["extra_disk_to"]), float(at) if at is not None else None)
