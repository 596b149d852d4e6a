"""The confirmation sweep: an upgrade CloudAMQP accepted is followed by a chain of check
messages through a delay queue until its plan shows. The store knows every such upgrade, and
when one's checks stop coming back — a 3-node RabbitMQ 3.10 cluster losing a node has been
seen holding messages in a quorum delay queue until a later leader change — the sweep sends
it a fresh check. A second chain is harmless: the first look that sees the plan closes the
action, and every other look then finds it closed.

One worker per interval runs it (``worker.schedule``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from shared import envelope, watch
from shared.errors import BrokerUnavailable
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store
from worker import schedule
from worker.outcomes import Retries

log = structlog.get_logger("worker.sweep")

SCHEDULE = "confirmation-sweep"
# Missed checks before an upgrade counts as lost by its chain, and upgrades sent per sweep.
MISSED_CHECKS = 5
BATCH = 100


class ConfirmationSweep:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        publisher: Publisher,
        *,
        worker_id: str,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.worker_id = worker_id
        self.clock = clock
        self.check_interval = Retries.from_settings(settings).check_interval
        # A chain looks every check interval (a failed plan read still counts as a look). One
        # silent for several is held somewhere; if it was only slow (an internal error's retry
        # through a longer delay queue), the second chain is harmless.
        self.allowance = MISSED_CHECKS * self.check_interval

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await schedule.every(
                self.store, SCHEDULE, self.worker_id, self.allowance, self.sweep, stop, self.clock
            )
        finally:
            await self.publisher.close()

    async def sweep(self, run: int = 0) -> int:
        """Send a check to every upgrade whose checks stopped; how many were sent."""
        now = self.clock()
        rows = await watch.unchecked_confirmations(self.store.db, now - self.allowance, BATCH)
        sent = 0
        for row in rows:
            check = envelope.Check(
                row["action_id"],
                row["instance_id"],
                row["plan"] or "",
                float(row["updated_at"]) + self.settings.upgrade_confirm_timeout_seconds,
                extra_disk=row["extra_disk_to"],
            )
            try:
                await self.publisher.publish_message(envelope.check_message(check))
            except BrokerUnavailable as exc:
                log.warning("upgrade.check_resend_failed", action_id=check.action_id, error=str(exc))
                break
            await watch.checked(self.store.db, check.action_id, now)
            log.warning(
                "upgrade.check_resent", action_id=check.action_id, instance=check.instance_id, plan=check.plan
            )
            sent += 1
        return sent
