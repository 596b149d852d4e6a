"""Process entry-point helpers shared by the receiver, the worker and the CLI."""

from __future__ import annotations

import asyncio
import gc
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


# How many new container objects start a collection of the youngest generation, once a process
# is up (CPython's default is 700; see ``settle_gc``).
GC_YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Once a process has started, take what start-up built (modules, settings, connections
    and pools: most of the heap, and none of it garbage) out of the cyclic collector's way
    (``gc.freeze``), and collect the youngest generation every ``GC_YOUNG_THRESHOLD`` new
    objects instead of 700. Handling an alarm allocates thousands of short-lived objects that
    reference counting frees; with the default the collector ran over a hundred times a second
    under load, re-scanning the objects in flight each time and the whole heap now and then,
    and took about a fifth of the worker's CPU (benchmark 2, docs/benchmarks.md). Cyclic
    garbage is still collected, a little later.

    The receiver and the worker hold the collector while their modules load (``gc.disable()``
    first thing in their ``__main__``): loading builds tens of thousands of objects and no
    garbage worth a pass, and the passes the default threshold makes over them cost about a
    sixth of a start. This turns it back on."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
    gc.enable()


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine on uvloop where it is installed (a cheaper event loop and
    socket transport under load; see docs/benchmarks.md), plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)
