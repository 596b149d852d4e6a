"""docker-compose.yml, the Dockerfile, .env.example and the README agree with the settings.

No Docker engine is available to run the stack here, so these check what can be checked
without one: the files parse, and every variable they set is one the processes accept.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import VARIABLES, Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_has_the_official_images_with_healthchecks_and_our_two_processes() -> None:
    services = compose()["services"]

    # Pinned to a minor version: `docker compose pull` never brings a new one unasked.
    assert re.fullmatch(r"rabbitmq:4\.\d+-management", services["rabbitmq"]["image"])
    assert re.fullmatch(r"postgres:16\.\d+", services["postgres"]["image"])
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


def test_the_receiver_and_worker_healthchecks_probe_their_own_ports_with_the_images_python() -> None:
    services = compose()["services"]
    receiver, worker = services["receiver"], services["worker"]

    probes = {
        "receiver": (receiver, f"http://127.0.0.1:{receiver['environment']['RECEIVER_PORT']}/readyz"),
        "worker": (worker, f"http://127.0.0.1:{worker['environment']['WORKER_METRICS_PORT']}/healthz"),
    }
    for name, (service, url) in probes.items():
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{name}: python -c (python:3.11-slim has no curl)"
        assert url in test[3], f"{name}'s healthcheck should probe {url}"
        compile(test[3], f"{name}-healthcheck", "exec")


def _requirement_names(requirements: list[str]) -> set[str]:
    names = (re.match(r"[A-Za-z0-9._-]+", requirement) for requirement in requirements)
    return {re.sub(r"[-_.]+", "-", m.group(0)).lower() for m in names if m}


# Developer commands in tools/ that need the dev extras (Playwright drives chromium for them).
DEV_TOOLS = ("tools/screenshots.py",)


def _third_party_imports(*folders: str) -> dict[str, str]:
    """Top-level modules imported under ``folders`` that are neither stdlib nor ours, with a
    file that imports each."""
    own = {"receiver", "worker", "shared", "tools", "tests", "bench"}
    found: dict[str, str] = {}
    for folder in folders:
        where = ROOT / folder
        for path in [where] if where.is_file() else sorted(where.rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in DEV_TOOLS and folder != path.relative_to(ROOT).as_posix():
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in own:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize(
    ("folders", "extras"),
    [
        # `make run` and `make demo` install the runtime dependencies only.
        (("receiver", "worker", "shared", "tools"), ()),
        (("tests", "bench", *DEV_TOOLS), ("dev",)),
    ],
    ids=["runtime", "dev"],
)
def test_every_module_imported_comes_from_a_declared_dependency(
    folders: tuple[str, ...], extras: tuple[str, ...]
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    for extra in extras:
        declared |= _requirement_names(project["optional-dependencies"][extra])
    distributions = importlib.metadata.packages_distributions()

    for module, where in _third_party_imports(*folders).items():
        provided_by = _requirement_names(distributions.get(module, [module]))
        assert provided_by & declared, f"{where} imports {module}, which no declared dependency provides"


def test_the_dev_tools_are_not_installed_with_the_packages() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]

    assert not any(pattern.startswith(("tools", "tests", "bench")) for pattern in find["include"])
    assert "COPY tools" not in (ROOT / "Dockerfile").read_text()
