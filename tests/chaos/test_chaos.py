"""The chaos suite, short: every scenario with small counts (about two minutes in all), but
the two on a 3-node cluster (``cluster-*``), which spend half a minute forming it each.

``make chaos`` runs the same scenarios long (``python -m tests.chaos``), the cluster ones too.
Each test prints its summary line: sent, accepted, processed, upgrades, duplicates, lost.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.chaos.harness import Env, Summary, dump
from tests.chaos.scenarios import SCENARIOS, Faults
from tests.support import Services

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

pytestmark = [pytest.mark.chaos, pytest.mark.early, pytest.mark.timeout(150)]


def _require(url: str, default_port: int, what: str) -> None:
    """Like the root conftest: fail loudly under CI=true, skip elsewhere."""
    parts = urlsplit(url)
    try:
        socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), timeout=1
        ).close()
    except OSError:
        if CI:
            pytest.fail(f"{what} is required under CI=true and does not answer", pytrace=False)
        pytest.skip(f"{what} does not answer")


@pytest.fixture
def chaos_env(services: Services, tmp_path: Path) -> Env:
    _require(services.amqp_url, 5672, "RabbitMQ")
    _require(services.management_url, 15672, "the RabbitMQ management API")
    _require(services.postgres_url, 5432, "PostgreSQL")
    return Env(services, tmp_path)


async def run(name: str, env: Env) -> Summary:
    scenario: Callable[[Env, Faults], Awaitable[Summary]] = SCENARIOS[name]
    summary = await scenario(env, Faults.short())
    print(summary.line())
    assert summary.ok, f"{summary.line()}\n{dump(summary)}"
    return summary


async def test_given_workers_sigkilled_under_load_then_every_alarm_is_processed_and_upgraded_once(
    chaos_env: Env,
) -> None:
    await run("worker-kill", chaos_env)


async def test_given_the_broker_restarting_under_load_then_the_receiver_503s_and_nothing_accepted_is_lost(
    chaos_env: Env,
) -> None:
    summary = await run("broker-restart", chaos_env)
    assert summary.details["http"].get("503", 0) > 0, "the outage was never seen as a 503"


async def test_given_the_broker_connection_dropping_during_an_upgrade_call_then_the_upgrade_is_not_repeated(
    chaos_env: Env,
) -> None:
    summary = await run("broker-drop-call", chaos_env)
    assert summary.details["calls_in_flight_at_drop"] >= 1


async def test_given_the_api_answering_503_for_a_while_then_every_upgrade_happens_once_afterwards(
    chaos_env: Env,
) -> None:
    summary = await run("api-503", chaos_env)
    # The worker reads the instance before it asks for a change: the outage may meet either.
    assert sum(n for k, n in summary.details["api"].items() if k.endswith(" 503")) > 0, "never hit"


async def test_given_the_api_hanging_past_the_timeout_then_every_upgrade_happens_once_afterwards(
    chaos_env: Env,
) -> None:
    summary = await run("api-hang", chaos_env)
    assert sum(n for k, n in summary.details["api"].items() if k.endswith(" hang")) > 0, "never hit"


async def test_given_the_store_refusing_connections_during_upgrades_then_nothing_is_lost_or_repeated(
    chaos_env: Env,
) -> None:
    summary = await run("store-outage", chaos_env)
    assert summary.details["backends_killed"] > 0


async def test_given_the_store_refusing_connections_in_instances_mode_then_nothing_is_lost_or_repeated(
    chaos_env: Env,
) -> None:
    summary = await run("store-outage-instances", chaos_env)
    assert summary.details["backends_killed"] > 0
