"""The garbage collector once a process is up (``shared.runtime.settle_gc``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from shared.runtime import GC_YOUNG_THRESHOLD, settle_gc


@pytest.fixture
def collector() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


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
