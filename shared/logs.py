"""structlog set-up: named events with bound context, JSON or console output.

JSON lines are the receiver's per-request cost that is not the request itself (one
``alarm.accepted`` line per 202), so that chain is one processor and one ``write``: level,
timestamp, exception and rendering in ``render_json``, written by ``FdLogger`` (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson
import structlog

_LEVEL_NAMES = {"warn": "warning", "exception": "error"}  # what structlog's add_log_level maps
_format_exc_info = structlog.processors.format_exc_info


# The current second, formatted: a line's ISO 8601 UTC timestamp is this and its microseconds
# (``datetime.now(UTC).isoformat()`` costs a few times more, and runs for every line).
_second: list[Any] = [-1, ""]


def _fallback(obj: Any) -> Any:
    """What structlog's JSONRenderer does with values JSON has no type for."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


def render_json(logger: Any, method_name: str, event_dict: Any) -> bytes:
    """add_log_level + TimeStamper(iso, utc) + format_exc_info + JSONRenderer, in one call:
    the same keys in the same order, one JSON object and a newline."""
    event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
    second, rest = divmod(time.time_ns(), 1_000_000_000)
    if second != _second[0]:
        _second[:] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    event_dict["timestamp"] = f"{_second[1]}.{rest // 1000:06d}Z"
    if "exc_info" in event_dict:
        event_dict = _format_exc_info(logger, method_name, event_dict)
    try:
        return orjson.dumps(event_dict, default=_fallback, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        # A value orjson cannot write (nested past 254 levels, an integer wider than 64 bits, a
        # lone surrogate): the line is still written, that value shown by its repr.
        return orjson.dumps(
            {k: _writable(v) for k, v in event_dict.items()}, option=orjson.OPT_APPEND_NEWLINE
        )


def _writable(value: Any) -> Any:
    try:
        orjson.dumps(value, default=_fallback)
    except orjson.JSONEncodeError:
        try:
            return repr(value)[:1000].encode("utf-8", "replace").decode("utf-8")
        except Exception:  # a repr nested past the recursion limit
            return f"<{type(value).__name__}>"
    return value


class FdLogger:
    """Writes each rendered line to a file descriptor with one ``write``: no Python buffer to
    flush and no lock (a line is one system call; a short write is finished)."""

    def __init__(self, fd: int):
        self._fd = fd

    def msg(self, line: bytes) -> None:
        written = os.write(self._fd, line)
        while written < len(line):
            line = line[written:]
            written = os.write(self._fd, line)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = failure = msg


def _json_wrapper(level: int) -> type[Any]:
    """structlog's level-filtering logger whose lines go straight to ``render_json`` and the
    logger: the JSON chain is that one processor, so structlog's generic loop over processors
    (a copy of the context, a second copy of the keywords, type checks of the result) is
    skipped. Key order as structlog's: bound context, keywords, ``event``."""
    base: Any = structlog.make_filtering_bound_logger(level)

    class JsonBoundLogger(base):  # type: ignore[misc]
        def _proxy_to_logger(self, method_name: str, event: str | None = None, **event_kw: Any) -> Any:
            if self._context:
                event_kw = {**self._context, **event_kw}
            event_kw["event"] = event
            return self._logger.msg(render_json(self._logger, method_name, event_kw))

    return JsonBoundLogger


def console_processors(colors: bool) -> list[structlog.types.Processor]:
    """The console format's chain. An exception is rendered as plain text (``format_exc_info``)
    before the renderer sees it: structlog's default would draw it with ``rich`` where that is
    installed, with every frame's locals — 0.5–1.6 s of CPU for one traceback of the worker,
    blocking the event loop meanwhile."""
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.dev.ConsoleRenderer(colors=colors),
    ]


def configure_logging(log_format: str, level: str) -> None:
    """Route structlog and stdlib logging to stderr in the chosen format."""
    numeric = getattr(logging, level.upper(), logging.INFO)
    processors: list[structlog.types.Processor]
    factory: Any
    if log_format == "json":
        processors = [render_json]
        stderr = FdLogger(sys.stderr.fileno())
        factory = lambda *args: stderr  # noqa: E731 - structlog calls it with the logger's name
        wrapper = _json_wrapper(numeric)
    else:
        processors = console_processors(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(file=sys.stderr)
        wrapper = structlog.make_filtering_bound_logger(numeric)
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING), format="%(message)s")
    structlog.configure(
        processors=processors,
        wrapper_class=wrapper,
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
