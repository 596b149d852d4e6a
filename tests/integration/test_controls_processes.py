"""Approval across a worker crash, with the real processes: an upgrade that awaits approval
waits in the store and in a delayed check message, never in a held delivery — so a worker
SIGKILLed meanwhile loses nothing, and the approval still leads to exactly one call. The
processes' logs and the audit trail hold none of the secrets they were given."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, Stack, seed_alarm, seed_instance
from tests.support import wait_until

OPERATOR_TOKEN = "operator-token-crash-9c2e51"
WEBHOOK_TOKEN = "webhook-token-crash-44ab"
POLICY = """
[[rules]]
name = "careful"
alarm_type = "memory"
above = 80
plan = "hare-1"
approve = true
approve_timeout = 600
"""


async def _action(stack: Stack, event_id: str, status: str) -> dict[str, Any]:
    async def found() -> dict[str, Any] | None:
        code, body = await stack.get(f"/actions?token={WEBHOOK_TOKEN}")
        assert code == 200, body
        row = next((a for a in body["actions"] if a["event_id"] == event_id), None)
        return row if row is not None and row["status"] == status else None

    return await wait_until(found, timeout=30, what=f"{event_id} to be {status}")


async def test_given_a_worker_sigkilled_while_an_upgrade_awaits_approval_then_approving_still_upgrades_once(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    stack = make_stack(POLICY_FILE=str(policy), OPERATOR_TOKEN=OPERATOR_TOKEN, WEBHOOK_TOKEN=WEBHOOK_TOKEN)
    await stack.start_receiver()
    doomed = await stack.start_worker()
    status, accepted = await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{WEBHOOK_TOKEN}")
    assert status == 202
    event_id = accepted["id"]
    await _action(stack, event_id, "awaiting_approval")

    await doomed.kill()
    survivor = await stack.start_worker()
    status, body = await stack.post(
        {"reason": "capacity review done"},
        path=f"/actions/{event_id}/approve",
        headers={"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator": "carol"},
    )

    assert status == 200, body
    done = await _action(stack, event_id, "succeeded")
    assert done["approval"]["decided_by"] == "carol"
    upgrade_path = f"/api/instances/{SEED_INSTANCE}/actions/upgrade"
    assert [r.path for r in fake_api.upgrade_requests()] == [upgrade_path]
    await survivor.wait_event("upgrade.succeeded")
    code, trail = await stack.get("/audit", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    assert code == 200
    assert {e["act"] for e in trail["audit"]} == {"approval.requested", "approve", "upgrade"}
    logs = "".join(proc.log_path.read_text(errors="replace") for proc in stack.procs)
    everything = logs + str(trail)
    for secret in (OPERATOR_TOKEN, WEBHOOK_TOKEN, API_KEY):
        assert secret not in everything


async def test_given_a_worker_sigkilled_during_an_approved_upgrade_call_then_the_upgrade_is_not_repeated(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, tmp_path: Path
) -> None:
    """The crash window after the approved call started: the approved action is carried on
    under the ordinary claim rules (its lease runs out, a takeover reads the plan first), not
    dropped, not repeated blindly, and counted as made."""
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    stack = make_stack(
        POLICY_FILE=str(policy),
        OPERATOR_TOKEN=OPERATOR_TOKEN,
        WEBHOOK_TOKEN=WEBHOOK_TOKEN,
        UPGRADE_API="instances",
        CLAIM_LEASE_SECONDS="2",
    )
    seed = seed_instance(fake_api, "bunny-1")
    await stack.start_receiver()
    doomed = await stack.start_worker()
    status, accepted = await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{WEBHOOK_TOKEN}")
    event_id = accepted["id"]
    await _action(stack, event_id, "awaiting_approval")
    fake_api.hold = asyncio.Event()
    status, _ = await stack.post(
        None, path=f"/actions/{event_id}/approve", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    assert status == 200
    await wait_until(lambda: fake_api.upgrade_requests(), timeout=20, what="the approved upgrade call")

    await doomed.kill()  # mid-call: CloudAMQP carries the upgrade out, nobody records it
    held, fake_api.hold = fake_api.hold, None
    held.set()
    await stack.start_worker()

    async def settled() -> dict[str, Any] | None:
        code, body = await stack.get(f"/actions?token={WEBHOOK_TOKEN}")
        row = next((a for a in body["actions"] if a["event_id"] == event_id), None)
        return (
            row if row is not None and row["status"] not in {"approved", "in_progress", "retrying"} else None
        )

    final = await wait_until(settled, timeout=40, what="the approved upgrade to be carried on")
    # The takeover reads the plan first and finds the change it asked for (``asked_at``)
    # made: the upgrade is this action's, succeeded — no longer recorded as a skip.
    assert (final["status"], final["reason"]) == ("succeeded", None), final
    assert final["asked_at"] is not None
    assert [r.method for r in fake_api.upgrade_requests()] == ["PUT"]
    assert seed.plan == "hare-1"
