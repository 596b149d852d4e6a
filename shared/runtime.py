"""Process entry-point helpers shared by the receiver, the worker and the CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from shared.logs import configure_logging
from shared.settings import ConfigError, Settings


def load_settings_or_exit(program: str) -> Settings:
    """Settings from the environment, or one line on stderr and exit status 2."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


def fail(program: str, message: str) -> None:
    """Stop at start with one line on stderr."""
    print(f"{program}: {message}", file=sys.stderr)
    raise SystemExit(1)


def install_stop_handlers(stop: asyncio.Event, on_signal: Callable[[str], None]) -> None:
    """SIGTERM and SIGINT set ``stop`` (graceful shutdown)."""
    loop = asyncio.get_running_loop()

    def handle(sig: signal.Signals) -> None:
        on_signal(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop where it is installed (a cheaper event loop and
    socket transport under load; see docs/benchmarks.md), plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
