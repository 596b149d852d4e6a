"""Thin database adapters with one interface: ``transaction()`` yields a ``Tx`` that runs
SQL written once, with PostgreSQL's ``$1`` placeholders (SQLite gets them as ``?1``).

- SQLite: one connection per process for its transactions, used on the event loop's thread
  (statements take microseconds), WAL mode, ``BEGIN IMMEDIATE`` for writes; waiting for
  another process's write lock happens on the event loop without blocking it, and WAL
  checkpoints (which fsync) on a thread and a connection of their own, beside the
  transactions. Files are created with ``auto_vacuum`` incremental, so that pages pruning
  frees can be handed back (``free_pages``).
- PostgreSQL: an asyncpg pool; schema changes are serialised with an advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import structlog

from shared.errors import StoreError
from shared.settings import redact_url

Row = dict[str, Any]
R = TypeVar("R")


class Tx(Protocol):
    dialect: str

    async def execute(self, sql: str, *args: Any) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...
    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


class Database(Protocol):
    dialect: str

    def transaction(self, *, write: bool = True) -> AbstractAsyncContextManager[Tx]: ...
    async def close(self) -> None: ...


PLACEHOLDER = re.compile(r"\$(\d+)")  # ``$1``: also renumbered by ``shared.queries``
# A column of ``rows_cte``: its name and PostgreSQL type (SQLite needs none).
Column = tuple[str, str]


def lit(status: StrEnum) -> str:
    """A status (one of our enums' members, never outside input) as an SQL literal."""
    return "'" + status.value.replace("'", "''") + "'"


def lits(statuses: Iterable[StrEnum]) -> str:
    """Statuses as the list of an SQL ``IN (...)``, in sorted order (a partial index's
    condition and the queries that use it must read the same, word for word)."""
    return ", ".join(lit(status) for status in sorted(statuses))


def rows_cte(
    dialect: str, name: str, columns: Sequence[Column], rows: Sequence[Sequence[Any]], first: int = 1
) -> tuple[str, list[Any]]:
    """A common table expression ``name(column, ...)`` holding ``rows``, for a statement that
    takes many rows at once (``WITH {cte} INSERT ... SELECT ... FROM name``), and its arguments,
    numbered from ``$first``. PostgreSQL gets one array per column through ``unnest``: one
    statement text (one prepared statement) for any number of rows. SQLite gets ``VALUES``."""
    names = ", ".join(column for column, _ in columns)
    if dialect == "postgresql":
        arrays = ", ".join(f"${first + i}::{kind}[]" for i, (_, kind) in enumerate(columns))
        args: list[Any] = [list(values) for values in zip(*rows, strict=True)]
        return f"{name}({names}) AS (SELECT * FROM unnest({arrays}))", args
    width = len(columns)
    tuples = ", ".join(
        "(" + ", ".join(f"${first + r * width + c}" for c in range(width)) + ")" for r in range(len(rows))
    )
    return f"{name}({names}) AS (VALUES {tuples})", [value for row in rows for value in row]


def member_of(dialect: str, column: str, values: Sequence[str], param: int) -> tuple[str, Any]:
    """The condition "``column`` is one of ``values``" (texts) on the parameter ``$param``, and
    that parameter's value: one statement text for any number of values. PostgreSQL gets
    ``= ANY`` of one array, which an index answers when the statement's plan is made on an
    empty store; the same lookup written as a join with the rows of ``rows_cte`` can be planned
    then as a nested loop over every row of the table, kept until the table is next analysed
    (docs/benchmarks.md). Not a cure for every lookup: planned on a table of some size,
    ``= ANY`` can become a scan testing each row against each value. SQLite gets the values
    as one JSON array (``json_each``)."""
    if dialect == "postgresql":
        return f"{column} = ANY(${param}::text[])", list(values)
    return f"{column} IN (SELECT value FROM json_each(${param}))", json.dumps(list(values))


AUTO_VACUUM_INCREMENTAL = 2  # PRAGMA auto_vacuum's answer for INCREMENTAL


@dataclass(frozen=True)
class FileFacts:
    """An SQLite file's pages (``SqliteDatabase.file_facts``)."""

    pages: int
    page_size: int
    free: int
    incremental: bool

    @property
    def bytes(self) -> int:
        return self.pages * self.page_size

    @property
    def free_bytes(self) -> int:
        return self.free * self.page_size


# How long an SQLite write waits for another process's write lock before failing.
BUSY_TIMEOUT_MS = 30000
_BEGIN_WRITE = "BEGIN IMMEDIATE"  # the write lock up front: nothing in the transaction waits
_BEGIN_READ = "BEGIN"
_SNAPSHOT = "SELECT 1 FROM sqlite_master LIMIT 1"  # a read transaction takes its snapshot here
# When the WAL is checkpointed: after this many commits, or this long after the first.
CHECKPOINT_COMMITS = 200
CHECKPOINT_SECONDS = 1.0
# A WAL this long (4 MiB of 4 KiB pages) at a checkpoint beside the transactions is then
# checkpointed in RESTART mode, holding them: the WAL starts again from its beginning. Light
# traffic, pruning included, leaves gaps in which a write finds everything copied and starts
# the WAL again itself; back-to-back writes (a storm) reach this within a second or two, and
# are held as every checkpoint held them before.
WAL_LIMIT_FRAMES = 1024
# How long a checkpoint waits for other processes' readers and writer (it holds this process's
# transactions meanwhile); one that could not finish is simply tried again later.
CHECKPOINT_WAIT_MS = 1000

log = structlog.get_logger("store")


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode. Two processes opening a new database at the same instant can
    deadlock on the switch, and SQLite then answers "locked" at once instead of waiting:
    try again, for as long as a write would wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause * (1 + random.random()))  # on the database thread, not the event loop
        pause = min(pause * 2, 0.2)


class _SqliteTx:
    """Statements of an open SQLite transaction, run on the event loop's thread: once
    ``BEGIN IMMEDIATE`` holds the write lock (or a WAL read has its snapshot) nothing waits on
    another process, and each statement takes microseconds — far less than a thread hop."""

    dialect = "sqlite"

    def __init__(self, db: SqliteDatabase):
        self._db = db

    def _cursor(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        assert self._db.conn is not None
        return self._db.conn.execute(self._db.sql(sql), args)

    async def execute(self, sql: str, *args: Any) -> None:
        self._cursor(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in self._cursor(sql, args).fetchall()]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = self._cursor(sql, args).fetchone()
        return dict(row) if row is not None else None


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str):
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._lock = asyncio.Lock()
        # One checkpoint at a time: a RESTART checkpoint must not start (holding this process's
        # transactions) while one beside them holds SQLite's checkpoint lock — it would wait for
        # it, up to CHECKPOINT_WAIT_MS, with every transaction waiting behind it.
        self._checkpointing = asyncio.Lock()
        self._conn: sqlite3.Connection | None = None
        self._side: sqlite3.Connection | None = None  # checkpoints beside the transactions
        # ... on a thread of their own: one under way never delays what the database thread
        # does while this process's transactions wait (a vacuum step, a RESTART checkpoint).
        self._side_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._sql_cache: dict[str, str] = {}
        self._checkpointer: _Checkpointer | None = None

    def sql(self, text: str) -> str:
        converted = self._sql_cache.get(text)
        if converted is None:
            converted = self._sql_cache[text] = PLACEHOLDER.sub(r"?\1", text)
        return converted

    async def run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, self._conn)  # type: ignore[arg-type]

    async def open(self) -> None:
        def connect(_: sqlite3.Connection) -> sqlite3.Connection:
            if self._path != ":memory:":
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Pages pruning frees go back to the file system a few at a time (``free_pages``).
            # This takes on a new file only; an older one keeps its mode until ``rebuild``.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            _set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints (copying the WAL back into the database, with an fsync) would run
            # inside a COMMIT on the event loop's thread; ``_Checkpointer`` runs them on the
            # database thread instead.
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            # Cut a WAL that grew during a long burst back to this size after a checkpoint.
            conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA busy_timeout = 0")  # see _waiting
            return conn

        def connect_side() -> sqlite3.Connection:
            side = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            side.execute("PRAGMA busy_timeout = 0")
            return side

        try:
            self._conn = await self.run(connect)
            if self._path != ":memory:":
                loop = asyncio.get_running_loop()
                self._side = await loop.run_in_executor(self._side_thread, connect_side)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite database {self._path!r}: {exc}") from exc
        self._checkpointer = _Checkpointer(self)

    async def checkpoint(self) -> None:
        """Copy the WAL back into the database file, off the event loop's thread, holding this
        process's transactions; the next write starts the WAL from its beginning."""
        async with self._checkpointing, self._lock:
            await self._on_thread(
                lambda c: self._waiting(c, "PRAGMA wal_checkpoint(RESTART)", CHECKPOINT_WAIT_MS)
            )

    async def checkpoint_beside(self) -> int:
        """Copy what no reader or writer holds back from the WAL into the database file, on a
        thread and a connection of its own, holding nothing of this process's (``PASSIVE``:
        this process's transactions, and other processes', go on meanwhile). A write that
        finds everything copied starts the WAL from its beginning; under back-to-back writes
        none does (each began before the copy was done). The WAL's length, in frames."""
        side = self._side
        if side is None:
            await self.checkpoint()
            return 0

        def passive() -> int:
            _, frames, _ = side.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return int(frames)

        async with self._checkpointing:
            done = asyncio.get_running_loop().run_in_executor(self._side_thread, passive)
            try:
                return await asyncio.shield(done)
            except asyncio.CancelledError:
                # The lock is ours until the thread has let go of SQLite's checkpoint lock.
                with contextlib.suppress(sqlite3.Error):
                    await done
                raise

    @property
    def conn(self) -> sqlite3.Connection | None:
        return self._conn

    async def file_facts(self) -> FileFacts:
        """The database file's pages: how many, how large, how many free, and whether freed
        pages can be handed back (``auto_vacuum`` incremental)."""
        async with self.transaction(write=False) as tx:
            rows = [
                await tx.fetchrow(f"PRAGMA {name}")
                for name in ("page_count", "page_size", "freelist_count", "auto_vacuum")
            ]
        count, size, free, mode = (int(next(iter(row.values()))) if row else 0 for row in rows)
        return FileFacts(count, size, free, mode == AUTO_VACUUM_INCREMENTAL)

    async def free_pages(self, pages: int, wait_ms: int = CHECKPOINT_WAIT_MS) -> bool:
        """Hand up to ``pages`` free pages back to the file system (incremental vacuum), in a
        write transaction of its own, on the database thread; the file shrinks at the next
        checkpoint. Waits up to ``wait_ms`` for another process's write lock (False: it was
        not free by then, nothing done)."""

        def vacuum(conn: sqlite3.Connection) -> None:
            # A script: the pragma frees one page per step, and only a script steps it to the
            # end (``execute`` stops after the first).
            script = f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(pages)}); COMMIT;"
            conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
            try:
                conn.executescript(script)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("PRAGMA busy_timeout = 0")

        async with self._lock:
            try:
                await self._on_thread(vacuum)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                return False
        if self._checkpointer is not None:
            self._checkpointer.committed()
        return True

    async def rebuild(self) -> None:
        """Rewrite the whole file with ``auto_vacuum`` incremental (``VACUUM``): what a file
        created before pruning needs, once, for ``free_pages`` to shrink it. Holds the write
        lock for as long as copying the file takes."""

        def rebuild(conn: sqlite3.Connection) -> None:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._waiting(conn, "VACUUM", BUSY_TIMEOUT_MS)
            self._waiting(conn, "PRAGMA wal_checkpoint(TRUNCATE)", BUSY_TIMEOUT_MS)

        async with self._lock:
            await self._on_thread(rebuild)

    @staticmethod
    def _waiting(conn: sqlite3.Connection, statement: str, wait_ms: int) -> None:
        """Run ``statement`` waiting up to ``wait_ms`` for other processes' locks; on the
        database thread only. The connection's own timeout is zero: the event loop's thread
        never waits for a lock."""
        conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
        try:
            conn.execute(statement)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _begin_now(self, write: bool) -> bool:
        """Begin on the event loop's thread if no other process is in the way right now (the
        usual case) — no thread hop at all. False, with nothing begun, when one is."""
        assert self._conn is not None
        try:
            self._conn.execute(_BEGIN_WRITE if write else _BEGIN_READ)
            if not write:
                self._conn.execute(_SNAPSHOT)
        except sqlite3.OperationalError as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if not _is_busy(exc):
                raise
            return False
        return True

    async def _begin_when_free(self, write: bool) -> None:
        """Another process holds the write lock (or, rarely, the read marks): try again after
        short jittered pauses — on the event loop, which stays free meanwhile — up to the
        busy timeout. (SQLite's own busy handler would sleep on a thread, up to 100 ms a
        try: a second worker process then mostly slept.)"""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.0002
        while True:
            await asyncio.sleep(pause * (0.5 + random.random()))
            if self._begin_now(write):
                return
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"database is locked (waited {BUSY_TIMEOUT_MS / 1000:g}s)")
            # A try costs microseconds and other writers hold the lock for about as long:
            # keep trying often rather than sleep through the moments it is free.
            pause = min(pause * 1.5, 0.002)

    async def _on_thread(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        """``fn`` on the database thread; if cancelled, the connection stays ours until the
        thread is done with it."""
        done = asyncio.ensure_future(self.run(fn))
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            with contextlib.suppress(sqlite3.Error):
                await done
            raise

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Tx]:
        async with self._lock:
            assert self._conn is not None
            if not self._begin_now(write):
                await self._begin_when_free(write)
            try:
                yield _SqliteTx(self)
                self._conn.execute("COMMIT")
                if write and self._checkpointer is not None:
                    self._checkpointer.committed()
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        if self._checkpointer is not None:
            await self._checkpointer.stop()
            self._checkpointer = None
        if self._side is not None:
            side, self._side = self._side, None
            await asyncio.get_running_loop().run_in_executor(self._side_thread, side.close)
        self._side_thread.shutdown(wait=False)
        if self._conn is not None:
            await self.run(lambda c: c.close())
            self._conn = None
        self._executor.shutdown(wait=False)


class _Checkpointer:
    """Checkpoints the WAL after ``CHECKPOINT_COMMITS`` commits, or ``CHECKPOINT_SECONDS``
    after the first one, on the database thread beside this process's transactions, which go
    on meanwhile (``checkpoint_beside``): copying a second of writes back into the file — and
    a second of pruning is a few thousand pages — never holds an alarm up. A WAL that still
    holds ``WAL_LIMIT_FRAMES`` afterwards (readers kept it from being copied, or writes
    outran it) gets a RESTART checkpoint, which holds this process's transactions and waits
    (up to ``CHECKPOINT_WAIT_MS``) for other processes' writer and readers, so that the next
    write starts the WAL from its beginning: it stays bounded."""

    def __init__(self, db: SqliteDatabase):
        self._db = db
        self._commits = 0
        self._due = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def committed(self) -> None:
        self._commits += 1
        if self._commits >= CHECKPOINT_COMMITS:
            self._due.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), CHECKPOINT_SECONDS)
            self._due.clear()
            if not self._commits:
                continue
            self._commits = 0
            try:
                if await self._db.checkpoint_beside() >= WAL_LIMIT_FRAMES:
                    await self._db.checkpoint()
            except sqlite3.Error as exc:
                # The next one catches up; SQLite stays correct with a longer WAL meanwhile.
                log.warning("store.checkpoint_failed", error=str(exc))

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _PgTx:
    dialect = "postgresql"

    def __init__(self, conn: Any):
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return [dict(r) for r in await self._conn.fetch(sql, *args)]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row = await self._conn.fetchrow(sql, *args)
        return dict(row) if row is not None else None


# PostgreSQL connections per process: the worker's first steps, the outcomes of upgrades
# whose calls come back together, the outbox relay and the schedule, each without a queue.
POOL_SIZE = 8


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str):
        self._url = url
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        try:
            self._pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    self._url,
                    min_size=1,
                    max_size=POOL_SIZE,
                    reset=_keep_session,
                    # Floats written as text (``shared.queries.fetch_together``'s JSON) exactly, whatever the
                    # server's default: any value above 0 is the shortest exact form (PG 12+).
                    server_settings={"extra_float_digits": "1"},
                ),
                timeout=10,
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            raise StoreError(f"cannot connect to PostgreSQL at {redact_url(self._url)}: {reason}") from None

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[Tx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _keep_session(conn: Any) -> None:
    """What a connection back in the pool needs: nothing. asyncpg's default resets the session
    with one more round trip per transaction (``RESET ALL``, ``UNLISTEN *``, advisory locks);
    the store sets no session state, listens to nothing and takes transaction-scoped locks
    only, and every use is a transaction that ends in commit or rollback."""


async def open_database(url: str) -> Database:
    """Open the database a ``DATABASE_URL`` names; ``StoreError`` (one line) when it cannot."""
    parts = urlsplit(url)
    db: SqliteDatabase | PostgresDatabase
    if parts.scheme == "sqlite":
        # sqlite:///relative/path, sqlite:////absolute/path, sqlite:///:memory:
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(f"DATABASE_URL {url!r} names no file (use sqlite:///path/to.db)")
        db = SqliteDatabase(path)
    elif parts.scheme in {"postgresql", "postgres"}:
        db = PostgresDatabase(url)
    else:
        raise StoreError(
            f"DATABASE_URL scheme {parts.scheme!r} is not supported (use sqlite:/// or postgresql://)"
        )
    await db.open()
    return db
