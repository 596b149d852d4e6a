"""The SQLite adapter's locking, against real SQLite files and a second connection that stands
in for another process (SQLite locks connections, not processes)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

from shared.db import SqliteDatabase, _set_wal
from shared.incidents import plan_incident
from shared.store import Store
from tests.integration.test_store import alarm
from tests.support import OneByOne, wait_until


async def test_a_write_waits_for_another_writer_without_blocking_the_event_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = await Store.open(url)
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.ensure_future(ticker())
    try:
        other.execute("BEGIN IMMEDIATE")  # the other process holds the write lock
        a = alarm()
        write = asyncio.ensure_future(OneByOne(store).record_event(a, "i1", plan_incident(a, "i1"), 100.0))
        await wait_until(lambda: ticks >= 20, timeout=10, what="the event loop to keep running")
        assert not write.done()

        other.execute("COMMIT")
        record = await asyncio.wait_for(write, timeout=10)

        assert record.new
        db = store.db
        assert isinstance(db, SqliteDatabase) and db.conn is not None
        # The wait happened on the database thread; the event loop's thread never waits.
        assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
        assert len(await store.list_events()) == 1
    finally:
        ticking.cancel()
        other.close()
        await store.close()


def test_switching_to_wal_tries_again_while_another_connection_holds_the_lock(tmp_path: Path) -> None:
    # Two processes creating the database at once can deadlock on the switch to WAL, and
    # SQLite then fails at once without waiting; a connection with no busy timeout shows the
    # same immediate "locked" on every attempt until the other lets go.
    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    opener = sqlite3.connect(path, isolation_level=None)
    opener.execute("PRAGMA busy_timeout = 0")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        _set_wal(opener)
        assert opener.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        opener.close()
        holder.close()


async def test_the_wal_is_checkpointed_in_the_background_and_stays_bounded(tmp_path: Path) -> None:
    # Commits on the event loop's thread never checkpoint (that fsyncs); a thread of the
    # store's own does. Without it the WAL would grow with every write: ≈ 25 KiB an event.
    path = tmp_path / "state.db"
    store = await Store.open(f"sqlite:///{path}")
    try:
        for n in range(1500):
            a = alarm(f"e{n}", alarm_type="memory", value=85, instance_id=f"i{n % 50}")
            await OneByOne(store).record_event(a, "i1", plan_incident(a, "i1"), 100.0)
            await asyncio.sleep(0)  # let the checkpointer run, as message I/O would
        wal = await asyncio.to_thread(os.path.getsize, f"{path}-wal")
        assert wal < 12 * 2**20, f"WAL is {wal} bytes"
        assert len(await store.list_events(limit=2000)) == 1500
    finally:
        await store.close()


async def test_a_checkpoint_gives_up_soon_while_another_process_keeps_reading(tmp_path: Path) -> None:
    # A checkpoint holds this process's transactions while it waits; a reader elsewhere that
    # keeps an old snapshot open (an operator's sqlite3 shell) must not stall them for long.
    path = tmp_path / "state.db"
    store = await Store.open(f"sqlite:///{path}")
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        for n in range(3):
            a = alarm(f"e{n}")
            await OneByOne(store).record_event(a, "i1", plan_incident(a, "i1"), 100.0)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM events").fetchone()
        later = alarm("e-later")
        await OneByOne(store).record_event(later, "i1", plan_incident(later, "i1"), 100.0)
        db = store.db
        assert isinstance(db, SqliteDatabase)

        started = time.monotonic()
        await asyncio.wait_for(db.checkpoint(), timeout=10)

        assert time.monotonic() - started < 5
        last = alarm("e-last")
        assert (await OneByOne(store).record_event(last, "i1", plan_incident(last, "i1"), 100.0)).new
    finally:
        reader.close()
        await store.close()
