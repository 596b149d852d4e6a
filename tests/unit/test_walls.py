"""The walls between the processes: the receiver and the worker each depend on ``shared/``,
never on each other, and SQL lives in ``shared/`` only (its store modules)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A statement as our store writes them: the verb, then what it works on.
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.S)


def imported(path: Path) -> set[str]:
    """The top-level packages a module imports (``from x.y import z`` → ``x``)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "other"), [("receiver", "worker"), ("worker", "receiver")])
def test_a_process_package_never_imports_the_other(package: str, other: str) -> None:
    crossing = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / package).rglob("*.py") if other in imported(path)
    )
    assert crossing == [], f"{package}/ imports {other}/: move what both need to shared/"


def test_shared_imports_neither_process() -> None:
    crossing = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "shared").rglob("*.py")
        if imported(path) & {"receiver", "worker"}
    )
    assert crossing == []


@pytest.mark.parametrize("package", ["receiver", "worker"])
def test_sql_lives_in_shared_only(package: str) -> None:
    holding = sorted(
        str(path.relative_to(ROOT)) for path in (ROOT / package).rglob("*.py") if SQL.search(path.read_text())
    )
    assert holding == [], f"SQL in {package}/: it belongs to a store module in shared/"


STATUS_WORDS = re.compile(
    r"'(in_progress|retrying|succeeded|skipped|dry_run|failed|unconfirmed|awaiting_approval|approved|"
    r"denied|expired|held|stale|awaiting|done|released|open|resolved)'"
)


def test_action_claim_and_incident_statuses_are_never_spelled_by_hand_in_sql() -> None:
    """Past migrations aside (they are history), a status in SQL comes from its enum
    (``shared.db.lit``) or a parameter."""
    found = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        text = path.read_text()
        if "MIGRATION" in text:
            text = re.sub(r"MIGRATIONS?\b[^\n]*=\s*\[.*?\n\]\n", "", text, flags=re.S)
        found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in STATUS_WORDS.finditer(text)]
    assert found == []


@pytest.mark.parametrize("package", ["shared/store", "worker"])
def test_the_store_and_the_worker_are_split_into_modules_a_reader_can_hold(package: str) -> None:
    """One aggregate, or one step of an alarm, per module: none grows past ~500 lines."""
    long = {
        str(path.relative_to(ROOT)): n
        for path in sorted((ROOT / package).glob("*.py"))
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert long == {}
