"""The one place that brings up the local services the tests and ``make run`` need: RabbitMQ,
its management plugin, PostgreSQL and the test database — and, for the console's browser
tests, Debian's chromium.

``python -m tools.services`` (what ``make test`` runs first) makes sure of what the tests use:
``TEST_RABBITMQ_URL``, ``TEST_RABBITMQ_MANAGEMENT_URL`` and ``TEST_POSTGRES_URL``, with the
defaults of ``tests/conftest.py``. ``tools.launcher`` uses :func:`ensure_for_run` for
``RABBITMQ_URL`` and a PostgreSQL ``DATABASE_URL``.

Each step prints one ``[setup]`` line. A service on this machine that does not answer is
started (RabbitMQ, PostgreSQL), enabled (the management plugin) or completed (the test role
and database); a service elsewhere is only checked. When one cannot be had, one line names
what is missing and how to install it, and the command exits 1. Everything up already costs
a few port checks and one PostgreSQL connection.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import asyncpg

from shared import brokers

# The same variables and defaults as tests/conftest.py (and bench/harness.py).
TEST_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
TEST_RABBITMQ_MANAGEMENT_URL = "http://guest:guest@127.0.0.1:15672"
TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Debian puts the RabbitMQ commands in /usr/sbin, which a non-root PATH may not have.
_EXTRA_PATH = ("/usr/sbin", "/sbin", "/usr/lib/rabbitmq/bin")
BROKER_START_SECONDS = 90.0
MANAGEMENT_START_SECONDS = 60.0
POSTGRES_START_SECONDS = 60.0


class Missing(Exception):
    """A service that cannot be had here; the message is one line saying what to install."""


@dataclass(frozen=True)
class Started:
    """A service this command started, and the command that stops it again."""

    what: str
    stop: tuple[str, ...]


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, seconds: float) -> float | None:
    """Poll until ``host:port`` accepts a connection; the seconds it took, or None."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if port_open(host, port, timeout=0.5):
            return time.monotonic() - start
        time.sleep(0.25)
    return None


def which(command: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    return shutil.which(command, path=path)


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or default_port


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run(command: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run a set-up command quietly; its output is kept for the failure line."""
    try:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(command), 1, "", str(exc))


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr + "\n" + result.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def docker_works() -> bool:
    """A Docker engine answers (the client alone is not enough)."""
    docker = which("docker")
    return docker is not None and _run([docker, "info"], timeout=15).returncode == 0


# --- RabbitMQ ------------------------------------------------------------------------------


def ensure_rabbitmq(url: str, *, variable: str, docker: str) -> Started | None:
    """RabbitMQ answers at ``url``, started here when it can be. ``docker`` says what to do
    where only Docker can run it: ``"compose"`` starts the compose service, ``"tests"``
    leaves it to the tests' testcontainers fixture (which then answers None)."""
    host, port = _address(url, 5672)
    if port_open(host, port):
        say(f"RabbitMQ answers on {_shown(host, port)}")
        return None
    if host not in LOCAL_HOSTS:
        raise Missing(f"RabbitMQ at {_shown(host, port)} ({variable}) does not answer")
    server = which("rabbitmq-server")
    if server is not None:
        say(f"RabbitMQ does not answer on {_shown(host, port)}: starting rabbitmq-server")
        result = _run([server, "-detached"])
        if result.returncode != 0:
            raise Missing(f"rabbitmq-server -detached failed: {_last_line(result)}")
        _wait_or_fail("RabbitMQ", host, port, BROKER_START_SECONDS, "see /var/log/rabbitmq/")
        ctl = which("rabbitmqctl") or "rabbitmqctl"
        return Started("RabbitMQ", (ctl, "stop"))
    if docker_works():
        if docker == "tests":
            say("RabbitMQ is not installed here: the tests start one in Docker (testcontainers)")
            return None
        say("RabbitMQ is not installed here: starting it with docker compose")
        result = _run(["docker", "compose", "up", "-d", "rabbitmq"], timeout=600)
        if result.returncode != 0:
            raise Missing(f"docker compose up -d rabbitmq failed: {_last_line(result)}")
        _wait_or_fail("RabbitMQ", host, port, BROKER_START_SECONDS, "see `docker compose logs rabbitmq`")
        return Started("RabbitMQ", ("docker", "compose", "stop", "rabbitmq"))
    raise Missing(
        "RabbitMQ is not installed: `apt-get install rabbitmq-server` (or install Docker, "
        f"or point {variable} at a running broker)"
    )


def ensure_management(url: str, *, variable: str) -> None:
    """The management HTTP API answers at ``url``; on this machine the plugin is enabled when
    it does not (the plugin starts within seconds, its port a little later)."""
    host, port = _address(url, 15672)
    if port_open(host, port):
        say(f"RabbitMQ management answers on {_shown(host, port)}")
        return
    if host not in LOCAL_HOSTS:
        raise Missing(f"RabbitMQ management at {_shown(host, port)} ({variable}) does not answer")
    plugins = which("rabbitmq-plugins")
    if plugins is None:
        raise Missing(
            f"RabbitMQ management does not answer on {_shown(host, port)} and rabbitmq-plugins is "
            "not installed: enable the rabbitmq_management plugin of the running broker"
        )
    say("enabling the RabbitMQ management plugin (rabbitmq-plugins enable rabbitmq_management)")
    result = _run([plugins, "enable", "rabbitmq_management"])
    if result.returncode != 0:
        raise Missing(
            f"could not enable the RabbitMQ management plugin ({_last_line(result)}): "
            "run `rabbitmq-plugins enable rabbitmq_management` as root"
        )
    _wait_or_fail("RabbitMQ management", host, port, MANAGEMENT_START_SECONDS, "see /var/log/rabbitmq/")


def _wait_or_fail(what: str, host: str, port: int, seconds: float, hint: str) -> None:
    took = wait_port(host, port, seconds)
    if took is None:
        raise Missing(f"{what} did not answer on {_shown(host, port)} within {seconds:.0f} s ({hint})")
    say(f"{what} answers on {_shown(host, port)} (after {took:.1f} s)")


# --- PostgreSQL ----------------------------------------------------------------------------


def ensure_postgres(url: str, *, variable: str) -> Started | None:
    """PostgreSQL answers at ``url`` and has its database and role; on this machine the
    server is started and the role and database created when they are missing."""
    host, port = _address(url, 5432)
    started = None
    if not port_open(host, port):
        if host not in LOCAL_HOSTS:
            raise Missing(f"PostgreSQL at {_shown(host, port)} ({variable}) does not answer")
        started = _start_postgres(host, port, variable)
    asyncio.run(_ensure_database(url, host, port, variable))
    return started


def _clusters() -> list[tuple[str, str]]:
    """Debian's PostgreSQL clusters, as (version, name)."""
    root = Path("/etc/postgresql")
    if not root.is_dir():
        return []
    return sorted(
        (version.name, cluster.name)
        for version in root.iterdir()
        if version.is_dir()
        for cluster in version.iterdir()
        if (cluster / "postgresql.conf").is_file()
    )


def _start_postgres(host: str, port: int, variable: str) -> Started:
    ctl = which("pg_ctlcluster")
    clusters = _clusters()
    if ctl is None or not clusters:
        raise Missing(
            "PostgreSQL is not installed: `apt-get install postgresql` "
            f"(or point {variable} at a running server)"
        )
    for version, name in clusters:
        say(f"PostgreSQL does not answer on {_shown(host, port)}: starting cluster {version}/{name}")
        result = _run([ctl, "--skip-systemctl-redirect", version, name, "start"])
        if result.returncode != 0 and not port_open(host, port):
            say(f"PostgreSQL cluster {version}/{name} did not start: {_last_line(result)}")
            continue
        if wait_port(host, port, POSTGRES_START_SECONDS) is not None:
            say(f"PostgreSQL answers on {_shown(host, port)}")
            return Started("PostgreSQL", (ctl, "--skip-systemctl-redirect", version, name, "stop"))
    raise Missing(f"PostgreSQL did not come up on {_shown(host, port)} (see /var/log/postgresql/)")


async def _ensure_database(url: str, host: str, port: int, variable: str) -> None:
    parts = urlsplit(url)
    user = unquote(parts.username or "postgres")
    database = unquote(parts.path.lstrip("/")) or user
    where = f"PostgreSQL on {_shown(host, port)}"
    for _ in range(3):  # at most: create the role, create the database, connect
        try:
            connection = await asyncpg.connect(url, timeout=10)
        except asyncpg.InvalidPasswordError:
            raise Missing(f"{where} rejects the password of {variable}") from None
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            if host not in LOCAL_HOSTS or "does not exist" not in str(exc):
                raise Missing(f"{where} refuses {variable}: {exc}") from None
            password = unquote(parts.password) if parts.password else None
            await _admin(host, port, _create_role(user, password), where)
            say(f"PostgreSQL: created role {user}")
            continue
        except asyncpg.InvalidCatalogNameError:
            if host not in LOCAL_HOSTS:
                raise Missing(f"{where} has no database {database} ({variable})") from None
            await _admin(host, port, f"CREATE DATABASE {_ident(database)} OWNER {_ident(user)}", where)
            say(f"PostgreSQL: created database {database}")
            continue
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise Missing(f"{where} cannot be used with {variable}: {type(exc).__name__}: {exc}") from None
        await connection.close()
        say(f"PostgreSQL answers on {_shown(host, port)}: database {database}, role {user}")
        return
    raise Missing(f"{where}: the role and database of {variable} could not be made")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_role(user: str, password: str | None) -> str:
    # CREATEDB: the tests create (and drop) a database of their own per test.
    statement = f"CREATE ROLE {_ident(user)} LOGIN CREATEDB"
    if password is not None:
        statement += " PASSWORD '" + password.replace("'", "''") + "'"
    return statement


async def _admin(host: str, port: int, statement: str, where: str) -> None:
    """Run one statement as the ``postgres`` superuser: over TCP where that is trusted, else
    through the local socket as the postgres system user (Debian's peer authentication)."""
    try:
        connection = await asyncpg.connect(
            host=host, port=port, user="postgres", database="postgres", timeout=10
        )
    except (OSError, asyncpg.PostgresError, TimeoutError):
        connection = None
    if connection is not None:
        try:
            await connection.execute(statement)
        except asyncpg.PostgresError as exc:
            raise Missing(f"{where}: {exc} (as postgres)") from None
        finally:
            await connection.close()
        return
    psql = which("psql")
    runuser = which("runuser")
    if psql is None or runuser is None or os.geteuid() != 0:
        raise Missing(f"{where}: cannot connect as postgres to create what is missing; run as root")
    command = [
        runuser,
        "-u",
        "postgres",
        "--",
        psql,
        "-p",
        str(port),
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-c",
        statement,
    ]
    result = await asyncio.to_thread(_run, command)
    if result.returncode != 0:
        raise Missing(f"{where}: {_last_line(result)} (as the postgres system user)")


# --- chromium, for the console's browser tests -----------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser")  # the same names as tests/browser/conftest.py
APT_SECONDS = 900.0


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = which(name)
        if found is not None:
            return found
    return None


def ensure_chromium(*, required: bool) -> str | None:
    """A headless chromium for ``tests/browser`` (driven by Playwright, never downloaded by it):
    Debian's package, installed with apt-get when missing and we are root. Where it cannot be
    had, the browser tests skip — unless ``required`` (``CI=true``), which stops here."""
    found = _chromium()
    if found is not None:
        say(f"chromium: {found}")
        return found
    apt = which("apt-get")
    if apt is None or os.geteuid() != 0:
        problem = "chromium is not installed: `apt-get install chromium` as root (the browser tests need it)"
        if required:
            raise Missing(problem)
        say(f"{problem}; the browser tests will skip")
        return None
    say("chromium is not installed: apt-get update && apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        [apt, "update", "-qq"],
        [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ):
        result = _run_env(command, env, APT_SECONDS)
        if result.returncode != 0:
            raise Missing(f"{' '.join(command[:2])} failed: {_last_line(result)}")
    found = _chromium()
    if found is None:
        raise Missing("apt-get installed chromium, but no chromium command is on the PATH")
    say(f"chromium: installed {found}")
    return found


def _run_env(command: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(command), 1, "", str(exc))


# --- what each command needs ---------------------------------------------------------------


def ensure_for_tests(environ: dict[str, str]) -> None:
    """What the test suite talks to: RabbitMQ with its management API, and PostgreSQL."""
    amqp = environ.get("TEST_RABBITMQ_URL", TEST_RABBITMQ_URL)
    ensure_rabbitmq(amqp, variable="TEST_RABBITMQ_URL", docker="tests")
    if port_open(*_address(amqp, 5672)):  # not when the tests are to start it in Docker
        management = environ.get("TEST_RABBITMQ_MANAGEMENT_URL", TEST_RABBITMQ_MANAGEMENT_URL)
        ensure_management(management, variable="TEST_RABBITMQ_MANAGEMENT_URL")
    ensure_postgres(environ.get("TEST_POSTGRES_URL", TEST_POSTGRES_URL), variable="TEST_POSTGRES_URL")
    ensure_chromium(required=environ.get("CI", "").lower() in {"1", "true", "yes"})


def ensure_for_run(rabbitmq_url: str, database_url: str) -> list[Started]:
    """What ``make run`` needs: the broker, and PostgreSQL when the store is one."""
    started: list[Started] = []
    try:
        nodes = brokers.split_urls(rabbitmq_url)
        answering = [url for url in nodes[1:] if port_open(*_address(url, 5672))] if len(nodes) > 1 else []
        # A cluster with a node up is enough (the processes fail over); else the first node.
        broker = None if answering else ensure_rabbitmq(nodes[0], variable="RABBITMQ_URL", docker="compose")
        if broker is not None:
            started.append(broker)
        if urlsplit(database_url).scheme in {"postgresql", "postgres"}:
            database = ensure_postgres(database_url, variable="DATABASE_URL")
            if database is not None:
                started.append(database)
    except Missing:
        stop(started)
        raise
    return started


def stop(started: Sequence[Started]) -> None:
    """Stop what ``ensure_for_run`` started, the last first."""
    for service in reversed(started):
        say(f"stopping {service.what}, which this command started")
        _run(service.stop)


def main() -> int:
    try:
        ensure_for_tests(dict(os.environ))
    except Missing as exc:
        print(f"[setup] missing: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
