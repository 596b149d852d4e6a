"""The receiver in-process: ``create_app(settings)`` under aiohttp's test client, against the
real broker (a vhost per test) and the real store (SQLite and PostgreSQL).

The fast signal for an edit to the receiver: the key assertions of the spawned-process tests
(test_pipeline.py, test_operations.py, test_incidents.py) without starting a process. What a
worker would have written is written here straight through the store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app
from receiver.keys import STORE
from shared.alarm import Alarm, event_key, new_id
from shared.incidents import plan_incident
from shared.settings import Settings
from shared.store import ActionRecord, ActionStatus, Store
from tests.conftest import vhost_name
from tests.integration.conftest import SEED_INSTANCE, seed_alarm
from tests.support import (
    ROOT,
    Services,
    TcpProxy,
    free_port,
    management_request,
    prometheus_samples,
    queue_depth,
    wait_until,
)

WORK_QUEUE = "cloudamqp.alarms"  # SPEC: fixed, so that operators find it
TOKEN = "in-process-token"
Client = TestClient[web.Request, web.Application]
MakeReceiver = Callable[..., Awaitable[Client]]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def receiver_env(vhost: str, database_url: str) -> dict[str, str]:
    return {"RABBITMQ_URL": vhost, "DATABASE_URL": database_url, "RETRY_DELAYS": "0.2,0.5"}


@pytest.fixture
def make_receiver(receiver_env: dict[str, str], aiohttp_client: AiohttpClient) -> MakeReceiver:
    """A started receiver app and a client for it; the environment can be overridden.

    ``receiver_env`` comes first so that the app is stopped before its vhost and database
    are deleted (fixtures are torn down in the reverse order of their setup)."""

    async def make(**overrides: str) -> Client:
        settings = Settings.from_env({**receiver_env, **overrides})
        return await aiohttp_client(create_app(settings))

    return make


@pytest.fixture
async def receiver(make_receiver: MakeReceiver) -> Client:
    return await make_receiver()


async def answer(resp: Any) -> tuple[int, Any]:
    """Status and JSON body; fails when the body is not JSON (every answer of ours is)."""
    assert resp.content_type == "application/json", (resp.status, await resp.text())
    return resp.status, await resp.json()


async def post(client: Client, body: Any, path: str = "/cloudamqp/alarm", **kwargs: Any) -> tuple[int, Any]:
    if "data" not in kwargs:
        kwargs["json"] = body
    async with client.post(path, **kwargs) as resp:
        return await answer(resp)


async def get(client: Client, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.get(path, **kwargs) as resp:
        return await answer(resp)


async def get_ok(client: Client, path: str, **kwargs: Any) -> Any:
    status, body = await get(client, path, **kwargs)
    assert status == 200, (path, body)
    return body


def assert_error(body: Any, error: str) -> None:
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == error and body["detail"], body


async def scrape(client: Client) -> dict[str, float]:
    """``GET /metrics`` → {'name{labels}': value}."""
    async with client.get("/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return prometheus_samples(text)


def alarm_route(status: int) -> str:
    return f'autopilot_receiver_requests_total{{route="/cloudamqp/alarm",status="{status}"}}'


# --- the webhook ------------------------------------------------------------------------------


async def test_given_the_seed_alarm_when_posted_then_202_with_its_id_only_once_the_broker_holds_it(
    receiver: Client, vhost: str
) -> None:
    raw = json.dumps(seed_alarm()).encode()

    status, body = await post(receiver, None, data=raw, headers=JSON)

    assert status == 202 and body == {"status": "accepted", "id": body["id"]} and body["id"]
    assert await queue_depth(vhost, WORK_QUEUE) == 1  # no wait: the 202 came after the confirm
    connection = await aio_pika.connect(vhost)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(WORK_QUEUE, passive=True)
        message = await queue.get(no_ack=False)
        assert message.body == raw  # the alarm exactly as posted
        assert message.message_id == body["id"]
        assert message.headers["x-autopilot-event-id"] == body["id"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await message.nack(requeue=True)


async def test_given_a_json_suffix_content_type_then_the_alarm_is_accepted(
    receiver: Client, vhost: str
) -> None:
    raw = json.dumps(seed_alarm()).encode()

    status, _ = await post(receiver, None, data=raw, headers={"Content-Type": "application/vnd.alarm+json"})

    assert status == 202
    assert await queue_depth(vhost, WORK_QUEUE) == 1


async def _chunks(size: int) -> AsyncIterator[bytes]:
    yield b'{"pad": "'
    for _ in range(size // 1024):
        yield b"x" * 1024
    yield b'"}'


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": b"{not json", "headers": JSON}, 400, "invalid_json"),
        ({"data": b"[1, 2]", "headers": JSON}, 400, "not_an_object"),
        ({"data": b'"an alarm"', "headers": JSON}, 400, "not_an_object"),
        ({"data": b'{"pad": "' + b"x" * (70 * 1024) + b'"}', "headers": JSON}, 413, "payload_too_large"),
        ({"data": b"<html></html>", "headers": {"Content-Type": "text/html"}}, 415, "unsupported_media_type"),
        ({"data": b'{"alarm_type": "memory"}'}, 415, "unsupported_media_type"),
    ],
    ids=["invalid-json", "json-array", "json-string", "70-KiB", "text-html", "no-content-type"],
)
async def test_given_bad_input_then_a_json_error_nothing_published_and_the_receiver_keeps_accepting(
    receiver: Client, vhost: str, kwargs: dict[str, Any], status: int, error: str
) -> None:
    got_status, body = await post(receiver, None, **kwargs)

    assert got_status == status
    assert_error(body, error)
    assert await queue_depth(vhost, WORK_QUEUE) == 0
    assert (await post(receiver, seed_alarm()))[0] == 202


async def test_given_a_70_kib_chunked_body_without_content_length_then_413_json_naming_the_limit(
    receiver: Client, vhost: str
) -> None:
    status, body = await post(receiver, None, data=_chunks(70 * 1024), headers=JSON)

    assert status == 413
    assert_error(body, "payload_too_large")
    assert "65536" in body["detail"]
    assert await queue_depth(vhost, WORK_QUEUE) == 0


@pytest.mark.parametrize(
    ("how", "path", "headers"),
    [
        ("query", f"/cloudamqp/alarm?token={TOKEN}", {}),
        ("bearer", "/cloudamqp/alarm", {"Authorization": f"Bearer {TOKEN}"}),
        ("bearer-lowercase", "/cloudamqp/alarm", {"Authorization": f"bearer {TOKEN}"}),
        ("path", f"/cloudamqp/alarm/{TOKEN}", {}),
    ],
)
async def test_given_a_webhook_token_then_202_with_it_and_401_without_it_or_with_a_wrong_one(
    make_receiver: MakeReceiver, vhost: str, how: str, path: str, headers: dict[str, str]
) -> None:
    client = await make_receiver(WEBHOOK_TOKEN=TOKEN)
    wrong_path = path.replace(TOKEN, "wrong")
    wrong_headers = {k: v.replace(TOKEN, "wrong") for k, v in headers.items()}

    missing_status, missing = await post(client, seed_alarm())
    wrong_status, wrong = await post(client, seed_alarm(), path=wrong_path, headers=wrong_headers)
    good_status, good = await post(client, seed_alarm(), path=path, headers=headers)

    assert missing_status == 401 and wrong_status == 401, how
    assert_error(missing, "unauthorized")
    assert_error(wrong, "unauthorized")
    assert "?token=" in missing["detail"] and "Bearer" in missing["detail"]
    assert good_status == 202 and good["id"], how
    assert await queue_depth(vhost, WORK_QUEUE) == 1


async def test_given_a_closed_broker_port_then_503_with_retry_after_counted_and_never_202(
    make_receiver: MakeReceiver,
) -> None:
    client = await make_receiver(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    before = await scrape(client)

    async with client.post("/cloudamqp/alarm", json=seed_alarm()) as resp:
        status, body = await answer(resp)
        retry_after = resp.headers["Retry-After"]

    assert status == 503 and retry_after.isdigit()
    assert_error(body, "broker_unavailable")
    after = await scrape(client)
    failures = "autopilot_receiver_publish_failures_total"
    assert after[failures] - before.get(failures, 0) == 1
    assert after[alarm_route(503)] - before.get(alarm_route(503), 0) == 1


async def test_given_the_work_queue_deleted_then_503_unroutable_and_then_202_once_it_is_declared_again(
    receiver: Client, services: Services, vhost: str
) -> None:
    assert (await post(receiver, seed_alarm()))[0] == 202
    name = quote(vhost_name(vhost), safe="")

    await management_request(services, "DELETE", f"/api/queues/{name}/{WORK_QUEUE}")
    status, body = await post(receiver, seed_alarm())

    assert status == 503
    assert_error(body, "broker_unavailable")
    assert (await post(receiver, seed_alarm()))[0] == 202  # the receiver re-declared its topology
    assert await queue_depth(vhost, WORK_QUEUE) == 1


async def test_given_the_broker_goes_away_then_503_and_after_it_returns_202_without_a_restart(
    make_receiver: MakeReceiver, vhost: str
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    client = await make_receiver(RABBITMQ_URL=vhost.replace(":5672/", f":{proxy.port}/"))
    try:
        assert (await post(client, seed_alarm()))[0] == 202

        await proxy.cut()
        status, body = await post(client, seed_alarm())
        assert status == 503 and body["error"] == "broker_unavailable"
        ready_status, ready = await get(client, "/readyz")
        assert ready_status == 503 and "broker" in ready["detail"]

        await proxy.start()

        async def accepted() -> bool:
            return (await post(client, seed_alarm()))[0] == 202

        await wait_until(accepted, timeout=15, interval=0.3, what="a 202 after the broker returned")
        assert (await get(client, "/readyz"))[0] == 200
    finally:
        await proxy.cut()


async def test_given_a_wrong_method_or_an_unknown_path_then_aiohttps_own_errors_are_json_too(
    receiver: Client,
) -> None:
    async with receiver.get("/cloudamqp/alarm") as resp:
        status, body = await answer(resp)
        allow = resp.headers["Allow"]
    nowhere_status, nowhere = await get(receiver, "/nowhere")

    assert status == 405 and "POST" in allow
    assert_error(body, "method_not_allowed")
    assert nowhere_status == 404
    assert_error(nowhere, "not_found")


# --- the process itself -----------------------------------------------------------------------


async def test_given_a_running_receiver_then_healthz_and_readyz_answer_ok(receiver: Client) -> None:
    assert await get_ok(receiver, "/healthz") == {"status": "ok"}
    assert await get_ok(receiver, "/readyz") == {"status": "ready"}


async def test_given_no_broker_then_healthz_is_ok_and_readyz_503_names_the_broker_with_retry_after(
    make_receiver: MakeReceiver,
) -> None:
    client = await make_receiver(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")

    async with client.get("/readyz") as resp:
        status, body = await answer(resp)
        retry_after = resp.headers["Retry-After"]

    assert (await get(client, "/healthz"))[0] == 200
    assert status == 503 and retry_after.isdigit()
    assert_error(body, "not_ready")
    assert "broker" in body["detail"] and "store" not in body["detail"]


async def test_given_traffic_then_metrics_count_requests_by_route_and_status_and_time_the_accepts(
    receiver: Client,
) -> None:
    before = await scrape(receiver)

    assert (await post(receiver, seed_alarm()))[0] == 202
    assert (await post(receiver, seed_alarm(value=50)))[0] == 202
    assert (await post(receiver, [1]))[0] == 400
    assert (await get(receiver, "/nowhere"))[0] == 404
    after = await scrape(receiver)

    def moved(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert moved(alarm_route(202)) == 2
    assert moved(alarm_route(400)) == 1
    assert moved('autopilot_receiver_requests_total{route="unmatched",status="404"}') == 1
    assert moved('autopilot_receiver_requests_total{route="/metrics",status="200"}') == 1
    assert moved("autopilot_receiver_accept_seconds_count") == 2


def _console(path: str) -> bool:
    """The console's HTML pages (and the redirects to them) are no part of the JSON contract."""
    return path in {"/", "/ui"} or path.startswith("/ui/")


async def test_the_openapi_document_is_served_as_checked_in_and_describes_every_route(
    receiver: Client,
) -> None:
    async with receiver.get("/openapi.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        served = await resp.read()

    assert served == (ROOT / "receiver" / "openapi.json").read_bytes()
    paths = json.loads(served)["paths"]
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in receiver.app.router.routes()
        if route.resource is not None and route.method != "HEAD" and not _console(route.resource.canonical)
    }
    described = {(path, method) for path, operations in paths.items() for method in operations}
    assert routes == described


# --- read-only views of the store -------------------------------------------------------------

T0 = 1_767_000_000.0  # a fixed clock: "newest first" is then exact


async def record(
    store: Store,
    body: dict[str, Any],
    at: float,
    *,
    instance: str = SEED_INSTANCE,
    status: ActionStatus = ActionStatus.SKIPPED,
    reason: str | None = "no_rule",
) -> str:
    """What a worker writes for one alarm, in one transaction: its event, incident change and
    action."""
    alarm = Alarm(event_id=new_id(), received_at=at - 0.5, body=body, event_key=event_key(body))
    async with store.unit() as unit:
        recorded = await unit.record_event(alarm, instance, plan_incident(alarm, instance), at)
        detail = f"{status.value} for the test"
        await unit.write_action(
            ActionRecord(alarm, status, at, recorded.incident_id, instance, reason, detail)
        )
    return alarm.event_id


async def seed(store: Store) -> list[str]:
    """m1, m2 (another instance), m3, then m1 again: newest first by last seen is m1, m3, m2."""
    bodies: list[tuple[dict[str, Any], str]] = [
        ({"message": "m1", "value": 1}, SEED_INSTANCE),
        ({"message": "m2"}, "other-instance"),
        ({"message": "m3"}, SEED_INSTANCE),
        ({"message": "m1", "value": 2}, SEED_INSTANCE),
    ]
    return [await record(store, body, T0 + n, instance=i) for n, (body, i) in enumerate(bodies)]


async def test_given_recorded_incidents_then_pages_are_newest_first_and_filters_apply(
    receiver: Client,
) -> None:
    await seed(receiver.app[STORE])

    first = await get_ok(receiver, "/incidents?limit=2")
    rest = await get_ok(receiver, "/incidents?limit=2&offset=2")
    everything = (await get_ok(receiver, "/incidents"))["incidents"]

    assert [i["key"] for i in first["incidents"]] == ["m1", "m3"]
    assert (first["limit"], first["offset"]) == (2, 0)
    assert [i["key"] for i in rest["incidents"]] == ["m2"] and (rest["limit"], rest["offset"]) == (2, 2)
    assert (await get_ok(receiver, "/incidents?offset=3"))["incidents"] == []
    m1 = everything[0]
    assert (m1["title"], m1["status"], m1["count"], m1["last_value"]) == ("m1", "open", 2, 2)
    assert (m1["instance"], m1["resolved_at"]) == (SEED_INSTANCE, None)
    assert m1["first_seen"] == "2025-12-29T09:20:00.000Z" and m1["last_seen"] == "2025-12-29T09:20:03.000Z"
    other = await get_ok(receiver, "/incidents?instance=other-instance")
    assert [i["key"] for i in other["incidents"]] == ["m2"]
    seed_only = await get_ok(receiver, f"/incidents?instance={SEED_INSTANCE}&limit=1")
    assert [i["key"] for i in seed_only["incidents"]] == ["m1"]
    assert (await get_ok(receiver, "/incidents?status=resolved"))["incidents"] == []
    assert len((await get_ok(receiver, "/incidents?status=open"))["incidents"]) == 3


async def test_given_a_resolved_incident_when_read_by_id_then_its_events_and_actions_newest_first(
    receiver: Client,
) -> None:
    store = receiver.app[STORE]
    message = "Memory watermark reached on node 2"
    ids = [
        await record(store, {"message": message, "value": 1}, T0),
        await record(store, {"message": message, "value": 2}, T0 + 1),
        await record(store, {"message": message, "resolved": True}, T0 + 2, reason="resolved"),
    ]
    [listed] = (await get_ok(receiver, "/incidents?status=resolved"))["incidents"]

    detail = await get_ok(receiver, f"/incidents/{listed['id']}")

    assert {k: detail[k] for k in listed} == listed
    assert listed["resolved_at"] == "2025-12-29T09:20:02.000Z"
    assert [e["id"] for e in detail["events"]] == ids[::-1]
    assert [e["change"] for e in detail["events"]] == ["resolved", "grouped", "opened"]
    assert detail["events"][-1]["body"] == {"message": message, "value": 1}
    assert [a["event_id"] for a in detail["actions"]] == ids[::-1]
    assert detail["actions"][0]["reason"] == "resolved"
    assert {a["incident_id"] for a in detail["actions"]} == {listed["id"]}


async def test_given_an_unknown_incident_id_then_404_with_a_json_error(receiver: Client) -> None:
    status, body = await get(receiver, "/incidents/0123456789abcdef0123456789abcdef")

    assert status == 404
    assert_error(body, "not_found")


async def test_given_recorded_events_then_pages_show_what_each_did_newest_first(receiver: Client) -> None:
    store = receiver.app[STORE]
    ids = await seed(store)
    odd = await record(store, {"metadata": {"x": 1}}, T0 + 10)

    page = await get_ok(receiver, "/events?limit=2&offset=2")
    [newest] = (await get_ok(receiver, "/events?limit=1"))["events"]

    assert [e["id"] for e in page["events"]] == [ids[2], ids[1]]
    assert [e["incident_key"] for e in page["events"]] == ["m3", "m2"]
    assert [e["change"] for e in page["events"]] == ["opened", "opened"]
    assert (page["limit"], page["offset"]) == (2, 2)
    assert newest["id"] == odd and newest["body"] == {"metadata": {"x": 1}}
    assert (newest["change"], newest["incident_id"], newest["incident_key"]) == ("ungroupable", None, None)
    assert "message" in newest["ungroupable"] and "alarm_type" in newest["ungroupable"]


async def test_given_recorded_actions_then_pages_are_newest_first_and_filter_by_instance(
    receiver: Client,
) -> None:
    ids = await seed(receiver.app[STORE])

    everything = (await get_ok(receiver, "/actions"))["actions"]
    page = await get_ok(receiver, "/actions?limit=1&offset=1")
    other = (await get_ok(receiver, "/actions?instance=other-instance"))["actions"]

    assert [a["id"] for a in everything] == ids[::-1]
    assert [a["event_id"] for a in everything] == ids[::-1]
    assert [a["id"] for a in page["actions"]] == [ids[2]] and (page["limit"], page["offset"]) == (1, 1)
    [action] = other
    assert (action["event_id"], action["instance"], action["status"], action["reason"]) == (
        ids[1],
        "other-instance",
        "skipped",
        "no_rule",
    )
    assert action["detail"] == "skipped for the test" and action["attempts"] == 0
    assert action["created_at"] == action["updated_at"] == "2025-12-29T09:20:01.000Z"


@pytest.mark.parametrize(
    "query",
    [
        "/incidents?limit=0",
        "/incidents?limit=501",
        "/incidents?limit=ten",
        "/incidents?offset=-1",
        "/incidents?offset=1000000001",
        "/incidents?status=bogus",
        "/events?limit=0",
        "/events?offset=x",
        "/actions?limit=501",
        "/actions?offset=-5",
    ],
)
async def test_given_a_bad_query_value_then_400_with_a_json_error_naming_it(
    receiver: Client, query: str
) -> None:
    status, body = await get(receiver, query)

    assert status == 400
    assert_error(body, "bad_query")
    name = query.split("?")[1].split("=")[0]
    assert name in body["detail"]


@pytest.mark.parametrize("path", ["/incidents", "/incidents/{id}", "/events", "/actions"])
async def test_given_a_webhook_token_then_the_read_views_need_it_in_the_query_or_a_bearer_header(
    make_receiver: MakeReceiver, path: str
) -> None:
    client = await make_receiver(WEBHOOK_TOKEN=TOKEN)
    await seed(client.app[STORE])
    [incident, *_] = (await get_ok(client, f"/incidents?token={TOKEN}"))["incidents"]
    path = path.replace("{id}", incident["id"])

    missing_status, missing = await get(client, path)
    wrong_status, _ = await get(client, path, headers={"Authorization": "Bearer wrong"})

    assert (missing_status, wrong_status) == (401, 401)
    assert_error(missing, "unauthorized")
    assert (await get(client, f"{path}?token={TOKEN}"))[0] == 200
    assert (await get(client, path, headers={"Authorization": f"Bearer {TOKEN}"}))[0] == 200
    assert (await get(client, "/healthz"))[0] == 200  # the process's own endpoints stay open
