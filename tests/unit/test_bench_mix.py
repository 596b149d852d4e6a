"""Benchmark 2's alarms, whole and in parts (``python -m bench --only workers --mix ...``):
each part is what the whole holds of it, so that the parts' costs explain the whole's."""

from __future__ import annotations

import json

from bench.suite import worker_mix


def values(bodies: list[bytes]) -> list[float]:
    return [json.loads(body)["value"] for body in bodies]


def test_the_upgrades_part_is_the_whole_mixs_first_fifth() -> None:
    whole, instances = worker_mix(500)
    upgrades, same = worker_mix(500, mix="upgrades")
    assert same == instances
    assert upgrades == whole[:100]
    assert len({json.loads(b)["instance_id"] for b in upgrades}) == 100  # one each


def test_the_skips_part_is_as_many_alarms_below_the_threshold_over_the_same_instances() -> None:
    whole, instances = worker_mix(500)
    skips, same = worker_mix(500, mix="skips")
    assert same == instances and len(skips) == len(whole) == 500
    assert max(values(skips)) < 41  # every one below the 80 % threshold
    assert {json.loads(b)["instance_id"] for b in skips} <= set(instances)
    assert len(set(skips)) == 500  # none an identical re-send of another


def test_the_whole_mix_is_as_it_was() -> None:
    """Benchmark 2's figures across revisions compare the same alarms."""
    whole, _ = worker_mix(3000)
    assert len(whole) == 3000
    below = sum(1 for v in values(whole) if v < 80)
    repeats = len(whole) - len(set(whole))
    assert (below, repeats) == (750, 900)
