"""``python -m receiver``: the HTTP receiver."""

from __future__ import annotations

import gc

# Run as a program: no cyclic collection while the modules load (settle_gc turns it back on
# once up). Imported, as a test does, it leaves the collector alone.
if __name__ == "__main__":
    gc.disable()

import asyncio
import logging

import structlog
from aiohttp import web

from receiver.app import create_app, make_runner
from shared.errors import StoreError
from shared.policy_file import PolicyError
from shared.runtime import fail, install_stop_handlers, load_settings_or_exit, run_main, settle_gc
from shared.settings import Settings

log = structlog.get_logger("receiver")


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_stop_handlers(stop, lambda name: log.info("receiver.signal", signal=name))
    try:
        app = create_app(settings)
    except PolicyError as exc:
        fail("receiver", str(exc))
        return
    # The access log at LOG_LEVEL=debug only (a line per request), its paths redacted.
    access = logging.getLogger("aiohttp.access") if settings.log_level == "debug" else None
    runner = make_runner(app, access_log=access)
    try:
        await runner.setup()
    except StoreError as exc:
        fail("receiver", f"state store error: {exc}")
    if not settings.webhook_token:
        log.warning("receiver.no_token", detail="WEBHOOK_TOKEN is unset: anyone can post alarms")
    if not settings.operator_token:
        log.warning(
            "receiver.operator_writes_disabled",
            detail="OPERATOR_TOKEN is unset: pause, resume, approve and deny answer 403",
        )
    if not settings.console_session_key:
        log.warning(
            "receiver.console_session_key_generated",
            detail="CONSOLE_SESSION_KEY is unset: console logins end when this receiver stops",
        )
    site = web.TCPSite(runner, settings.receiver_host, settings.receiver_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        fail("receiver", f"cannot listen on {settings.receiver_host}:{settings.receiver_port}: {exc}")
    settle_gc()
    log.info(
        "receiver.ready",
        url=f"http://{settings.receiver_host}:{settings.receiver_port}/cloudamqp/alarm",
        settings=settings.public_dict(),
    )
    await stop.wait()
    await runner.cleanup()
    log.info("receiver.stopped")


if __name__ == "__main__":
    run_main(main(load_settings_or_exit("receiver")))
