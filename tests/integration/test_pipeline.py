"""End to end: an alarm posted to the receiver, exactly the right upgrade call out."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import vhost_name
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, now_iso, seed_alarm
from tests.support import (
    Services,
    TcpProxy,
    free_port,
    management_request,
    queue_depth,
    run_to_exit,
    wait_until,
)


async def test_given_the_seed_alarm_when_posted_then_exactly_one_upgrade_request_as_specified(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    await stack.start_worker()

    status, body = await stack.post(seed_alarm())

    assert status == 202 and body["status"] == "accepted" and body["id"]
    await wait_until(lambda: fake_api.upgrade_requests(), what="the upgrade request")
    [action] = await stack.wait_actions(1)
    assert action["status"] == "succeeded" and action["plan"] == "hare-1"
    [request] = fake_api.upgrade_requests()
    assert request.method == "POST"
    assert request.path == f"/api/instances/{SEED_INSTANCE}/actions/upgrade"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.body == {"plan": "hare-1", "reason": "Automatic upgrade triggered by memory alarm (85%)"}


@pytest.mark.parametrize(
    ("alarm", "reason"),
    [
        (seed_alarm(value=80), "below_threshold"),
        (seed_alarm(alarm_type="cpu", value=99), "no_rule"),
        (seed_alarm(value="high"), "value_not_numeric"),
        (seed_alarm(resolved=True), "resolved"),
        (seed_alarm(metadata={"resolved": True}), "metadata_resolved"),
        (seed_alarm(instance_id="someone-elses-instance"), "not_managed"),
        (seed_alarm(triggered_at=now_iso(-timedelta(days=2))), "stale"),
    ],
    ids=[
        "value-80",
        "cpu",
        "non-numeric",
        "resolved",
        "metadata-resolved",
        "unknown-instance",
        "two-days-old",
    ],
)
async def test_given_an_alarm_that_must_not_upgrade_then_no_request_and_a_recorded_skip_reason(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, alarm: dict[str, Any], reason: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()

    status, _ = await stack.post(alarm)

    assert status == 202
    [action] = await stack.wait_actions(1)
    assert (action["status"], action["reason"]) == ("skipped", reason)
    assert action["detail"]
    skips = await worker.wait_event("upgrade.skipped")
    assert skips[0]["reason"] == reason
    assert fake_api.upgrade_requests() == []


async def test_given_ten_alarms_for_one_instance_within_the_cooldown_then_one_upgrade(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    await stack.start_worker()

    for value in range(81, 91):
        status, _ = await stack.post(seed_alarm(value=value))
        assert status == 202

    actions = await stack.wait_actions(10)
    assert len(fake_api.upgrade_requests()) == 1
    statuses = sorted(a["status"] if a["status"] != "skipped" else a["reason"] for a in actions)
    assert statuses == ["cooling_down"] * 9 + ["succeeded"]


@pytest.mark.parametrize(
    ("kwargs", "status", "error"),
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ({"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 400, "not_an_object"),
        (
            {
                "data": b'{"pad": "' + b"x" * (70 * 1024) + b'"}',
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "payload_too_large",
        ),
        ({"data": b"<html></html>", "headers": {"Content-Type": "text/html"}}, 415, "unsupported_media_type"),
    ],
    ids=["invalid-json", "json-array", "70-KiB", "text-html"],
)
async def test_given_bad_input_then_a_clear_json_error_and_the_receiver_keeps_accepting(
    make_stack: MakeStack, kwargs: dict[str, Any], status: int, error: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()

    got_status, body = await stack.post(None, **kwargs)

    assert got_status == status
    assert body["error"] == error and body["detail"]
    assert (await stack.post(seed_alarm()))[0] == 202


async def test_given_a_webhook_token_then_requests_without_it_get_401_and_with_it_202(
    make_stack: MakeStack,
) -> None:
    token = "s3cret-token-for-tests"
    stack = make_stack(WEBHOOK_TOKEN=token)
    receiver = await stack.start_receiver()

    missing_status, missing = await stack.post(seed_alarm())
    wrong_status, _ = await stack.post(seed_alarm(), headers={"Authorization": "Bearer nope"})

    assert missing_status == 401 and missing["error"] == "unauthorized"
    assert wrong_status == 401
    assert (await stack.post(seed_alarm(), headers={"Authorization": f"Bearer {token}"}))[0] == 202
    assert (await stack.post(seed_alarm(), path=f"/cloudamqp/alarm?token={token}"))[0] == 202
    assert (await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{token}"))[0] == 202
    assert (await stack.get("/actions"))[0] == 401
    assert token not in receiver.log_path.read_text()


async def test_given_the_broker_goes_away_then_503_and_after_it_returns_202_without_restart(
    make_stack: MakeStack, vhost: str
) -> None:
    proxy = TcpProxy(5672)
    await proxy.start()
    stack = make_stack(RABBITMQ_URL=vhost.replace(":5672/", f":{proxy.port}/"))
    await stack.start_receiver()
    assert (await stack.post(seed_alarm()))[0] == 202

    await proxy.cut()
    status, body = await stack.post(seed_alarm())
    assert status == 503 and body["error"] == "broker_unavailable"
    ready_status, _ = await stack.get("/readyz")
    assert ready_status == 503

    await proxy.start()

    async def accepted() -> bool:
        return (await stack.post(seed_alarm()))[0] == 202

    await wait_until(accepted, timeout=15, interval=0.3, what="a 202 after the broker returned")
    assert (await stack.get("/readyz"))[0] == 200
    await proxy.cut()


async def test_given_the_work_queue_deleted_then_503_unroutable_and_then_202_once_it_is_declared_again(
    make_stack: MakeStack, services: Services, vhost: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    assert (await stack.post(seed_alarm()))[0] == 202
    name = quote(vhost_name(vhost), safe="")

    await management_request(services, "DELETE", f"/api/queues/{name}/cloudamqp.alarms")
    status, body = await stack.post(seed_alarm())

    assert status == 503 and body["error"] == "broker_unavailable"
    assert (await stack.post(seed_alarm()))[0] == 202  # the receiver re-declared its topology
    assert await queue_depth(vhost, "cloudamqp.alarms") == 1


async def test_given_a_closed_broker_port_then_503_with_retry_after_never_202(make_stack: MakeStack) -> None:
    stack = make_stack(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    await stack.start_receiver()

    session = await stack.session()
    async with session.post(stack.base + "/cloudamqp/alarm", json=seed_alarm()) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"].isdigit()
        assert (await resp.json())["error"] == "broker_unavailable"


async def test_given_alarms_posted_while_no_worker_runs_then_processed_once_a_worker_starts(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    for value in (85, 70, 60):
        assert (await stack.post(seed_alarm(value=value)))[0] == 202

    await stack.start_worker()

    actions = await stack.wait_actions(3)
    assert sorted(a["status"] for a in actions) == ["skipped", "skipped", "succeeded"]
    assert len(fake_api.upgrade_requests()) == 1


async def test_given_sigterm_then_the_worker_stops_consuming_and_exits_zero(make_stack: MakeStack) -> None:
    stack = make_stack()
    worker = await stack.start_worker()

    assert await worker.stop() == 0
    assert worker.events("worker.stopped")


async def test_given_no_api_key_then_the_worker_announces_dry_run_and_calls_nothing(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    stack = make_stack(CLOUDAMQP_API_KEY="")
    await stack.start_receiver()
    worker = await stack.start_worker()

    assert (await stack.post(seed_alarm()))[0] == 202

    [action] = await stack.wait_actions(1)
    assert action["status"] == "dry_run" and action["plan"] == "hare-1"
    assert worker.events("worker.dry_run")
    assert fake_api.upgrade_requests() == []


@pytest.mark.parametrize(
    ("module", "var", "value"),
    [
        ("receiver", "RECEIVER_PORT", "abc"),
        ("worker", "MEMORY_THRESHOLD", "high"),
        ("worker", "RETRY_DELAYS", "10,soon"),
        ("receiver", "DATABASE_URL", "mysql://localhost/db"),
        ("worker", "UPGRADE_API", "graphql"),
    ],
)
def test_given_a_bad_env_var_then_the_process_stops_at_start_with_one_line_naming_it(
    module: str, var: str, value: str
) -> None:
    result = run_to_exit(module, {var: value})

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert var in lines[0]
