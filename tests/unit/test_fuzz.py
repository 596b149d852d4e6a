"""Property tests: whatever JSON object CloudAMQP (or anyone) posts, the edges and the pure
decisions answer with a value of ours — never an exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contract import ContractError
from shared.envelope import decode_alarm
from shared.incidents import IncidentChange, plan_incident
from shared.policy import DecisionState, Skip, Upgrade, decide
from shared.policy_file import RULE_KEYS, PolicyError, parse_policy
from shared.settings import Settings

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
alarm_like = st.fixed_dictionaries(
    {},
    optional={
        "alarm_type": st.sampled_from(["memory", "cpu", "disk", "queue"]) | json_values,
        "value": st.floats(allow_nan=True, allow_infinity=True) | json_values,
        "instance_id": st.sampled_from(["i1", "other"]) | json_values,
        "triggered_at": st.sampled_from(["2026-02-20T08:30:00Z", "yesterday"]) | json_values,
        "message": json_values,
        "resolved": json_values,
        "metadata": json_values,
    },
).flatmap(
    lambda d: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(lambda extra: {**extra, **d})
)

SETTINGS = Settings(instance_ids=("i1",))


@settings(max_examples=300, deadline=None)
@given(alarm_like)
def test_any_json_object_decodes_and_gets_a_decision_and_an_incident_plan(body: dict[str, Any]) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    try:
        alarm = decode_alarm(raw, {}, "m1", 1_790_000_000.0)
    except ContractError:
        return  # outside the input contract (NaN, a control character): refused, never decided

    decision = decide(alarm, DecisionState(), SETTINGS, 1_790_000_000.0)
    plan = plan_incident(alarm, "i1")

    assert isinstance(decision, Skip | Upgrade)
    assert isinstance(plan.change, IncidentChange)
    if isinstance(decision, Upgrade):
        assert alarm.alarm_type == "memory" and alarm.value is not None and alarm.value > 80


rule_like = st.dictionaries(st.sampled_from(sorted(RULE_KEYS) + ["extra"]), json_values, max_size=5)
policy_like = st.fixed_dictionaries(
    {"rules": st.lists(rule_like | json_values, max_size=3)},
    optional={"ladder": json_values | st.lists(st.text(max_size=8), max_size=3), "max_plan": json_values},
)


@settings(max_examples=500, deadline=None)
@given(policy_like | st.dictionaries(st.sampled_from(["ladder", "max_plan", "rules", "x"]), json_values))
def test_any_toml_shaped_policy_is_accepted_or_rejected_with_one_line(data: dict[str, Any]) -> None:
    try:
        parse_policy(data, "p.toml")
    except PolicyError as exc:
        assert str(exc).startswith("POLICY_FILE p.toml: ") and "\n" not in str(exc)
