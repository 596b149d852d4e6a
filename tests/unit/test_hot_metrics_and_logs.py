"""The receiver's per-request metrics and log line are cheaper kinds of the same thing: what a
scrape or a log reader sees is what prometheus_client's ``Counter``/``Histogram`` and
structlog's standard JSON chain produce (docs/benchmarks.md, the receiver's cost)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import orjson
import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from shared.logs import FdLogger, console_processors, render_json
from shared.metrics import HotCounter, HotHistogram

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def exposition(registry: CollectorRegistry) -> str:
    """The text a scrape gets, creation times masked (they differ by construction)."""
    return re.sub(r"^(\S+_created(\{[^}]*\})?) \S+$", r"\1 T", generate_latest(registry).decode(), flags=re.M)


@pytest.mark.parametrize(
    "observations",
    [
        [],
        [0.0004],
        [0.001, 0.0025, 5.0, 1.0],  # on the bounds: "le" includes them
        [0.0010000001, 0.003, 0.2, 7.5, 120.0, 0.0],
        [i / 1000 for i in range(0, 6000, 7)],
    ],
)
def test_a_hot_histogram_scrapes_as_a_histogram_with_the_same_observations(observations: list[float]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("x_seconds", "how long", BUCKETS, registry=ours)
    real = Histogram("x_seconds", "how long", buckets=BUCKETS, registry=theirs)
    for value in observations:
        hot.observe(value)
        real.observe(value)
    assert exposition(ours) == exposition(theirs)
    assert "x_seconds_created T" in exposition(ours)


def test_a_hot_counter_scrapes_as_a_labelled_counter_with_the_same_increments() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotCounter("y", "answers", ["route", "status"], registry=ours)
    real = Counter("y", "answers", ["route", "status"], registry=theirs)
    assert exposition(ours) == exposition(theirs)
    for route, status in [("/a", 202), ("/a", 202), ("unmatched", 404), ("/a", 400), ("/a", 202)]:
        hot.inc((route, status))
        real.labels(route, str(status)).inc()
    assert exposition(ours) == exposition(theirs)
    assert 'y_total{route="/a",status="202"} 3.0' in exposition(ours)


class Thing:
    def __repr__(self) -> str:
        return "<thing>"


def standard_chain() -> list[Any]:
    """What the JSON format was before: structlog's stock processors and orjson."""
    return [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=orjson.dumps),
    ]


def without_time(line: bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(line)
    parsed.pop("timestamp")
    return parsed


@pytest.mark.parametrize("method", ["info", "warning", "warn", "error", "exception", "debug", "critical"])
def test_a_json_line_has_the_keys_order_and_values_of_the_standard_chain(method: str) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    event: dict[str, Any] = {"event_id": "e1", "n": 3, "what": Thing(), "event": "alarm.accepted"}
    if method in ("error", "exception"):
        event["exc_info"] = exc_info
    ours = render_json(None, method, dict(event))
    theirs: Any = dict(event)
    for processor in standard_chain():
        theirs = processor(None, method, theirs)
    assert ours.endswith(b"\n") and ours.count(b"\n") == 1
    assert list(json.loads(ours)) == list(json.loads(theirs))
    assert without_time(ours) == without_time(theirs)


def test_a_json_line_is_stamped_now_in_utc_with_microseconds() -> None:
    before = time.time()
    stamp = json.loads(render_json(None, "info", {"event": "x"}))["timestamp"]
    after = time.time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert before - 1e-6 <= when <= after


def test_the_fd_logger_writes_each_line_whole(tmp_path: Any) -> None:
    path = tmp_path / "log"
    with open(path, "wb") as out:
        logger = FdLogger(out.fileno())
        lines = [render_json(None, "info", {"event": f"e{i}", "pad": "x" * i * 97}) for i in range(200)]
        for line in lines:
            logger.info(line)
    assert path.read_bytes() == b"".join(lines)
    assert io.BytesIO(path.read_bytes()).read().count(b"\n") == 200


def test_the_json_format_writes_filtered_lines_with_context_keywords_and_event_in_order() -> None:
    """A process configured for JSON logs (as the receiver and the worker are)."""
    script = """
import structlog
from shared.logs import configure_logging
configure_logging("json", "info")
log = structlog.get_logger("receiver")
log.debug("hidden")
log.info("alarm.accepted", event_id="e1", instance="i1")
log.bind(worker=2).warning("broker.unavailable", error="gone")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("request.failed", path="/x")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True, timeout=60)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [list(line) for line in lines] == [
        ["event_id", "instance", "event", "level", "timestamp"],
        ["worker", "error", "event", "level", "timestamp"],
        ["path", "event", "level", "timestamp", "exception"],
    ]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("alarm.accepted", "info"),
        ("broker.unavailable", "warning"),
        ("request.failed", "error"),
    ]
    assert lines[1]["worker"] == 2 and "ZeroDivisionError" in lines[2]["exception"]


def _raise_with_locals(depth: int) -> None:
    payload = {f"key-{i}": list(range(50)) for i in range(200)}  # locals a verbose renderer would draw
    if depth == 0:
        raise ValueError(f"refused ({len(payload)})")
    _raise_with_locals(depth - 1)


def test_the_console_format_writes_an_exception_as_plain_text_without_locals() -> None:
    """``console_processors``: what the services (LOG_FORMAT=console) and the test processes
    (tests/conftest.py) log. structlog's default drew tracebacks with rich and every frame's
    locals, holding the event loop for seconds."""
    assert any(p is structlog.processors.format_exc_info for p in structlog.get_config()["processors"])
    out = io.StringIO()
    log = structlog.wrap_logger(structlog.PrintLogger(out), processors=console_processors(colors=False))
    try:
        _raise_with_locals(8)
    except ValueError:
        log.error("alarm.processing_failed", event_id="e-1", exc_info=True)
    text = out.getvalue()
    assert "alarm.processing_failed" in text and "event_id=e-1" in text
    assert "Traceback (most recent call last):" in text and "ValueError: refused (200)" in text
    assert "key-199" not in text and "╭" not in text  # neither locals nor rich's boxes
