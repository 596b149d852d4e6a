"""Table tests of the broker checks' pure decisions (shared.verify) and their settings."""

from __future__ import annotations

from typing import Any

import pytest

from shared.plans import DEFAULT_LADDER, Ladder
from shared.policy import Policy, Rule
from shared.settings import ConfigError, Settings
from shared.verify import (
    Assessment,
    Condition,
    NodeReading,
    QuietWindow,
    WatchState,
    WatchVerdict,
    advice_id,
    assess,
    downgrade_advice,
    parse_nodes,
    watch,
    watchdog_event_id,
)
from worker.watchdog import watched_conditions

MB = 1_000_000
MEMORY_80 = Condition("memory", 80.0)
DISK = Condition("disk", None, 2.0)


def node(name: str = "rabbit@a", **figures: Any) -> NodeReading:
    return NodeReading(name, **figures)


ASSESS_CASES = [
    # (name, condition, readings, holds, value)
    ("memory above on the one node", MEMORY_80, [node(mem_used=90 * MB, mem_limit=100 * MB)], True, 90.0),
    (
        "memory exactly at the threshold is not above",
        MEMORY_80,
        [node(mem_used=80, mem_limit=100)],
        False,
        80.0,
    ),
    ("memory below on every node", MEMORY_80, [node(mem_used=10, mem_limit=100)], False, 10.0),
    (
        "memory above on one node of three",
        MEMORY_80,
        [node("a", mem_used=10, mem_limit=100), node("b", mem_used=95, mem_limit=100), node("c")],
        True,
        95.0,
    ),
    ("no node reported memory figures", MEMORY_80, [node()], None, None),
    ("a zero mem_limit is no figure", MEMORY_80, [node(mem_used=1, mem_limit=0)], None, None),
    ("no nodes at all", MEMORY_80, [], None, None),
    (
        "memory without a threshold cannot be assessed",
        Condition("memory"),
        [node(mem_used=9, mem_limit=10)],
        None,
        None,
    ),
    ("disk headroom above the margin", DISK, [node(disk_free=300, disk_free_limit=100)], False, 3.0),
    ("disk headroom at the margin holds", DISK, [node(disk_free=200, disk_free_limit=100)], True, 2.0),
    (
        "disk alarm on holds whatever the figures",
        DISK,
        [node(disk_free=900, disk_free_limit=100, disk_free_alarm=True)],
        True,
        9.0,
    ),
    ("disk without figures", DISK, [node()], None, None),
]


@pytest.mark.parametrize(
    ("name", "condition", "readings", "holds", "value"), ASSESS_CASES, ids=[c[0] for c in ASSESS_CASES]
)
def test_assess(
    name: str, condition: Condition, readings: list[NodeReading], holds: bool | None, value: float | None
) -> None:
    found = assess(condition, readings)

    assert found.holds is holds
    assert found.value == (pytest.approx(value) if value is not None else None)
    assert len(found.nodes) == len(readings)
    assert found.describe(condition)


HOLDS = Assessment(True, 90.0, ())
CLEAR = Assessment(False, 10.0, ())
UNKNOWN = Assessment(None, None, ())
V, S = WatchVerdict, WatchState
WATCH_CASES = [
    # (name, assessment, state, alarmed, busy, now, verdict, new state)
    ("first sight starts the episode", HOLDS, S(), False, False, 100.0, V.HOLDING, S(100.0)),
    ("not yet long enough", HOLDS, S(100.0), False, False, 159.0, V.HOLDING, S(100.0)),
    ("long enough raises", HOLDS, S(100.0), False, False, 160.0, V.RAISE, S(100.0, 160.0)),
    ("a zero threshold raises at first sight", HOLDS, S(), False, False, 5.0, V.RAISE, S(5.0, 5.0)),
    ("a CloudAMQP alarm restarts the count", HOLDS, S(100.0), True, False, 200.0, V.HOLDING, S(200.0)),
    ("raised lately: no reminder", HOLDS, S(100.0, 160.0), False, False, 200.0, V.HOLDING, S(100.0, 160.0)),
    ("a reminder one threshold later", HOLDS, S(100.0, 160.0), False, False, 220.0, V.RAISE, S(100.0, 220.0)),
    ("cooling down: held, never raised", HOLDS, S(100.0), False, True, 500.0, V.HOLDING, S(100.0)),
    ("cleared ends the episode", CLEAR, S(100.0, 160.0), False, False, 300.0, V.CLEAR, S()),
    ("no figures keep what is known", UNKNOWN, S(100.0), False, False, 300.0, V.UNKNOWN, S(100.0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "found", "state", "alarmed", "busy", "now", "verdict", "after"),
    WATCH_CASES,
    ids=[c[0] for c in WATCH_CASES],
)
def test_watch(
    name: str,
    found: Assessment,
    state: WatchState,
    alarmed: bool,
    busy: bool,
    now: float,
    verdict: WatchVerdict,
    after: WatchState,
) -> None:
    threshold = 0.0 if "zero" in name else 60.0
    step = watch(found, state, time_threshold=threshold, alarmed_since=alarmed, busy=busy, now=now)

    assert step.verdict is verdict
    assert step.state == after


LADDER = Ladder.of(DEFAULT_LADDER)
DAY = 86400.0
GB = 1_000_000_000
W = QuietWindow
ADVICE_CASES = [
    # (name, plan, window, now, to_plan or None)
    ("quiet and small for the window", "hare-1", W(0.0, 1 * GB, 8 * GB, 100), 7 * DAY, "bunny-1"),
    ("the window not over yet", "hare-1", W(0.0, 1 * GB, 8 * GB, 100), 7 * DAY - 1, None),
    ("the peak reached the fraction of the plan below", "hare-1", W(0.0, 2 * GB, 8 * GB, 100), 8 * DAY, None),
    ("just under the fraction", "hare-1", W(0.0, 2 * GB - 1, 8 * GB, 100), 8 * DAY, "bunny-1"),
    ("the bottom of the ladder has nothing below", "squirrel-1", W(0.0, 1, 8 * GB, 100), 8 * DAY, None),
    ("a cluster steps down within its node count", "hare-3", W(0.0, 1, 8 * GB, 100), 8 * DAY, "bunny-3"),
    ("a plan off the ladder", "bunny-2", W(0.0, 1, 8 * GB, 100), 8 * DAY, None),
    ("no samples is no evidence", "hare-1", W(0.0, 1, 8 * GB, 0), 8 * DAY, None),
    ("no window", "hare-1", None, 8 * DAY, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "plan", "window", "now", "to_plan"), ADVICE_CASES, ids=[c[0] for c in ADVICE_CASES]
)
def test_downgrade_advice(
    name: str, plan: str, window: QuietWindow | None, now: float, to_plan: str | None
) -> None:
    advice = downgrade_advice(
        "i-1", plan, LADDER, window, quiet_window=7 * DAY, fraction=0.5, step=2.0, now=now
    )

    if to_plan is None:
        assert advice is None
    else:
        assert advice is not None and (advice.from_plan, advice.to_plan) == (plan, to_plan)
        assert window is not None
        assert advice.evidence["peak_mem_used"] == window.peak_mem_used
        assert advice.evidence["lower_plan_mem_limit_assumed"] == window.mem_limit / 2


def test_ids_are_stable_and_distinct() -> None:
    assert advice_id("i-1", "up-1") == advice_id("i-1", "up-1") != advice_id("i-1", "up-2")
    first = watchdog_event_id("i-1", "memory", 100.0, 160.0)
    assert first == watchdog_event_id("i-1", "memory", 100.0, 160.0)
    assert first != watchdog_event_id("i-1", "memory", 100.0, 220.0)
    assert first.startswith("watchdog-")


def test_parse_nodes_reads_the_management_api_figures_and_skips_stopped_members() -> None:
    payload = [
        {"name": "rabbit@a", "running": True, "mem_used": 5, "mem_limit": 10, "mem_alarm": False,
         "disk_free": 300, "disk_free_limit": 100, "fd_used": 7, "sockets_used": 2},
        {"name": "rabbit@b", "running": False},
    ]  # fmt: skip

    assert parse_nodes(payload) == [
        NodeReading("rabbit@a", 5, 10, False, 300, 100, False, 7, 2),
    ]


@pytest.mark.parametrize("payload", [{"name": "x"}, [{"mem_used": 1}], "nodes", None])
def test_parse_nodes_refuses_what_is_not_a_node_list(payload: Any) -> None:
    with pytest.raises(ValueError):
        parse_nodes(payload)


def test_the_watchdog_watches_the_first_matching_upgrade_rule_per_alarm_type() -> None:
    settings = Settings(instance_ids=("i-1", "i-2"), watchdog_time_threshold_seconds=600)
    policy = Policy(
        (
            Rule("only-i-2", "memory", above=50, instances=("i-2",)),
            Rule("memory", "memory", above=80, time_threshold=30),
            Rule("memory-later", "memory", above=10),
            Rule("disk-percent", "disk", above=90),  # CloudAMQP's percent: not in /api/nodes
            Rule("disk", "disk"),
            Rule("cpu", "cpu", above=90),
            Rule("quiet", "queue", action="none"),
        )
    )

    watched = {w.condition.alarm_type: w for w in watched_conditions(policy, settings, "i-1")}

    assert set(watched) == {"memory", "disk"}
    assert (watched["memory"].rule.name, watched["memory"].time_threshold) == ("memory", 30)
    assert (watched["disk"].rule.name, watched["disk"].time_threshold) == ("disk", 600)
    assert watched_conditions(policy, settings, "i-2")[0].rule.name == "only-i-2"


def test_management_urls_name_their_instances_and_a_lone_url_is_the_first() -> None:
    env = {
        "CLOUDAMQP_INSTANCE_ID": "i-1,i-2",
        "CLOUDAMQP_INSTANCE_MANAGEMENT_URL": "https://u:p%40ss@host-1.example/, i-2=https://v:w=x@host-2.example",
    }

    settings = Settings.from_env(env)

    assert settings.management_url("i-1") == "https://u:p%40ss@host-1.example"
    assert settings.management_url("i-2") == "https://v:w=x@host-2.example"
    shown = str(settings.public_dict()["instance_management"])
    assert "p%40ss" not in shown and "w=x" not in shown and "host-2.example" in shown


MGMT, ONE = "CLOUDAMQP_INSTANCE_MANAGEMENT_URL", "CLOUDAMQP_INSTANCE_ID"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({MGMT: "https://u:secret@h"}, "needs CLOUDAMQP_INSTANCE_ID"),
        ({ONE: "i-1", MGMT: "i-9=https://u:secret@h"}, "i-9"),
        ({ONE: "i-1", MGMT: "i-1=ftp://u:secret@h"}, MGMT),
        ({ONE: "i-1", MGMT: "https://u:secret@h,i-1=https://h2"}, "twice"),
        ({"ADVICE_FRACTION": "1.5"}, "ADVICE_FRACTION"),
        ({"PLAN_MEMORY_STEP": "1"}, "PLAN_MEMORY_STEP"),
        ({"DISK_FREE_MARGIN": "0.5"}, "DISK_FREE_MARGIN"),
        ({"WATCHDOG_INTERVAL_SECONDS": "soon"}, "WATCHDOG_INTERVAL_SECONDS"),
    ],
)  # fmt: skip
def test_bad_broker_check_settings_stop_with_one_line_that_hides_the_credentials(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)

    text = str(raised.value)
    assert message in text and "\n" not in text and "secret" not in text
