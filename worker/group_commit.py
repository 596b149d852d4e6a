"""Group commit: items committed together in one call (one transaction), each settled on its
own. One collector serves every use: the alarms' first steps (``worker.batch.FirstSteps``),
the changes written down before they are asked (``Askings``) and the upgrades' outcomes
(``Finishes``).

A batch is what has arrived by the time the store is free, at most ``limit``. A lone item
waits for nothing: the store takes it on the next turn of the event loop. A collector given
a ``window`` (the first steps) waits up to that long for more when more are on their way (see
``Collector._busy``). A batch whose transaction fails is tried again one item at a time, so
that one item the store refuses fails alone and never sends its neighbours to a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import structlog

from shared import metrics
from shared.records import Asking, Finish
from shared.store import Store

log = structlog.get_logger("worker")
T = TypeVar("T")
R = TypeVar("R")


class Collector(Generic[T, R]):
    """Collects items and commits them a batch at a time with ``commit`` (one call, one
    transaction, one result per item, in order); each caller gets its own item's result, or
    the exception its item failed with alone.

    ``window`` and ``in_flight``: under load (others in flight, whose acks bring the next
    deliveries, and the last batch not alone) a batch waits up to ``window`` seconds to fill.
    Without a window nothing waits. ``on_batch`` sees each batch's size before it commits."""

    def __init__(
        self,
        commit: Callable[[list[T]], Awaitable[Sequence[R]]],
        limit: int,
        fallback: str,
        *,
        window: float = 0.0,
        in_flight: Callable[[], int] = lambda: 0,
        on_batch: Callable[[int], None] = lambda size: None,
    ):
        self.commit = commit
        self.limit = max(1, limit)
        self.fallback = fallback
        self.window = window
        self.in_flight = in_flight  # items being worked on, those waiting here included
        self.on_batch = on_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._runner: asyncio.Future[None] | None = None
        self._full: asyncio.Future[None] | None = None  # set when a waiting batch is full
        self._last_size = 1
        self._ahead = 0  # how many of those waiting came ``first``

    async def add(self, item: T, *, first: bool = False) -> R:
        """Commit ``item`` (with whatever else is waiting); its result. Raises what its commit
        raised when it failed on its own. ``first``: ahead of the others waiting (in its order
        among those that came ``first`` too)."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        if first:
            self._waiting.insert(self._ahead, (item, done))
            self._ahead += 1
        else:
            self._waiting.append((item, done))
        if self._full is not None and len(self._waiting) >= self.limit and not self._full.done():
            self._full.set_result(None)
        if self._runner is None:
            # Started, not run: the items that arrive with this one join it before it begins.
            self._runner = asyncio.ensure_future(self._run())
        return await done

    async def _run(self) -> None:
        try:
            while self._waiting:
                if self._busy():
                    await self._gather()
                batch, self._waiting = self._waiting[: self.limit], self._waiting[self.limit :]
                self._ahead = max(0, self._ahead - len(batch))
                self._last_size = len(batch)
                self.on_batch(len(batch))
                await commit_together(batch, self.commit, self.fallback)
        finally:
            self._runner = None

    def _busy(self) -> bool:
        """More items are on their way: others are in flight and the last batch was not alone."""
        waiting = len(self._waiting)
        return self.window > 0 and waiting < self.limit and self._last_size > 1 and self.in_flight() > waiting

    async def _gather(self) -> None:
        """Up to ``window`` seconds for the batch to fill."""
        loop = asyncio.get_running_loop()
        self._full = full = loop.create_future()
        timer = loop.call_later(self.window, settle, full, None)
        try:
            await full
        finally:
            timer.cancel()
            self._full = None


class Finishes(Collector[Finish, bool]):
    """Group commit of upgrades' outcomes: upgrades whose API calls come back together (they
    were requested together, from one batch) record their ends (claim, action row, audit entry,
    notification) in one transaction of set-based statements (``Store.finish_claims``). No
    window: a lone outcome is recorded at once."""

    def __init__(self, store: Store, limit: int = 64):
        super().__init__(
            store.finish_claims, limit, "the outcomes' transaction failed: they are recorded one at a time"
        )

    async def finish(self, finish: Finish) -> bool:
        """Record ``finish`` (with whatever else is waiting); what ``Store.finish_claim`` says."""
        return await self.add(finish)


class Askings(Collector[Asking, bool]):
    """Group commit of the changes about to be asked of CloudAMQP: the calls of one batch read
    their instances together and write down what they ask in one transaction (``Store.ask``)
    before any of them asks. No window: a lone call waits for nothing."""

    def __init__(self, store: Store, limit: int = 64):
        super().__init__(
            store.ask, limit, "the asked changes' transaction failed: they are written one at a time"
        )

    async def ask(self, asking: Asking) -> None:
        """Write ``asking`` down (with whatever else is waiting)."""
        await self.add(asking)


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
