"""Quick in-process retries (tenacity) whose first try costs nothing extra.

tenacity's bookkeeping runs for every attempt — a ``Future`` with a lock, its strategies
wrapped and inspected again — and costs more than the HTTP request it retries (about 110 µs
of a CloudAMQP read's 290 µs of client CPU here, docs/benchmarks.md). Nearly every call
succeeds at once, so ``first_then`` makes the first try outside tenacity, and only a failure
enters the loop: as that loop's first attempt, so its retry test, stop by attempts, waits,
attempt numbers and ``before_sleep`` see what they would have seen had it run from the start
(a stop by elapsed time counts from the first failure, one try later).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying

T = TypeVar("T")


async def first_then(
    call: Callable[[], Awaitable[T]],
    retrying: Callable[[], AsyncRetrying],
    retried: Callable[[BaseException], bool] | None = None,
) -> T:
    """``call()``, as ``async for attempt in retrying(): with attempt: return await call()``
    would, with the first try outside the loop (``retrying`` must re-raise, ``reraise=True``).
    ``retried``: the loop's retry test, where known, so that a failure it would not retry is
    raised without the loop. A stop by elapsed time counts from the first failure."""
    try:
        return await call()
    except Exception as exc:
        if retried is not None and not retried(exc):
            raise
        failed: Exception | None = exc
    async for attempt in retrying():
        with attempt:
            if failed is not None:
                first, failed = failed, None
                raise first  # the first try's failure, as the loop's first attempt
            return await call()
    raise AssertionError("a tenacity loop with reraise=True ends by returning or raising")
