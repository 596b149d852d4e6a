"""What a platform sets for us: Heroku's CloudAMQP add-on sets CLOUDAMQP_URL, its router PORT.

Each is read only where ours (RABBITMQ_URL, RECEIVER_PORT) is unset, and a bad value is one line
naming the variable that was actually read, never the one the operator did not set.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import VARIABLES, ConfigError, Settings

ROOT = Path(__file__).resolve().parents[2]
ADDON_URL = "amqps://user:addon-pw@fox.rmq.cloudamqp.com/vhost"


def test_given_only_cloudamqp_url_when_settings_are_read_then_it_is_the_broker() -> None:
    s = Settings.from_env({"CLOUDAMQP_URL": ADDON_URL})

    assert s.rabbitmq_url == ADDON_URL


def test_given_only_port_when_settings_are_read_then_the_receiver_listens_on_it() -> None:
    s = Settings.from_env({"PORT": "31337"})

    assert s.receiver_port == 31337


def test_given_both_broker_variables_then_rabbitmq_url_wins() -> None:
    s = Settings.from_env({"RABBITMQ_URL": "amqp://u:p@ours:5672/v", "CLOUDAMQP_URL": ADDON_URL})

    assert s.rabbitmq_url == "amqp://u:p@ours:5672/v"


def test_given_both_port_variables_then_receiver_port_wins() -> None:
    s = Settings.from_env({"RECEIVER_PORT": "9000", "PORT": "31337"})

    assert s.receiver_port == 9000


@pytest.mark.parametrize("blank", ["", "  "])
def test_given_ours_blank_then_the_platform_value_is_read(blank: str) -> None:
    s = Settings.from_env(
        {"RECEIVER_PORT": blank, "PORT": "31337", "RABBITMQ_URL": blank, "CLOUDAMQP_URL": ADDON_URL}
    )

    assert (s.receiver_port, s.rabbitmq_url) == (31337, ADDON_URL)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"PORT": "web"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"CLOUDAMQP_URL": "https://user:addon-pw@fox/"}, "CLOUDAMQP_URL"),
        # Ours set and bad: the error names ours, though the platform's is fine.
        ({"RECEIVER_PORT": "web", "PORT": "31337"}, "RECEIVER_PORT"),
        ({"RABBITMQ_URL": "http://x", "CLOUDAMQP_URL": ADDON_URL}, "RABBITMQ_URL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable_actually_read(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)

    message = str(info.value)
    assert message.split("=", 1)[0] == named and "\n" not in message
    assert "addon-pw" not in message


def test_given_ours_set_then_a_bad_platform_value_is_never_read() -> None:
    s = Settings.from_env(
        {"RECEIVER_PORT": "9000", "PORT": "web", "RABBITMQ_URL": "amqp://h/", "CLOUDAMQP_URL": "x"}
    )

    assert (s.receiver_port, s.rabbitmq_url) == (9000, "amqp://h/")


def test_the_platform_broker_url_never_appears_in_public_settings() -> None:
    public = Settings.from_env({"CLOUDAMQP_URL": ADDON_URL}).public_dict()

    assert "addon-pw" not in str(public) and "fox.rmq.cloudamqp.com" in public["rabbitmq_url"]


def test_the_fallbacks_are_known_variables() -> None:
    # docker-compose.yml, .env.example and the README table are checked against VARIABLES.
    assert {"CLOUDAMQP_URL", "PORT"} <= VARIABLES


def test_when_the_receiver_starts_with_a_bad_port_then_it_stops_with_one_line_naming_port() -> None:
    env = {"PATH": "/usr/bin:/bin", "PORT": "web", "LOG_FORMAT": "json"}

    done = subprocess.run(
        [sys.executable, "-m", "receiver"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "receiver: configuration error: PORT='web' is invalid: expected a whole number"
    ]
