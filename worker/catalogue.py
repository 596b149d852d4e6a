"""The worker's copy of CloudAMQP's plan catalogue (``GET /api/plans``): read at start and
every ``REFRESH_SECONDS``, kept in the store with when it was read, and — when the API does
not answer — the last good copy from the store, said to be stale. Without an API key there
is nothing to read: the built-in ladder stands and nothing is checked (said once at start).

The copy is handed to the first step's pure fold (``worker.first_step.Context.catalogue``)
and to the price check before a call (``worker.upgrade_call``); nothing decides here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from shared.alarm import iso
from shared.catalogue import Catalogue
from shared.errors import PermanentError, RetryableError, StoreError
from shared.policy import Policy, off_ladder_warnings, unsold_plan_warnings
from shared.store import Store
from shared.store.prices import kept_catalogue
from worker.cloudamqp import CloudAmqpClient

log = structlog.get_logger("worker")

REFRESH_SECONDS = 86400.0  # CloudAMQP's prices change rarely; a day-old copy is fresh enough


class PlanCatalogue:
    """What CloudAMQP sells, as this worker last knew it. ``current`` is None without an API
    key (nothing is checked), an unknown ``Catalogue`` until one is read or found kept."""

    def __init__(self, store: Store, client: CloudAmqpClient | None, clock: Callable[[], float] = time.time):
        self.store = store
        self.client = client
        self.clock = clock
        self.current: Catalogue | None = None if client is None else Catalogue()

    async def read(self) -> Catalogue | None:
        """Read the catalogue from the API and keep it; when the API does not answer, use the
        copy the store kept (the newest any worker read)."""
        if self.client is None:
            return None
        now = self.clock()
        try:
            catalogue = Catalogue.from_listing(await self.client.list_plans(), now)
        except (RetryableError, PermanentError, ValueError) as exc:
            return await self._kept(str(exc))
        try:
            async with self.store.unit() as unit:
                await unit.save_catalogue(catalogue)
        except (StoreError, OSError) as exc:
            log.warning("plans.not_kept", error=str(exc))
        self.current = catalogue
        log.info("plans.read", plans=len(catalogue.offers))
        return catalogue

    async def _kept(self, error: str) -> Catalogue | None:
        try:
            kept = await kept_catalogue(self.store.db)
        except (StoreError, OSError):
            kept = None
        current = self.current
        newer = kept is not None and (kept.read_at or 0.0) > ((current.read_at if current else None) or 0.0)
        if newer:
            self.current = current = kept
        if current is not None and current.known:
            log.warning(
                "plans.stale",
                error=error,
                read_at=iso(current.read_at),
                detail="GET /api/plans did not answer: the last good copy of the plan catalogue is used",
            )
        else:
            log.warning(
                "plans.unread",
                error=error,
                detail="GET /api/plans did not answer and no copy is kept: plan names are not checked "
                "and prices are not known (an upgrade under a spending cap is refused) until it does",
            )
        return current

    def warn_about(self, policy: Policy, *, from_settings: bool) -> list[str]:
        """Say at start what the catalogue makes of the policy's plan names: each name not sold
        (with the closest ones), each fixed plan off its ladder; or that nothing is checked."""
        if self.client is None:
            log.warning(
                "plans.unchecked",
                detail="CLOUDAMQP_API_KEY is unset: plan names and prices are not checked; "
                "the built-in ladder stands",
            )
            for line in off_ladder_warnings(policy):
                log.warning("policy.plan_not_on_ladder", detail=line)
            return []
        catalogue = self.current
        lines = unsold_plan_warnings(policy, catalogue, from_settings=from_settings) if catalogue else []
        for line in lines:
            log.warning("policy.plan_not_sold", detail=line)
        for line in off_ladder_warnings(policy, catalogue):
            log.warning("policy.plan_not_on_ladder", detail=line)
        return lines

    async def run(self, stop: asyncio.Event, listing: Callable[[], Awaitable[None]]) -> None:
        """Read the catalogue again every ``REFRESH_SECONDS`` until ``stop``, and with it
        CloudAMQP's instance list (``listing``: the plans the instances are on)."""
        if self.client is None:
            return
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
                return
            await self.read()
            await listing()
