"""The release step (Heroku's ``release`` phase, ``python -m shared.migrate``) migrates the store."""

from __future__ import annotations

import os

import pytest

from shared.db import open_database
from shared.store import MIGRATIONS
from tests.support import run_command

pytestmark = pytest.mark.integration


async def _run_migrate(database_url: str) -> tuple[int, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": database_url,
        "LOG_FORMAT": "json",
    }
    done = await run_command("shared.migrate", env=env, inherit=False)
    return done.returncode, done.stderr


async def _schema_version(database_url: str) -> int | None:
    db = await open_database(database_url)
    try:
        async with db.transaction(write=False) as tx:
            row = await tx.fetchrow("SELECT MAX(version) AS v FROM schema_version")
    except Exception:
        return None  # no schema_version table: never migrated
    finally:
        await db.close()
    return int(row["v"]) if row and row["v"] is not None else None


@pytest.mark.new_store
async def test_given_an_empty_store_when_the_release_step_runs_then_the_schema_is_current(
    database_url: str,
) -> None:
    assert await _schema_version(database_url) is None

    status, err = await _run_migrate(database_url)

    assert status == 0, err
    assert await _schema_version(database_url) == len(MIGRATIONS)
    assert '"event":"store.migrated"' in err


async def test_given_a_current_store_when_the_release_step_runs_again_then_nothing_changes(
    database_url: str,
) -> None:
    assert (await _run_migrate(database_url))[0] == 0

    status, err = await _run_migrate(database_url)

    assert status == 0, err
    assert await _schema_version(database_url) == len(MIGRATIONS)


async def test_given_an_unreachable_store_then_the_release_fails_with_one_line_and_no_password() -> None:
    status, err = await _run_migrate("postgresql://autopilot:s3cret-pw@127.0.0.1:9/autopilot")

    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("migrate: state store error:"), err
    assert "s3cret-pw" not in err
