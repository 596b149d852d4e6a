"""Spike.sh's CloudAMQP incident rules, end to end: alarms posted to the real receiver,
grouped by real workers, read back through ``GET /incidents`` and ``GET /events`` —
on SQLite and on PostgreSQL.

Every event gets exactly one action row (here always a skip: no alarm in this file may
upgrade), so "n decided actions" is how a test knows the worker has recorded n events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import SEED_INSTANCE, Stack
from tests.support import Proc, wait_until

Json = dict[str, Any]
MakeStack = Callable[..., Stack]

FINAL = {"succeeded", "skipped", "dry_run", "failed"}
# What a worker logs when it fails to handle a message rather than deciding it.
TROUBLE = ("alarm.processing_failed", "message.retry_scheduled", "message.parked", "message.settle_failed")


def spike(message: Any, **extra: Any) -> Json:
    return {"message": message, **extra}


async def started(make_stack: MakeStack, database_url: str, *, workers: int = 1, **env: str) -> Stack:
    stack = make_stack(DATABASE_URL=database_url, **env)
    await stack.start_receiver()
    for _ in range(workers):
        await stack.start_worker()
    return stack


def workers(stack: Stack) -> list[Proc]:
    return [p for p in stack.procs if p.module == "worker"]


def trouble(stack: Stack) -> list[Json]:
    return [entry for w in workers(stack) for name in TROUBLE for entry in w.events(name)]


async def get_ok(stack: Stack, path: str, headers: dict[str, str] | None = None) -> Any:
    status, body = await stack.get(path, headers=headers)
    assert status == 200, (path, body)
    return body


async def incidents(stack: Stack, query: str = "", headers: dict[str, str] | None = None) -> list[Json]:
    return list((await get_ok(stack, f"/incidents{query}", headers))["incidents"])


async def events(stack: Stack) -> dict[str, Json]:
    """Recorded events by id (``GET /events``)."""
    body = await get_ok(stack, "/events?limit=500")
    return {e["id"]: e for e in body["events"]}


async def decided(stack: Stack, headers: dict[str, str] | None) -> int:
    body = await get_ok(stack, "/actions?limit=500", headers)
    return sum(1 for a in body["actions"] if a["status"] in FINAL)


async def send(stack: Stack, *bodies: Json, headers: dict[str, str] | None = None) -> list[str]:
    """Post the bodies (each must be accepted), then wait until the worker has decided them all."""
    before = await decided(stack, headers)
    ids = []
    for body in bodies:
        status, reply = await stack.post(body, headers=headers)
        assert status == 202, reply
        ids.append(reply["id"])

    async def all_decided() -> bool:
        return await decided(stack, headers) >= before + len(bodies)

    await wait_until(all_decided, what=f"{len(bodies)} more decided events")
    return ids


# --- Spike's "Test it" ------------------------------------------------------------------------


async def test_given_spikes_test_steps_then_one_incident_opens_groups_and_resolves_by_message(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    message = "Queue depth above 10000 on orders"

    await send(stack, spike(message, value=10500))
    [opened] = await incidents(stack)
    assert (opened["status"], opened["title"], opened["count"]) == ("open", message, 1)
    assert opened["key"] == message
    assert opened["resolved_at"] is None and opened["last_value"] == 10500
    assert opened["instance"] == SEED_INSTANCE  # no instance_id: the first managed instance

    # An identical body posted again is a new event (new id) and groups into the same incident.
    first, second = await send(stack, spike(message, value=10500), spike(message, value=12000))
    assert first != second
    [grouped] = await incidents(stack)
    assert (grouped["id"], grouped["status"], grouped["count"]) == (opened["id"], "open", 3)
    assert grouped["first_seen"] == opened["first_seen"] and grouped["last_seen"] > opened["last_seen"]

    await send(stack, spike(message, resolved=True))
    [resolved] = await incidents(stack)
    assert (resolved["id"], resolved["status"], resolved["count"]) == (opened["id"], "resolved", 3)
    assert resolved["resolved_at"] is not None

    other = "Consumers on orders dropped to zero"
    [meta] = await send(stack, spike(other, metadata={"resolved": True}))
    assert [i["id"] for i in await incidents(stack)] == [opened["id"]]
    event = (await events(stack))[meta]
    assert (event["change"], event["incident_id"], event["incident_key"]) == ("none", None, other)
    assert trouble(stack) == []


async def test_given_resolving_twice_or_with_none_open_then_no_change_and_a_later_alarm_opens_a_new_incident(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    message = "Disk alarm: 92% used on node 1"
    await send(stack, spike(message))
    await send(stack, spike(message, resolved=True))
    [resolved] = await incidents(stack)

    again, unknown = await send(
        stack, spike(message, resolved=True), spike("Never opened anywhere", resolved=True)
    )

    assert await incidents(stack) == [resolved]
    recorded = await events(stack)
    assert [recorded[again]["change"], recorded[unknown]["change"]] == ["none", "none"]
    assert recorded[again]["incident_id"] is None and recorded[unknown]["incident_id"] is None

    await send(stack, spike(message))

    [reopened] = await incidents(stack, "?status=open")
    assert await incidents(stack, "?status=resolved") == [resolved]
    assert reopened["id"] != resolved["id"]
    assert (reopened["key"], reopened["count"], reopened["resolved_at"]) == (message, 1, None)
    assert [i["id"] for i in await incidents(stack)] == [reopened["id"], resolved["id"]]
    assert trouble(stack) == []


async def test_given_two_workers_and_50_concurrent_alarms_with_one_new_message_then_one_incident_counts_50(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url, workers=2)
    message = "Connection count above 5000"

    replies = await asyncio.gather(*(stack.post(spike(message, value=5000 + n)) for n in range(50)))

    assert [status for status, _ in replies] == [202] * 50

    async def all_decided() -> bool:
        return await decided(stack, None) >= 50

    await wait_until(all_decided, timeout=60, what="50 decided events")
    [incident] = await incidents(stack)
    assert (incident["status"], incident["count"], incident["key"]) == ("open", 50, message)
    changes = sorted(e["change"] for e in (await events(stack)).values())
    assert changes == ["grouped"] * 49 + ["opened"]
    per_worker = [len(w.events("incident.opened") + w.events("incident.grouped")) for w in workers(stack)]
    assert sum(per_worker) == 50 and min(per_worker) > 0, per_worker  # both really took part
    assert trouble(stack) == []


# --- what is grouped by what --------------------------------------------------------------------


async def test_given_no_message_and_no_alarm_type_then_accepted_and_recorded_as_ungroupable_with_a_reason(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    bodies: list[Json] = [{}, spike(""), spike("   ", value=3), spike(42), {"metadata": {"x": 1}}]

    ids = await send(stack, *bodies)

    assert await incidents(stack) == []
    recorded = await events(stack)
    for event_id, body in zip(ids, bodies, strict=True):
        event = recorded[event_id]
        assert (event["change"], event["incident_id"], event["incident_key"]) == ("ungroupable", None, None)
        assert "message" in event["ungroupable"] and "alarm_type" in event["ungroupable"]
        assert event["body"] == body
    [worker] = workers(stack)
    logged = worker.events("incident.ungroupable")
    assert sorted(e["event_id"] for e in logged) == sorted(ids) and all(e["reason"] for e in logged)
    assert trouble(stack) == []

    await send(stack, spike("After the odd ones"))
    assert [i["title"] for i in await incidents(stack)] == ["After the odd ones"]


async def test_given_cloudamqp_alarms_without_message_then_grouped_by_alarm_type_and_instance(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    other = "9f0c2b7e-other-instance"

    await send(
        stack,
        {"alarm_type": "cpu", "value": 91, "instance_id": SEED_INSTANCE},
        {"alarm_type": "cpu", "value": 95},  # no instance_id: the first managed instance
        {"alarm_type": "cpu", "value": 97, "instance_id": other},
        {"alarm_type": "disk", "value": 88, "instance_id": SEED_INSTANCE, "message": ""},
    )
    await send(stack, {"alarm_type": "cpu", "value": 99, "instance_id": SEED_INSTANCE})

    found = {i["key"]: i for i in await incidents(stack)}
    assert {k: (i["title"], i["count"]) for k, i in found.items()} == {
        f"cpu alarm on {SEED_INSTANCE}": (f"cpu alarm on {SEED_INSTANCE}", 3),
        f"cpu alarm on {other}": (f"cpu alarm on {other}", 1),
        f"disk alarm on {SEED_INSTANCE}": (f"disk alarm on {SEED_INSTANCE}", 1),
    }
    cpu = found[f"cpu alarm on {SEED_INSTANCE}"]
    assert (cpu["alarm_type"], cpu["instance"], cpu["last_value"]) == ("cpu", SEED_INSTANCE, 99)
    assert found[f"cpu alarm on {other}"]["instance"] == other


# --- the read API ---------------------------------------------------------------------------------


async def test_given_an_incident_when_read_by_id_then_its_events_newest_first_and_its_actions(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    message = "Memory watermark reached on node 2"
    ids = []
    for body in (spike(message, value=1), spike(message, value=2), spike(message, resolved=True)):
        ids += await send(stack, body)
    [listed] = await incidents(stack)

    detail = await get_ok(stack, f"/incidents/{listed['id']}")

    assert {k: detail[k] for k in listed} == listed
    assert [e["id"] for e in detail["events"]] == ids[::-1]
    assert [e["change"] for e in detail["events"]] == ["resolved", "grouped", "opened"]
    assert [e["body"] for e in detail["events"]][-1] == spike(message, value=1)
    assert [a["event_id"] for a in detail["actions"]] == ids[::-1]
    assert {a["incident_id"] for a in detail["actions"]} == {listed["id"]}
    assert detail["actions"][0]["reason"] == "resolved"


async def test_given_an_unknown_incident_id_then_404_with_a_json_error(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = make_stack(DATABASE_URL=database_url)
    await stack.start_receiver()

    status, body = await stack.get("/incidents/0123456789abcdef0123456789abcdef")

    assert status == 404
    assert body["error"] == "not_found" and body["detail"]


async def test_given_several_incidents_then_pages_are_newest_first_by_last_seen_and_filters_apply(
    make_stack: MakeStack, database_url: str
) -> None:
    stack = await started(make_stack, database_url)
    for body in (spike("m1"), spike("m2", instance_id="other-instance"), spike("m3"), spike("m1")):
        await send(stack, body)  # one at a time: last_seen grows in this order; m1 is seen last

    assert [i["key"] for i in await incidents(stack)] == ["m1", "m3", "m2"]
    first = await get_ok(stack, "/incidents?limit=2")
    rest = await get_ok(stack, "/incidents?limit=2&offset=2")
    assert [i["key"] for i in first["incidents"]] == ["m1", "m3"]
    assert (first["limit"], first["offset"]) == (2, 0)
    assert [i["key"] for i in rest["incidents"]] == ["m2"]
    assert await incidents(stack, "?offset=3") == []
    assert [i["key"] for i in await incidents(stack, "?instance=other-instance")] == ["m2"]
    assert [i["key"] for i in await incidents(stack, f"?instance={SEED_INSTANCE}&limit=1")] == ["m1"]
    assert await incidents(stack, "?status=resolved") == []
    page = await get_ok(stack, "/events?limit=2&offset=1")
    assert [e["incident_key"] for e in page["events"]] == ["m3", "m2"]


@pytest.mark.parametrize(
    "query",
    [
        "/incidents?limit=0",
        "/incidents?limit=501",
        "/incidents?limit=ten",
        "/incidents?offset=-1",
        "/incidents?status=bogus",
        "/events?limit=0",
        "/events?limit=501",
    ],
)
async def test_given_a_bad_query_value_then_400_with_a_json_error_naming_it(
    make_stack: MakeStack, database_url: str, query: str
) -> None:
    stack = make_stack(DATABASE_URL=database_url)
    await stack.start_receiver()

    status, body = await stack.get(query)

    assert status == 400
    assert body["error"] == "bad_query"
    name = query.split("?")[1].split("=")[0]
    assert name in body["detail"]


async def test_given_a_webhook_token_then_the_incident_views_need_it(
    make_stack: MakeStack, database_url: str
) -> None:
    token = "incident-views-token"
    stack = await started(make_stack, database_url, WEBHOOK_TOKEN=token)
    bearer = {"Authorization": f"Bearer {token}"}
    await send(stack, spike("Guarded incident"), headers=bearer)
    [incident] = await incidents(stack, headers=bearer)
    paths = ["/incidents", f"/incidents/{incident['id']}", "/events"]

    for path in paths:
        missing_status, missing = await stack.get(path)
        wrong_status, _ = await stack.get(path, headers={"Authorization": "Bearer wrong"})
        assert (missing_status, missing["error"], wrong_status) == (401, "unauthorized", 401), path
        assert (await stack.get(f"{path}?token={token}"))[0] == 200, path
        assert (await stack.get(path, headers=bearer))[0] == 200, path
