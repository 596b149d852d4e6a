"""Pruning: every ``RETENTION_INTERVAL_SECONDS`` one worker among all (whichever takes the
slot, ``worker.schedule``) removes what is past its retention limit (``shared.retention``),
kind by kind, in small batches with a pause after each, so that the alarms' first steps —
which need the same store, on SQLite the same write lock — never wait long. On SQLite it then
hands the freed pages back to the file system, a few at a time (incremental vacuum).

A run stops by ``RUN_SHARE`` of its interval, before the next slot can be taken; what it did
not reach, the next run prunes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from shared import metrics
from shared.alarm import iso
from shared.db import SqliteDatabase
from shared.retention import Kind, Pace, cutoffs, next_size, pause_after, run_deadline
from shared.settings import Settings
from shared.store import Store
from shared.store import retention as pruning
from worker import schedule

log = structlog.get_logger("worker.retention")

SCHEDULE = "retention"
PACE = Pace()
# Free pages handed back per step at first (SQLite), then sized like the batches.
FIRST_PAGES = 64


@dataclass
class Run:
    """What one run did."""

    pruned: dict[Kind, int] = field(default_factory=dict)
    batches: int = 0
    pages: int = 0  # SQLite: free pages handed back
    finished: bool = True  # False: the deadline came first
    longest: float = 0.0  # seconds of the longest step (a batch, or pages handed back)


class Pruner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        worker_id: str,
        pace: Pace = PACE,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.worker_id = worker_id
        self.pace = pace
        self.clock = clock
        self.interval = settings.retention_interval_seconds
        self._stop = asyncio.Event()
        self._said_rebuild = False

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await schedule.every(
            self.store, SCHEDULE, self.worker_id, self.interval, self.prune, stop, self.clock
        )

    async def prune(self, run_number: int = 0) -> Run:
        """One run: every kind with a limit, then the file's free pages (SQLite)."""
        started = self.clock()
        deadline = run_deadline(started, self.interval)
        run = Run()
        limits = cutoffs(self.settings.retention, started)
        before = {kind.value: iso(at) for kind, at in limits.items()}
        log.info("retention.started", run=run_number, before=before)
        for kind, cutoff in limits.items():
            if not await self._prune_kind(kind, cutoff, deadline, run):
                run.finished = False
                break
        if run.finished and isinstance(self.store.db, SqliteDatabase):
            run.finished = await self._hand_back(self.store.db, deadline, run)
        log.info(
            "retention.pruned",
            run=run_number,
            pruned={kind.value: n for kind, n in run.pruned.items()},
            batches=run.batches,
            pages_freed=run.pages,
            longest_step_ms=round(run.longest * 1000, 1),
            finished=run.finished,
            seconds=round(self.clock() - started, 3),
        )
        return run

    async def _prune_kind(self, kind: Kind, cutoff: float, deadline: float, run: Run) -> bool:
        """Batches of ``kind`` until none is left before ``cutoff``; False when the deadline
        (or a stop) came first."""
        size, after = self.pace.first, pruning.Cursor()
        run.pruned.setdefault(kind, 0)
        while True:
            t0 = time.perf_counter()
            batch = await pruning.prune_batch(self.store.db, kind, cutoff, after, size)
            took = time.perf_counter() - t0
            run.longest = max(run.longest, took)
            run.batches += 1
            run.pruned[kind] += batch.pruned
            await self._copy_back()
            if batch.pruned:
                metrics.RETENTION_PRUNED.labels(kind.value).inc(batch.pruned)
            after = batch.after
            if not batch.more:
                return True
            size = next_size(size, took, self.pace)
            if not await self._rest(pause_after(took, self.pace), deadline):
                return False

    async def _hand_back(self, db: SqliteDatabase, deadline: float, run: Run) -> bool:
        """SQLite: free pages back to the file system, in steps sized like the batches; the
        file shrinks at the following checkpoints. A file created before incremental vacuum
        keeps its size (said once; ``autopilot vacuum`` switches it)."""
        facts = await db.file_facts()
        if not facts.incremental:
            if facts.free and not self._said_rebuild:
                self._said_rebuild = True
                log.warning(
                    "retention.file_not_shrinking",
                    free_bytes=facts.free_bytes,
                    detail="this SQLite file predates incremental vacuum: its free pages are reused, "
                    "never handed back; run `autopilot vacuum` once to switch it",
                )
            return True
        pages, free = FIRST_PAGES, facts.free
        while free > 0:
            t0 = time.perf_counter()
            freed = await db.free_pages(pages)
            took = time.perf_counter() - t0
            run.longest = max(run.longest, took)
            await self._copy_back()
            left = (await db.file_facts()).free
            run.pages += max(0, free - left)
            if not freed or left >= free:  # another process held the file: the next run
                return True
            free = left
            pages = next_size(pages, took, self.pace)
            if free and not await self._rest(pause_after(took, self.pace), deadline):
                return False
        return True

    async def _copy_back(self) -> None:
        """SQLite: copy what the step wrote from the WAL into the file now, beside this
        process's transactions (``checkpoint_beside``), while the alarms' writes leave gaps
        in which the WAL starts again. Left to the periodic checkpoint, a second of pruning's
        pages made a WAL long enough to be checkpointed holding the transactions."""
        if isinstance(self.store.db, SqliteDatabase):
            await self.store.db.checkpoint_beside()

    async def _rest(self, pause: float, deadline: float) -> bool:
        """Pause between batches; False when the run must end (deadline, or a stop)."""
        if self.clock() + pause >= deadline:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), pause)
        return not self._stop.is_set()
