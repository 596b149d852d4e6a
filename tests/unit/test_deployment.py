"""docker-compose.yml, the Dockerfile, .env.example and the README agree with the settings.

No Docker engine is available to run the stack here, so these check what can be checked
without one: the files parse, and every variable they set is one the processes accept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from shared.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_official_images_with_healthchecks_and_our_two_processes() -> None:
    services = compose()["services"]

    assert services["rabbitmq"]["image"].startswith("rabbitmq:4-management")
    assert services["postgres"]["image"].startswith("postgres")
    assert "healthcheck" in services["rabbitmq"] and "healthcheck" in services["postgres"]
    assert services["receiver"]["command"][-1] == "receiver"
    assert services["worker"]["command"][-1] == "worker"
    assert "ports" not in services["worker"], "a fixed host port would stop --scale worker=3"


def test_every_variable_compose_sets_is_one_the_settings_accept_and_parses() -> None:
    for name, service in compose()["services"].items():
        env = service.get("environment", {})
        if name in {"rabbitmq", "postgres"}:
            continue
        unknown = set(env) - VARIABLES
        assert not unknown, f"{name} sets unknown variables {unknown}"
        Settings.from_env({k: str(v) for k, v in env.items()})


def test_env_example_sets_only_known_variables_and_parses() -> None:
    pairs = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )

    assert set(pairs) <= VARIABLES
    Settings.from_env(pairs)


def test_the_image_is_slim_and_runs_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}


def test_the_readme_configuration_table_lists_exactly_the_variables_the_settings_read() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)?", section, re.M))
    names = {n for pair in documented for n in pair if n}

    assert names == VARIABLES
