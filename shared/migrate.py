"""``python -m shared.migrate``: bring the state store's schema up to date, then exit.

The receiver and the worker migrate when they open the store too (under a PostgreSQL advisory
lock, so concurrent starts are safe); this command exists for a platform's release step —
Heroku's ``release`` phase, a Kubernetes init container — so that a schema change that fails
stops the release before any new process serves, instead of every new process failing at start.
"""

from __future__ import annotations

import asyncio

import structlog

from shared.errors import StoreError
from shared.runtime import fail, load_settings_or_exit
from shared.settings import Settings, redact_url
from shared.store import Store

log = structlog.get_logger("migrate")


async def main(settings: Settings) -> None:
    try:
        store = await Store.open(settings.database_url)
    except StoreError as exc:
        fail("migrate", f"state store error: {exc}")
        return
    await store.close()
    log.info("store.migrated", database=redact_url(settings.database_url))


if __name__ == "__main__":
    # A short-lived command: plain asyncio, uvloop would buy nothing here.
    asyncio.run(main(load_settings_or_exit("migrate")))
