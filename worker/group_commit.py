"""Group commit: items committed together in one call (one transaction), each settled on its
own — the alarms' first steps (``worker.batch``) and the upgrades' outcomes (``Finishes``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import structlog

from shared import metrics
from shared.records import Finish
from shared.store import Store

log = structlog.get_logger("worker")
T = TypeVar("T")


class Finishes:
    """Group commit of upgrades' outcomes: upgrades whose API calls come back together (they
    were requested together, from one batch) record their ends (claim, action row, audit entry,
    notification) in one transaction of set-based statements (``Store.finish_claims``). What
    waits is what arrived while the previous commit ran, at most ``limit``: no window, so a
    lone outcome is recorded at once. A batch whose transaction fails is tried again one
    outcome at a time, each failing (and retried by its caller) alone."""

    def __init__(self, store: Store, limit: int = 64):
        self.store = store
        self.limit = max(1, limit)
        self._waiting: list[tuple[Finish, asyncio.Future[bool]]] = []
        self._runner: asyncio.Future[None] | None = None

    async def finish(self, finish: Finish) -> bool:
        """Record ``finish`` (with whatever else is waiting); what ``Store.finish_claim`` says."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((finish, done))
        if self._runner is None:
            self._runner = asyncio.ensure_future(self._run())
        return await done

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[: self.limit], self._waiting[self.limit :]
                await commit_together(
                    batch,
                    self.store.finish_claims,
                    "the outcomes' transaction failed: they are recorded one at a time",
                )
        finally:
            self._runner = None


async def commit_together(
    batch: Sequence[tuple[T, asyncio.Future[Any]]],
    commit: Callable[[list[T]], Awaitable[Sequence[Any]]],
    fallback: str,
) -> None:
    """``commit`` the batch's items in one call (one transaction) and settle each one's future
    with its result. When the call fails for several, each is committed alone, so that an item
    the store refuses fails alone (``fallback`` says so in the log) and never its neighbours."""
    try:
        results = await commit([item for item, _ in batch])
    except Exception as exc:
        if len(batch) == 1:
            settle(batch[0][1], exc)
            return
        log.warning("batch.fallback", size=len(batch), error=f"{type(exc).__name__}: {exc}", detail=fallback)
        metrics.BATCH_FALLBACKS.inc()
        for item, done in batch:
            try:
                [result] = await commit([item])
            except Exception as alone:
                settle(done, alone)
            except BaseException as alone:
                settle(done, alone)
                raise
            else:
                settle(done, result)
        return
    except BaseException as exc:
        for _, done in batch:
            settle(done, exc)
        raise
    for (_, done), result in zip(batch, results, strict=True):
        settle(done, result)


def settle(step: asyncio.Future[Any], result: Any) -> None:
    """Give ``step`` its result (an exception is raised by its waiter), unless it has one."""
    if step.done():
        return
    if isinstance(result, BaseException):
        step.set_exception(result)
    else:
        step.set_result(result)
