"""Fixtures with real parts: RabbitMQ (a vhost per test), SQLite and PostgreSQL (a database
per test), a stand-in CloudAMQP API on loopback, and the real processes under test."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
import structlog

from shared.logs import console_processors
from shared.runtime import settle_gc
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.support import Services, leaked_secrets, management_request

CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _unavailable(what: str) -> None:
    if CI:
        pytest.fail(f"{what} is required under CI=true and does not answer", pytrace=False)
    pytest.skip(f"{what} does not answer")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """Where the broker and PostgreSQL are: the environment, local defaults, or containers."""
    amqp = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    mgmt = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672")
    pg = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    container = None
    parts = urlsplit(amqp)
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 5672):
        container = _start_rabbit_container()
        if container is not None:
            host = container.get_container_host_ip()
            amqp = f"amqp://guest:guest@{host}:{container.get_exposed_port(5672)}/"
            mgmt = f"http://guest:guest@{host}:{container.get_exposed_port(15672)}"
    services = Services(amqp_url=amqp, management_url=mgmt, postgres_url=pg)
    yield services
    for name in _migrated:  # the migrated database the tests' databases were copied from
        asyncio.run(_admin(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    if container is not None:
        container.stop()


def _start_rabbit_container() -> Any:
    """The Docker fallback, only where a Docker engine answers."""
    try:
        from testcontainers.rabbitmq import RabbitMqContainer

        container = RabbitMqContainer("rabbitmq:4-management").with_exposed_ports(5672, 15672)
        container.start()
        return container
    except Exception:
        return None


@pytest.fixture
async def vhost(services: Services) -> AsyncIterator[str]:
    """A fresh vhost for this test (deleted afterwards); yields its AMQP URL."""
    base = urlsplit(services.amqp_url)
    if not _port_open(base.hostname or "127.0.0.1", base.port or 5672):
        _unavailable("RabbitMQ")
    name = f"test-{uuid.uuid4().hex[:12]}"
    try:
        await management_request(services, "PUT", f"/api/vhosts/{name}")
        await management_request(
            services,
            "PUT",
            f"/api/permissions/{name}/guest",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
    except (aiohttp.ClientError, OSError):
        _unavailable("the RabbitMQ management API")
    yield base._replace(path="/" + quote(name, safe="")).geturl()
    await management_request(services, "DELETE", f"/api/vhosts/{name}")


def vhost_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


# Each test's PostgreSQL database is a copy (CREATE DATABASE … TEMPLATE) of one this test process
# migrated once: copying costs a third of migrating a new database, some 250 ms of the server's
# CPU less per test. A test marked ``new_store`` gets a database never migrated; SQLite's is new
# in every test, and tests/integration/test_store.py migrates new PostgreSQL stores at once from
# several connections.
_migrated: list[str] = []


async def _admin(services: Services, sql: str) -> None:
    import asyncpg

    try:
        admin = await asyncpg.connect(services.postgres_url, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        _unavailable("PostgreSQL")
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


def _database_url(services: Services, name: str) -> str:
    return urlsplit(services.postgres_url)._replace(path=f"/{name}").geturl()


async def _migrated_template(services: Services) -> str:
    if not _migrated:
        name = f"autopilot_migrated_{uuid.uuid4().hex[:12]}"
        await _admin(services, f'CREATE DATABASE "{name}"')
        store = await Store.open(_database_url(services, name))
        await store.close()
        _migrated.append(name)
    return _migrated[0]


async def _postgres_database(services: Services, *, new: bool = False) -> AsyncIterator[str]:
    name = f"autopilot_{uuid.uuid4().hex[:12]}"
    template = "" if new else f' TEMPLATE "{await _migrated_template(services)}"'
    await _admin(services, f'CREATE DATABASE "{name}"{template}')
    yield _database_url(services, name)
    await _admin(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_store(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker("new_store") is not None


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, services: Services
) -> AsyncIterator[str]:
    """The same test on both stores."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/autopilot.db"
        return
    async for url in _postgres_database(services, new=_new_store(request)):
        yield url


@pytest.fixture
async def postgres_url(request: pytest.FixtureRequest, services: Services) -> AsyncIterator[str]:
    """A PostgreSQL database of this test's own."""
    async for url in _postgres_database(services, new=_new_store(request)):
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/autopilot.db"


@pytest.fixture
async def fake_api() -> AsyncIterator[CloudAmqpStandIn]:
    api = CloudAmqpStandIn()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_process_log() -> Iterator[None]:
    """After the whole session: no token, key or password in any log our processes wrote."""
    yield
    leaks = leaked_secrets()
    assert not leaks, f"secrets in process logs: {leaks}"


# Modules whose tests share a costly module-scoped fixture (the broker checks' private node):
# under pytest-xdist (`make test`) all of such a module's tests go to one worker, so it is set
# up once, not once in every worker. Every other test is scheduled on its own.
ONE_WORKER_MODULES = frozenset({"tests/integration/test_broker_checks.py"})


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n N`` (``--dist load``): each test to the next free worker, but a module of
    ONE_WORKER_MODULES to a single one. (xdist's own ``xdist_group`` mark is no help: it
    renames node ids in a way pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class KeepModulesTogether(LoadScopeScheduling):  # type: ignore[misc]  # xdist: untyped
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return KeepModulesTogether(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """What runs in a test process (in-process workers, receivers, stand-ins) logs in the
    services' console format, exceptions as plain text: structlog's default chain drew each
    traceback with ``rich`` and every frame's locals, which held the event loop a worker and the
    CloudAMQP stand-in share for 0.5–1.6 s of CPU a traceback (seconds under a parallel run:
    upgrade calls timed out on an answer that was waiting). The rest of the default
    configuration (printing to stdout, no cache) stays, so pytest's capture still sees it."""
    structlog.configure(processors=console_processors(colors=False))


def pytest_collection(session: pytest.Session) -> None:
    """A test process collects with the collector held, as the services load their modules
    (the module objects and 1,500 test items are no garbage; passes over them took a quarter of
    collecting). Under pytest-xdist only the worker processes collect and call this."""
    gc.disable()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Each test process, once it has collected the tests, collects garbage as the services
    do once they are up (``shared.runtime.settle_gc``, which turns the collector back on): the
    suite is CPU-bound on two cores."""
    settle_gc()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
    # The long tests (marked ``early``) first: `make test` runs in parallel (pytest-xdist), and
    # a run should not end waiting on a long test that started late. A stable sort: the order
    # within each part, and so a module's tests kept together, stays as collected.
    items.sort(key=lambda item: item.get_closest_marker("early") is None)


__all__ = ["json", "asyncio", "vhost_name"]
