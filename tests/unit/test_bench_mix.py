"""Benchmark 2's alarms, whole and in parts (``python -m bench --only workers --mix ...``): the
upgrades part is the whole's upgrades; the skips part is one kind of the whole's skips (below
the threshold), as many as the whole has alarms."""

from __future__ import annotations

import hashlib
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
    """Benchmark 2's figures across revisions compare the same alarms, in the same order (the
    digest of 2413fff's mix; each body's ``triggered_at`` is the time it was made)."""
    whole, _ = worker_mix(3000)

    def content(body: bytes) -> str:
        fields = json.loads(body)
        fields.pop("triggered_at")
        return json.dumps(fields, sort_keys=True)

    digest = hashlib.sha256("\n".join(content(b) for b in whole).encode()).hexdigest()
    assert digest == "ef28019518ecdb818c16455cc337e009e92482a2c79d0a8d0c4e72cf660a363b"
    below = sum(1 for v in values(whole) if v < 80)
    repeats = len(whole) - len(set(whole))
    assert (below, repeats) == (750, 900)
