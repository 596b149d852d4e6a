"""An alarm of a shape we have not seen, end to end: real receiver and worker processes, the real
broker and both stores, the stand-in CloudAMQP API. With ``type`` instead of ``alarm_type`` and
the instance under ``metadata.instance``, nothing is upgraded (it is still recorded); one
``[fields]`` table in the policy file later, one upgrade. The console's page of the alarms
received and ``autopilot check --last-alarms`` show what was read and the keys nothing read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import SEED_INSTANCE, MakeStack, Stack, now_iso, seed_instance
from tests.integration.test_check import console_page
from tests.integration.test_cli import autopilot
from tests.support import wait_until

OPERATOR_TOKEN = "op-Fm4pW7nB2xK9cR5tV1yH8qL3sD6g"
RULE = """
[[rules]]
name = "memory"
alarm_type = "memory"
above = 80
plan = "hare-1"
"""
FIELDS = """
[fields]
alarm_type = "type"
instance_id = "metadata.instance"
"""


def other_shape() -> dict[str, Any]:
    return {
        "type": "memory",
        "value": 91,
        "metadata": {"instance": SEED_INSTANCE, "region": "eu-west-1"},
        "severity": "<b>critical</b>",
        "triggered_at": now_iso(),
    }


async def decided(stack: Stack, event_id: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        row = next((a for a in await stack.actions() if a["event_id"] == event_id), None)
        return row if row is not None and row["status"] in ("succeeded", "skipped") else None

    return await wait_until(found, timeout=30, what=f"action {event_id} decided")


async def last_alarms(stack: Stack) -> list[dict[str, Any]]:
    env = {k: v for k, v in stack.env.items() if k != "LOG_FORMAT"}
    code, out, err = await autopilot(env, "check", "--last-alarms", "5", "--json")
    assert code == 0, err
    return list(json.loads(out))


async def test_without_a_field_map_nothing_is_upgraded_and_the_alarms_page_says_why(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path, database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    (tmp_path / "policy.toml").write_text(RULE)
    stack = make_stack(
        POLICY_FILE=str(tmp_path / "policy.toml"), DATABASE_URL=database_url, OPERATOR_TOKEN=OPERATOR_TOKEN
    )
    await stack.start_receiver()
    await stack.start_worker()

    status, body = await stack.post(other_shape())
    assert status == 202
    row = await decided(stack, body["id"])

    assert (row["status"], row["reason"]) == ("skipped", "no_rule")
    assert fake_api.upgrade_requests() == []
    _, events = await stack.get("/events")
    assert events["events"][0]["change"] == "ungroupable"  # recorded, as before
    [seen] = await last_alarms(stack)
    assert seen["unrecognised"] == ["severity", "type"]
    assert seen["read"]["alarm_type"] == {"value": None, "from": None}
    assert seen["reason"] == "no_rule" and "[fields]" in seen["hint"]
    html = await console_page(stack.base, "/ui/alarms", OPERATOR_TOKEN)
    card = html.split(f'data-event="{body["id"]}"', 1)[1].split("</section>", 1)[0]
    assert "<code>severity</code>, <code>type</code>" in card and "no_rule" in card
    assert "&lt;b&gt;critical&lt;/b&gt;" in card and "<b>critical</b>" not in card  # raw, escaped


async def test_with_the_field_map_the_same_payload_upgrades_once(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path, database_url: str
) -> None:
    seed_instance(fake_api, "bunny-1")
    (tmp_path / "policy.toml").write_text(RULE + FIELDS)
    stack = make_stack(
        POLICY_FILE=str(tmp_path / "policy.toml"), DATABASE_URL=database_url, OPERATOR_TOKEN=OPERATOR_TOKEN
    )
    await stack.start_receiver()
    await stack.start_worker()

    status, body = await stack.post(other_shape())
    assert status == 202
    row = await decided(stack, body["id"])

    assert (row["status"], row["instance"], row["alarm_type"]) == ("succeeded", SEED_INSTANCE, "memory")
    assert [r.body["plan"] for r in fake_api.upgrade_requests()] == ["hare-1"]
    [seen] = await last_alarms(stack)
    assert seen["unrecognised"] == ["severity"]
    assert seen["read"]["instance_id"] == {"value": SEED_INSTANCE, "from": "metadata.instance"}
    assert seen["read"]["alarm_type"] == {"value": "memory", "from": "type"} and seen["hint"] is None
    html = await console_page(stack.base, "/ui/alarms", OPERATOR_TOKEN)
    assert "<code>instance_id ← metadata.instance</code>" in html


async def test_a_bad_field_map_stops_the_worker_at_start_with_one_line(
    make_stack: MakeStack, tmp_path: Path
) -> None:
    (tmp_path / "policy.toml").write_text(RULE + '\n[fields]\nalarmtype = "type"\n')
    stack = make_stack(POLICY_FILE=str(tmp_path / "policy.toml"))
    worker = stack._spawn("worker", {})
    assert await worker.wait(30) == 1
    last = worker.log_path.read_text().strip().splitlines()[-1]
    assert "[fields] key 'alarmtype': not a field the autopilot reads" in last
