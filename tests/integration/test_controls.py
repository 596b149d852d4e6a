"""Pause, approval and the audit trail, end to end in-process: the receiver app (aiohttp's
test client) and a worker (``Consumer.run``) against the real broker and both stores, with
the stand-in CloudAMQP API counting upgrade calls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from receiver.keys import OPERATIONS
from shared.alarm import Alarm, event_key, new_id
from shared.envelope import ApprovalCheck
from shared.policy import Policy, Rule
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, seed_alarm, seed_instance
from tests.support import wait_until
from worker.cloudamqp import CloudAmqpClient
from worker.consumer import Consumer
from worker.outcomes import Follow
from worker.process import Processor

OPERATOR_TOKEN = "operator-token-7d1e0c4b9a"
WEBHOOK_TOKEN = "webhook-token-3f9a2b"
OTHER = "5b0c6a2e-other-instance"
Client = TestClient[web.Request, web.Application]
OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "X-Operator": "alice"}
APPROVE_POLICY = Policy((Rule("careful", "memory", plan="bunny-2", above=80, approve=True),))


@pytest.fixture
def env(vhost: str, database_url: str, fake_api: CloudAmqpStandIn) -> dict[str, str]:
    return {
        "RABBITMQ_URL": vhost,
        "DATABASE_URL": database_url,
        "CLOUDAMQP_API_URL": fake_api.url,
        "CLOUDAMQP_API_KEY": API_KEY,
        "CLOUDAMQP_INSTANCE_ID": f"{SEED_INSTANCE},{OTHER}",
        "RETRY_DELAYS": "0.2,0.5",
        "CLAIM_LEASE_SECONDS": "5",
        "QUICK_RETRIES": "0",
        "WEBHOOK_TOKEN": WEBHOOK_TOKEN,
        "OPERATOR_TOKEN": OPERATOR_TOKEN,
    }


@pytest.fixture
def make_receiver(env: dict[str, str], aiohttp_client: AiohttpClient) -> Callable[..., Awaitable[Client]]:
    async def make(**overrides: str) -> Client:
        return await aiohttp_client(create_app(Settings.from_env({**env, **overrides})))

    return make


@pytest.fixture
async def receiver(make_receiver: Callable[..., Awaitable[Client]]) -> Client:
    return await make_receiver()


class RunningWorker:
    def __init__(self, task: asyncio.Task[None], stop: asyncio.Event):
        self.task, self._stop = task, stop

    async def stop(self) -> None:
        """Stop consuming and finish what is in flight (a graceful stop)."""
        self._stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def worker(env: dict[str, str]) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """Start a worker in-process: ``await worker(policy=…, **env overrides)``."""
    running: list[RunningWorker] = []
    stores: list[Store] = []
    async with aiohttp.ClientSession() as session:

        async def start(policy: Policy | None = None, **overrides: str) -> RunningWorker:
            settings = Settings.from_env({**env, **overrides})
            store = await Store.open(settings.database_url)
            stores.append(store)
            client = CloudAmqpClient(
                session, base_url=settings.cloudamqp_api_url, api_key=API_KEY, timeout=5, quick_retries=0
            )
            processor = Processor(settings, store, client, worker_id=f"w-{new_id()[:6]}", policy=policy)
            consumer = Consumer(settings, processor)
            stop = asyncio.Event()
            running.append(RunningWorker(asyncio.ensure_future(consumer.run(stop)), stop))
            await wait_until(lambda: consumer.consuming, timeout=20, what="the worker to consume")
            return running[-1]

        yield start
        for one in running:
            await one.stop()
    for store in stores:
        await store.close()


async def call(client: Client, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers or OP}
    if body is not None:
        kwargs["json"] = body
    async with client.request(method, path, **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def alarm(client: Client, **changes: Any) -> str:
    async with client.post(f"/cloudamqp/alarm/{WEBHOOK_TOKEN}", json=seed_alarm(**changes)) as resp:
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["id"])


async def action(client: Client, event_id: str, *statuses: str) -> dict[str, Any]:
    """Wait until the event's action has one of ``statuses``; return it."""

    async def found() -> dict[str, Any] | None:
        _, body = await call(client, "GET", "/actions?limit=500")
        row = next((a for a in body["actions"] if a["event_id"] == event_id), None)
        return row if row is not None and row["status"] in statuses else None

    return await wait_until(found, timeout=30, what=f"action {event_id} to be {statuses}")


async def audit(client: Client) -> list[dict[str, Any]]:
    status, body = await call(client, "GET", "/audit")
    assert status == 200
    return list(body["audit"])


# --- pause -----------------------------------------------------------------------------------


async def test_given_a_paused_instance_when_five_memory_alarms_arrive_then_no_call_and_five_paused_skips(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    status, body = await call(
        receiver, "POST", f"/instances/{SEED_INSTANCE}/pause", {"duration": 600, "reason": "maintenance"}
    )
    assert (
        status == 200 and body["pause"]["operator"] == "alice" and body["pause"]["instance"] == SEED_INSTANCE
    )
    await worker()

    ids = [await alarm(receiver, value=85 + n) for n in range(5)]

    skips = [await action(receiver, i, "skipped") for i in ids]
    assert [s["reason"] for s in skips] == ["paused"] * 5
    assert all("alice" in s["detail"] and "maintenance" in s["detail"] for s in skips)
    assert fake_api.upgrade_requests() == []
    _, incidents = await call(receiver, "GET", "/incidents")
    assert incidents["incidents"][0]["count"] == 5  # still recorded and grouped
    [entry] = await audit(receiver)
    assert (entry["actor"], entry["kind"], entry["act"], entry["target"]) == (
        "alice",
        "operator",
        "pause",
        SEED_INSTANCE,
    )


async def test_given_a_pause_that_ended_by_itself_then_the_next_alarm_upgrades_even_an_identical_one(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker()
    await call(receiver, "POST", f"/instances/{SEED_INSTANCE}/pause", {"duration": 1.5})
    body = seed_alarm()
    paused = await alarm(receiver, **body)
    assert (await action(receiver, paused, "skipped"))["reason"] == "paused"

    await wait_until(
        lambda: _no_pauses(receiver), timeout=10, interval=0.2, what="the pause to end by itself"
    )
    again = await alarm(receiver, **body)  # the same content, still firing: not a duplicate

    assert (await action(receiver, again, "succeeded"))["plan"] == "bunny-2"
    assert len(fake_api.upgrade_requests()) == 1


async def _no_pauses(client: Client) -> bool:
    _, body = await call(client, "GET", "/pauses")
    pauses: list[dict[str, Any]] = body["pauses"]
    return pauses == []


async def test_given_a_global_pause_then_every_instance_is_held_until_it_is_lifted(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    assert (await call(receiver, "POST", "/pause", {"duration": 600, "reason": "freeze"}))[0] == 200
    await worker()

    held = [await alarm(receiver), await alarm(receiver, instance_id=OTHER)]

    assert [(await action(receiver, i, "skipped"))["reason"] for i in held] == ["paused", "paused"]
    status, lifted = await call(receiver, "DELETE", "/pause")
    assert status == 200 and lifted["resumed"] and lifted["pause"]["scope"] == "*"
    after = [await alarm(receiver, value=90), await alarm(receiver, instance_id=OTHER, value=90)]
    for event_id in after:
        await action(receiver, event_id, "succeeded")
    assert sorted(r.path.split("/")[3] for r in fake_api.upgrade_requests()) == sorted([SEED_INSTANCE, OTHER])
    trail = await audit(receiver)
    assert [e["act"] for e in trail if e["kind"] == "operator"] == ["resume", "pause"]
    assert [e["act"] for e in trail if e["kind"] == "automatic"] == ["upgrade", "upgrade"]


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        (f"/instances/{SEED_INSTANCE}/pause", {}, 400, "bad_pause"),
        (f"/instances/{SEED_INSTANCE}/pause", {"duration": -1}, 400, "bad_pause"),
        (f"/instances/{SEED_INSTANCE}/pause", {"until": "soon"}, 400, "bad_pause"),
        (f"/instances/{SEED_INSTANCE}/pause", {"duration": 60, "reason": 7}, 400, "bad_request"),
        ("/instances/not-ours/pause", {"duration": 60}, 404, "unknown_instance"),
        (f"/actions/{'0' * 32}/approve", None, 404, "not_found"),
    ],
)
async def test_given_a_bad_control_request_then_a_json_error_and_nothing_changes(
    receiver: Client, path: str, body: Any, status: int, error: str
) -> None:
    got, answer = await call(receiver, "POST", path, body)

    assert (got, answer["error"]) == (status, error) and answer["detail"]
    assert await _no_pauses(receiver) and await audit(receiver) == []


# --- who may write ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "headers", "status", "error"),
    [
        ({"OPERATOR_TOKEN": ""}, OP, 403, "operator_token_unset"),
        ({}, {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}, 401, "unauthorized"),
        ({}, {"Authorization": "Bearer operator-token-7d1e0c4b9b"}, 401, "unauthorized"),
        ({}, {"X-Operator": "alice"}, 401, "unauthorized"),
    ],
    ids=["unset", "webhook-token", "wrong-token", "no-token"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/instances/{SEED_INSTANCE}/pause"),
        ("DELETE", f"/instances/{SEED_INSTANCE}/pause"),
        ("POST", "/pause"),
        ("DELETE", "/pause"),
        ("POST", f"/actions/{'0' * 32}/approve"),
        ("POST", f"/actions/{'0' * 32}/deny"),
    ],
)
async def test_given_no_or_the_wrong_operator_token_then_writes_are_refused_and_nothing_changes(
    make_receiver: Any,
    overrides: dict[str, str],
    headers: dict[str, str],
    status: int,
    error: str,
    method: str,
    path: str,
) -> None:
    client = await make_receiver(**overrides)

    got, body = await call(client, method, path, {"duration": 600}, **headers)

    assert (got, body["error"]) == (status, error)
    assert OPERATOR_TOKEN not in json.dumps(body) and WEBHOOK_TOKEN not in json.dumps(body)
    _, pauses = await call(client, "GET", "/pauses", **{"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    _, trail = await call(client, "GET", "/audit", **{"Authorization": f"Bearer {WEBHOOK_TOKEN}"})
    assert pauses["pauses"] == [] and trail["audit"] == []


# --- approval --------------------------------------------------------------------------------


async def test_given_an_approve_rule_then_no_call_until_approved_and_exactly_one_after(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)

    waiting = await action(receiver, event_id, "awaiting_approval")
    assert waiting["plan"] == "bunny-2" and waiting["approval"]["deadline"]
    assert "awaits approval" in waiting["detail"]
    reminder = await alarm(receiver, value=90)  # the same problem while it waits
    assert (await action(receiver, reminder, "skipped"))["reason"] == "awaiting_approval"
    assert fake_api.upgrade_requests() == []

    status, body = await call(receiver, "POST", f"/actions/{event_id}/approve", {"reason": "go"})

    assert status == 200 and body["action"]["approval"]["decided_by"] == "alice"
    done = await action(receiver, event_id, "succeeded")
    assert done["plan"] == "bunny-2"
    assert len(fake_api.upgrade_requests()) == 1
    acts = {e["act"]: e for e in await audit(receiver)}
    assert set(acts) == {"approval.requested", "approve", "upgrade"}
    assert acts["upgrade"]["actor"] == "alice" and acts["upgrade"]["detail"]["cause"]["event_id"] == event_id
    assert acts["upgrade"]["detail"]["plan_to"] == "bunny-2"


async def test_given_twenty_concurrent_approvals_then_one_wins_and_one_call_is_made(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker(policy=APPROVE_POLICY)
    await worker(policy=APPROVE_POLICY)  # two workers: the approval's nudge and checks race too
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")

    answers = await asyncio.gather(
        *(
            call(receiver, "POST", f"/actions/{event_id}/approve", **{**OP, "X-Operator": f"op{n}"})
            for n in range(20)
        )
    )

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] + [409] * 19
    assert {body["error"] for status, body in answers if status == 409} == {"already_approved"}
    await action(receiver, event_id, "succeeded")
    await asyncio.sleep(1.0)  # (not a wait for a result: room for a wrong second call to show)
    assert len(fake_api.upgrade_requests()) == 1
    assert [e["act"] for e in await audit(receiver)].count("approve") == 1


async def test_given_a_denied_upgrade_then_no_call_the_claim_is_released_and_the_next_alarm_asks_again(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker(policy=APPROVE_POLICY)
    first = await alarm(receiver)
    await action(receiver, first, "awaiting_approval")

    status, body = await call(receiver, "POST", f"/actions/{first}/deny", {"reason": "not now"})

    assert status == 200 and body["action"]["status"] == "denied"
    again_status, again = await call(receiver, "POST", f"/actions/{first}/approve")
    assert (again_status, again["error"]) == (409, "already_denied")
    second = await alarm(receiver, value=91)
    await action(receiver, second, "awaiting_approval")  # the claim was released
    assert fake_api.upgrade_requests() == []


async def test_given_nobody_answering_then_the_approval_expires_and_releases_its_claim(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    quick = Policy((Rule("careful", "memory", plan="bunny-2", above=80, approve=True, approve_timeout=1.0),))
    await worker(policy=quick)
    first = await alarm(receiver)

    expired = await action(receiver, first, "expired")

    assert expired["approval"]["decided_by"] is None
    late_status, late = await call(receiver, "POST", f"/actions/{first}/approve")
    assert (late_status, late["error"]) == (409, "expired")
    second = await alarm(receiver, value=91)
    await action(receiver, second, "awaiting_approval")
    assert fake_api.upgrade_requests() == []
    assert "approval.expired" in [e["act"] for e in await audit(receiver)]


async def test_given_a_paused_instance_then_an_awaiting_upgrade_cannot_be_approved(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    await call(receiver, "POST", f"/instances/{SEED_INSTANCE}/pause", {"duration": 600})

    status, body = await call(receiver, "POST", f"/actions/{event_id}/approve")

    assert (status, body["error"]) == (409, "instance_paused")
    assert (await action(receiver, event_id, "awaiting_approval"))["approval"]["decided_by"] is None


async def test_given_an_approval_whose_nudge_was_lost_then_the_periodic_check_carries_it_out(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    """The approval's own delayed check, not the nudge, is what makes approving durable."""
    await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    receiver.app[OPERATIONS].nudge = None  # as if the broker had refused the nudge

    assert (await call(receiver, "POST", f"/actions/{event_id}/approve"))[0] == 200

    await action(receiver, event_id, "succeeded")
    assert len(fake_api.upgrade_requests()) == 1


async def test_the_audit_trail_holds_no_secret_and_offers_no_way_to_change_it(
    receiver: Client, worker: Any
) -> None:
    await call(receiver, "POST", "/pause", {"duration": 60, "reason": "x"})
    await call(receiver, "DELETE", "/pause")

    async with receiver.get("/audit", headers=OP) as resp:
        text = await resp.text()
    for secret in (OPERATOR_TOKEN, WEBHOOK_TOKEN, API_KEY):
        assert secret not in text
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        async with receiver.request(method, "/audit", headers=OP) as resp:
            assert resp.status == 405


async def test_given_a_redelivered_alarm_whose_upgrade_awaits_approval_then_its_check_is_sent_again(
    database_url: str, fake_api: CloudAmqpStandIn, env: dict[str, str]
) -> None:
    """A worker that died after committing the approval request but before sending its check:
    the redelivery sends the check (not a second request), so the approval still gets a look."""
    store = await Store.open(database_url)
    try:
        async with aiohttp.ClientSession() as session:
            client = CloudAmqpClient(
                session, base_url=fake_api.url, api_key=API_KEY, timeout=5, quick_retries=0
            )
            processor = Processor(Settings.from_env(env), store, client, worker_id="w", policy=APPROVE_POLICY)
            body = seed_alarm()
            alarm = Alarm(new_id(), time.time(), body, event_key(body))

            first, again = await processor.process(alarm), await processor.process(alarm)

        assert isinstance(first, Follow) and isinstance(first.check, ApprovalCheck)
        assert isinstance(again, Follow) and again.check.action_id == first.check.action_id
        async with store.db.transaction(write=False) as tx:
            requests = await tx.fetch("SELECT * FROM approvals")
            told = await tx.fetch("SELECT event_type, subject FROM notifications")
        assert len(requests) == 1 and fake_api.upgrade_requests() == []
        # People are told once, in the transaction that asked for the approval.
        assert [(n["event_type"], n["subject"]) for n in told if n["event_type"].startswith("action.")] == [
            ("action.awaiting_approval", alarm.event_id)
        ]
    finally:
        await store.close()


async def test_given_an_approved_upgrade_that_meets_a_503_then_it_is_retried_durably_and_succeeds(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    fake_api.script = [503]

    assert (await call(receiver, "POST", f"/actions/{event_id}/approve"))[0] == 200

    done = await action(receiver, event_id, "succeeded")
    assert done["attempts"] == 2
    assert [r.method for r in fake_api.upgrade_requests()] == ["POST", "POST"]  # the 503, then the upgrade
    upgrades = [e for e in await audit(receiver) if e["act"] == "upgrade"]
    assert len(upgrades) == 1 and upgrades[0]["actor"] == "alice"


async def test_given_an_approved_upgrade_whose_answer_was_lost_then_the_retry_finds_it_made_and_asks_nothing(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    # CloudAMQP makes the approved change and its answer never comes (the client's 5 s pass):
    # the retry reads the instance, finds the plan approved, and counts it as made — one call,
    # the upgrade in the audit trail once, as its approver's.
    seed = seed_instance(fake_api, "bunny-1")
    await worker(policy=APPROVE_POLICY, UPGRADE_POLL_SECONDS="0.2")
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    fake_api.script = ["lost"]

    assert (await call(receiver, "POST", f"/actions/{event_id}/approve"))[0] == 200

    done = await action(receiver, event_id, "succeeded", "skipped", "failed")
    assert (done["status"], done["plan"]) == ("succeeded", "bunny-2"), done
    assert len(fake_api.upgrade_requests()) == 1 and seed.plan == "bunny-2"
    upgrades = [e for e in await audit(receiver) if e["act"] == "upgrade"]
    assert len(upgrades) == 1 and upgrades[0]["actor"] == "alice"


async def test_given_an_approved_upgrade_when_the_instance_is_paused_before_a_worker_acts_then_no_call(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    first = await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    await first.stop()  # nobody acts on the approval until the next worker starts
    assert (await call(receiver, "POST", f"/actions/{event_id}/approve"))[0] == 200
    await call(receiver, "POST", f"/instances/{SEED_INSTANCE}/pause", {"duration": 600, "reason": "window"})

    await worker(policy=APPROVE_POLICY)

    paused = await action(receiver, event_id, "skipped")
    assert paused["reason"] == "paused" and "window" in paused["detail"]
    assert fake_api.upgrade_requests() == []
    await call(receiver, "DELETE", f"/instances/{SEED_INSTANCE}/pause")
    again = await alarm(receiver, value=92)  # the claim was freed: the next alarm asks again
    await action(receiver, again, "awaiting_approval")


async def test_given_an_approved_upgrade_taken_by_a_dry_run_worker_then_nothing_is_called(
    receiver: Client, worker: Any, fake_api: CloudAmqpStandIn
) -> None:
    live = await worker(policy=APPROVE_POLICY)
    event_id = await alarm(receiver)
    await action(receiver, event_id, "awaiting_approval")
    await live.stop()
    await worker(policy=APPROVE_POLICY, DRY_RUN="true")

    assert (await call(receiver, "POST", f"/actions/{event_id}/approve"))[0] == 200

    recorded = await action(receiver, event_id, "dry_run")
    assert "dry run" in recorded["detail"]
    assert fake_api.upgrade_requests() == []
