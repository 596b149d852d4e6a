"""RABBITMQ_URL as a list of cluster nodes: parsing, redaction and the failover order."""

from __future__ import annotations

import pytest

from shared.brokers import failover_order, node_name, parse_urls, redact_urls, split_urls
from shared.settings import ConfigError, Settings

A = "amqp://u:s3cret@n1:5672/v"
B = "amqp://u:s3cret@n2:5673/v"
C = "amqps://u:s3cret@n3/v"


@pytest.mark.parametrize(
    ("count", "last", "expected"),
    [
        (1, None, [0]),
        (1, 0, [0]),  # one node: always that one, as before failover existed
        (3, None, [0, 1, 2]),  # at start: in the configured order
        (3, 0, [1, 2, 0]),  # lost node 0: the others first, node 0 last
        (3, 1, [2, 0, 1]),
        (3, 2, [0, 1, 2]),  # wraps round
        (2, 1, [0, 1]),
    ],
)
def test_failover_tries_the_node_after_the_last_one_first_and_the_last_one_last(
    count: int, last: int | None, expected: list[int]
) -> None:
    assert failover_order(count, last) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (A, A),
        (f"{A},{B},{C}", f"{A},{B},{C}"),
        (f" {A} , {B} ,", f"{A},{B}"),  # spaces and a trailing comma are forgiven
    ],
)
def test_a_list_of_node_urls_is_accepted_and_normalised(raw: str, expected: str) -> None:
    assert parse_urls(raw) == expected
    assert Settings.from_env({"RABBITMQ_URL": raw}).rabbitmq_url == expected
    assert split_urls(expected) == tuple(expected.split(","))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (f"{A},http://u:s3cret@n2/", "URL 2 of 2: expected a URL starting with amqp://"),
        (f"{A},amqp://u:s3cret@n2:99999/", "URL 2 of 2: the URL's port"),
        (f"amqp://u:s3cret@n1:x/,{B}", "URL 1 of 2: the URL's port"),
        (f"{A},amqp:///v,{C}", "URL 2 of 3: the URL has no host"),
        ("n1:5672", "expected a URL starting with amqp://"),
        (" , ", "expected one or more comma-separated amqp:// URLs"),
    ],
)
def test_a_bad_node_url_stops_the_start_with_one_line_naming_the_variable_without_the_password(
    raw: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"RABBITMQ_URL": raw})

    message = str(info.value)
    assert message.startswith("RABBITMQ_URL=(hidden) is invalid: ")
    assert why in message and "\n" not in message and "s3cret" not in message


def test_public_settings_redact_every_node_password() -> None:
    settings = Settings.from_env({"RABBITMQ_URL": f"{A},{B},{C}"})

    shown = settings.public_dict()["rabbitmq_url"]

    assert "s3cret" not in shown and "s3cret" not in repr(settings.public_dict())
    assert shown == "amqp://u:***@n1:5672/v,amqp://u:***@n2:5673/v,amqps://u:***@n3/v"
    assert redact_urls(A) == "amqp://u:***@n1:5672/v"


@pytest.mark.parametrize(
    ("url", "name"),
    [(A, "n1:5672"), (B, "n2:5673"), (C, "n3:5671"), ("amqp://guest:guest@127.0.0.1/", "127.0.0.1:5672")],
)
def test_a_node_is_named_by_host_and_port_only(url: str, name: str) -> None:
    assert node_name(url) == name
