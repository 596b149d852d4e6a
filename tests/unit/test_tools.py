"""The developer tools: the services set-up (`make test`, `make run`) decides what to start, and
says what is missing, without a real service; the launcher's webhook URL keeps the token out."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence

import pytest

from shared.settings import Settings
from tools import launcher, services


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every command the set-up would run, recorded instead of run (each succeeds)."""
    ran: list[list[str]] = []

    def run(command: Sequence[str], timeout: float = 0) -> subprocess.CompletedProcess[str]:
        ran.append(list(command))
        return subprocess.CompletedProcess(list(command), 0, "", "")

    monkeypatch.setattr(services, "_run", run)
    monkeypatch.setattr(services, "which", lambda name: f"/usr/sbin/{name}")
    return ran


def ports(monkeypatch: pytest.MonkeyPatch, *open_ports: int, after_start: Sequence[int] = ()) -> None:
    """Which ports answer now, and which answer once something was started."""
    monkeypatch.setattr(services, "port_open", lambda host, port, timeout=1.0: port in open_ports)
    monkeypatch.setattr(services, "wait_port", lambda host, port, s: 0.5 if port in after_start else None)


def test_given_everything_answers_when_checked_then_nothing_is_run(
    monkeypatch: pytest.MonkeyPatch, commands: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    ports(monkeypatch, 5672, 15672)

    assert services.ensure_rabbitmq(services.TEST_RABBITMQ_URL, variable="V", docker="tests") is None
    services.ensure_management(services.TEST_RABBITMQ_MANAGEMENT_URL, variable="V")

    assert commands == []
    assert capsys.readouterr().out.splitlines() == [
        "[setup] RabbitMQ answers on 127.0.0.1:5672",
        "[setup] RabbitMQ management answers on 127.0.0.1:15672",
    ]


def test_given_a_local_broker_without_management_then_the_plugin_is_enabled_and_waited_for(
    monkeypatch: pytest.MonkeyPatch, commands: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    ports(monkeypatch, 5672, after_start=[15672])

    services.ensure_management(services.TEST_RABBITMQ_MANAGEMENT_URL, variable="V")

    assert commands == [["/usr/sbin/rabbitmq-plugins", "enable", "rabbitmq_management"]]
    assert "RabbitMQ management answers on 127.0.0.1:15672 (after 0.5 s)" in capsys.readouterr().out


def test_given_no_local_broker_then_rabbitmq_server_is_started_and_its_stop_command_returned(
    monkeypatch: pytest.MonkeyPatch, commands: list[list[str]]
) -> None:
    ports(monkeypatch, after_start=[5672])

    started = services.ensure_rabbitmq("amqp://guest:guest@localhost:5672/", variable="V", docker="compose")

    assert commands == [["/usr/sbin/rabbitmq-server", "-detached"]]
    assert started == services.Started("RabbitMQ", ("/usr/sbin/rabbitmqctl", "stop"))


def test_given_no_rabbitmq_and_no_docker_then_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports(monkeypatch)
    monkeypatch.setattr(services, "which", lambda name: None)

    with pytest.raises(services.Missing) as info:
        services.ensure_rabbitmq(services.TEST_RABBITMQ_URL, variable="TEST_RABBITMQ_URL", docker="tests")

    message = str(info.value)
    assert "apt-get install rabbitmq-server" in message and "\n" not in message


@pytest.mark.parametrize(
    ("call", "variable"),
    [
        (
            lambda: services.ensure_rabbitmq("amqp://u:p@broker.example:5672/", variable="X", docker="tests"),
            "X",
        ),
        (lambda: services.ensure_management("http://u:p@broker.example:15672", variable="Y"), "Y"),
        (lambda: services.ensure_postgres("postgresql://u:secret@db.example:5432/t", variable="Z"), "Z"),
    ],
    ids=["rabbitmq", "management", "postgres"],
)
def test_given_a_service_elsewhere_that_does_not_answer_then_it_is_reported_never_started(
    monkeypatch: pytest.MonkeyPatch, commands: list[list[str]], call: Callable[[], object], variable: str
) -> None:
    ports(monkeypatch)

    with pytest.raises(services.Missing) as info:
        call()

    assert commands == []
    assert f"({variable}) does not answer" in str(info.value)
    assert "secret" not in str(info.value) and "u:p" not in str(info.value)


def test_a_created_role_may_create_the_test_databases_and_names_are_quoted() -> None:
    assert services._create_role('we"ird', None) == 'CREATE ROLE "we""ird" LOGIN CREATEDB'
    assert services._create_role("t", "it's") == "CREATE ROLE \"t\" LOGIN CREATEDB PASSWORD 'it''s'"


def test_the_webhook_url_shows_where_the_token_goes_never_the_token() -> None:
    with_token = Settings.from_env({"WEBHOOK_TOKEN": "s3cret", "RECEIVER_PORT": "9000"})
    without = Settings.from_env({"RECEIVER_HOST": "127.0.0.1"})

    assert launcher.webhook_url(with_token) == "http://localhost:9000/cloudamqp/alarm/<WEBHOOK_TOKEN>"
    assert launcher.webhook_url(without) == "http://127.0.0.1:8080/cloudamqp/alarm"


def test_given_chromium_installed_then_it_is_named_and_nothing_is_run(
    monkeypatch: pytest.MonkeyPatch, commands: list[list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert services.ensure_chromium(required=True) == "/usr/sbin/chromium"

    assert commands == [] and capsys.readouterr().out == "[setup] chromium: /usr/sbin/chromium\n"


def test_given_no_chromium_as_root_then_apt_get_installs_it_with_one_line_a_step(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed: list[str] = []
    ran: list[list[str]] = []

    def run(command: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
        ran.append(list(command))
        if "install" in command:
            installed.append("chromium")
        return subprocess.CompletedProcess(list(command), 0, "", "")

    def which(name: str) -> str | None:
        return f"/usr/bin/{name}" if name == "apt-get" or (name == "chromium" and installed) else None

    monkeypatch.setattr(services, "_run_env", run)
    monkeypatch.setattr(services, "which", which)
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    assert services.ensure_chromium(required=True) == "/usr/bin/chromium"
    assert ran == [
        ["/usr/bin/apt-get", "update", "-qq"],
        ["/usr/bin/apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
    ]
    assert capsys.readouterr().out.splitlines() == [
        "[setup] chromium is not installed: apt-get update && apt-get install -y chromium",
        "[setup] chromium: installed /usr/bin/chromium",
    ]


def test_given_no_chromium_and_no_way_to_install_it_then_ci_stops_and_elsewhere_the_tests_skip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(services, "which", lambda name: None)

    assert services.ensure_chromium(required=False) is None
    assert "the browser tests will skip" in capsys.readouterr().out
    with pytest.raises(services.Missing) as info:
        services.ensure_chromium(required=True)
    assert "apt-get install chromium" in str(info.value) and "\n" not in str(info.value)
