"""The garbage collector while a process starts and once it is up (``shared.runtime.settle_gc``)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from shared.runtime import GC_YOUNG_THRESHOLD, settle_gc


@pytest.fixture
def collector() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_what_start_up_built_is_frozen_and_the_young_are_collected_less_often(collector: None) -> None:
    _, older, oldest = gc.get_threshold()
    settle_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, older, oldest)


def test_cyclic_garbage_made_after_it_is_still_collected_without_being_asked(collector: None) -> None:
    settle_gc()
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: reference counting alone never frees it
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None
    kept: list[list[int]] = [
        [] for _ in range(3 * GC_YOUNG_THRESHOLD)
    ]  # new objects: the youngest generation fills
    assert gone() is None
    del kept


def test_a_collector_held_through_start_up_runs_again_once_settled(collector: None) -> None:
    gc.disable()
    settle_gc()
    assert gc.isenabled()


# Runs a program's ``__main__`` as ``python -m`` does, noting whether the collector is on as
# each of its big dependencies starts loading, until the program stops at its first step (a bad
# setting: one line and exit 2, before any connection).
LOADING = """
import gc, json, runpy, sys
program = sys.argv.pop(1)
collecting = {}
def audit(event, args):
    if event == "import" and args[0] in ("aiohttp", "aio_pika", "structlog"):
        collecting.setdefault(args[0], gc.isenabled())
sys.addaudithook(audit)
try:
    runpy.run_module(program, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    print(json.dumps({"exit": exc.code, "collecting": collecting, "after": gc.isenabled()}))
"""


@pytest.mark.parametrize("program", ["worker", "receiver"])
def test_a_program_loads_its_modules_with_the_collector_held(program: str) -> None:
    env = {**os.environ, "RECEIVER_PORT": "not-a-port"}
    run = subprocess.run(
        [sys.executable, "-c", LOADING, program], env=env, capture_output=True, text=True, timeout=60
    )
    assert "RECEIVER_PORT" in run.stderr, run.stderr
    # Stopped at the bad setting, before settle_gc (which turns it back on once up: the test
    # above): every big dependency loaded with no collection.
    assert json.loads(run.stdout) == {
        "exit": 2,
        "collecting": {"aiohttp": False, "aio_pika": False, "structlog": False},
        "after": False,
    }, run.stderr


def test_importing_a_program_leaves_the_collector_alone() -> None:
    run = subprocess.run(
        [sys.executable, "-c", "import gc, worker.__main__, receiver.__main__; print(gc.isenabled())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout.split() == ["True"], run.stderr
