"""``shared.retrying.first_then`` behaves as the plain tenacity loop it replaces: the same calls,
waits, attempt numbers, result or error, for any run of successes and failures."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from shared.retrying import first_then


class Again(Exception):
    """A failure the loop retries."""


class Final(Exception):
    """A failure the loop gives up on at once."""


@dataclass
class Run:
    """A scripted callee and what the loop did around it."""

    outcomes: list[str]  # "ok", "again" or "final", one per call; then "ok"
    calls: int = 0
    slept: list[float] = field(default_factory=list)
    told: list[int] = field(default_factory=list)  # before_sleep's attempt numbers

    async def call(self) -> int:
        self.calls += 1
        outcome = self.outcomes[self.calls - 1] if self.calls <= len(self.outcomes) else "ok"
        if outcome == "again":
            raise Again(f"call {self.calls}")
        if outcome == "final":
            raise Final(f"call {self.calls}")
        return self.calls

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def retrying(self, attempts: int) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            self.told.append(state.attempt_number)

        return AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(Again),
            reraise=True,
            sleep=self.sleep,
            before_sleep=before_sleep,
        )


async def plain(run: Run, attempts: int) -> object:
    async for attempt in run.retrying(attempts):
        with attempt:
            return await run.call()
    raise AssertionError("unreachable")


async def first(run: Run, attempts: int) -> object:
    return await first_then(run.call, lambda: run.retrying(attempts))


async def first_knowing(run: Run, attempts: int) -> object:
    """Told the loop's retry test: a failure it would not retry skips the loop."""
    return await first_then(run.call, lambda: run.retrying(attempts), lambda exc: isinstance(exc, Again))


def outcome_of(coro_fn: object, run: Run, attempts: int) -> tuple[object, int, list[float], list[int]]:
    try:
        result: object = asyncio.run(coro_fn(run, attempts))  # type: ignore[operator]
    except (Again, Final) as exc:
        result = (type(exc).__name__, str(exc))
    return result, run.calls, run.slept, run.told


@settings(max_examples=300, deadline=None)
@given(
    outcomes=st.lists(st.sampled_from(["ok", "again", "final"]), max_size=6),
    attempts=st.integers(min_value=1, max_value=5),
)
def test_given_any_run_of_outcomes_then_first_then_does_what_the_plain_loop_does(
    outcomes: list[str], attempts: int
) -> None:
    expected = outcome_of(plain, Run(list(outcomes)), attempts)
    assert outcome_of(first, Run(list(outcomes)), attempts) == expected
    assert outcome_of(first_knowing, Run(list(outcomes)), attempts) == expected


def test_given_a_first_try_that_succeeds_then_no_retrying_is_built() -> None:
    built: list[int] = []

    async def call() -> str:
        return "done"

    def retrying() -> AsyncRetrying:
        built.append(1)
        return AsyncRetrying(reraise=True)

    assert asyncio.run(first_then(call, retrying)) == "done"
    assert built == []


def test_given_two_failures_then_success_then_third_call_answers_after_two_waits() -> None:
    run = Run(["again", "again"])
    assert outcome_of(first, run, 3) == (3, 3, [0.2, 0.4], [1, 2])


def test_given_a_failure_not_retried_then_it_is_raised_after_one_call() -> None:
    run = Run(["final"])
    assert outcome_of(first, run, 3) == (("Final", "call 1"), 1, [], [])


def test_given_the_retry_test_refuses_then_no_retrying_is_built() -> None:
    built: list[int] = []

    async def call() -> str:
        raise Final("no")

    def retrying() -> AsyncRetrying:
        built.append(1)
        return AsyncRetrying(reraise=True)

    with pytest.raises(Final):
        asyncio.run(first_then(call, retrying, lambda exc: isinstance(exc, Again)))
    assert built == []


def test_given_more_failures_than_attempts_then_the_last_is_raised() -> None:
    run = Run(["again"] * 5)
    assert outcome_of(first, run, 2) == (("Again", "call 2"), 2, [0.2], [1])
