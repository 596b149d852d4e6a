"""The parking lot: what cannot be done is parked in cloudamqp.alarms.dead with headers that
explain it, readable in the management API without being removed, and replayable with the
``python -m worker.dlq`` command (which still respects the cooldown)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import vhost_name
from tests.integration.conftest import SEED_INSTANCE, MakeStack, Stack, seed_alarm
from tests.support import Services, management_request, queue_depth, run_command, wait_until


async def peek_dead(services: Services, amqp_url: str) -> list[dict[str, Any]]:
    """What the management UI's "Get messages" shows, with "Nack message requeue true"."""
    path = f"/api/queues/{quote(vhost_name(amqp_url), safe='')}/{topology.DEAD_QUEUE}/get"
    body = {"count": 50, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 100_000}
    return list(await management_request(services, "POST", path, body))


async def wait_parked(services: Services, amqp_url: str, count: int = 1) -> list[dict[str, Any]]:
    """The parked messages once there are ``count``, and back in the queue after our look."""

    async def parked() -> list[dict[str, Any]]:
        messages = await peek_dead(services, amqp_url)
        return messages if len(messages) >= count else []

    messages: list[dict[str, Any]] = await wait_until(parked, what=f"{count} parked message(s)")

    async def all_ready() -> bool:
        return await queue_depth(amqp_url, topology.DEAD_QUEUE) == count

    await wait_until(all_ready, what="the peeked messages back in the queue")
    return messages


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_dlq(env: dict[str, str], *args: str) -> Result:
    """``python -m worker.dlq ARGS`` with the stack's environment, stdin not a terminal."""
    done = await run_command("worker.dlq", *args, env=env)
    return Result(done.returncode, done.stdout, done.stderr)


async def post_exact(stack: Stack, alarm: dict[str, Any]) -> tuple[bytes, str]:
    """Post these exact bytes; return them and the event id the receiver gave."""
    raw = json.dumps(alarm).encode()
    status, body = await stack.post(None, data=raw, headers={"Content-Type": "application/json"})
    assert status == 202, body
    return raw, str(body["id"])


async def action_has(stack: Stack, event_id: str, status: str) -> dict[str, Any] | None:
    """The action of ``event_id`` once it has reached ``status``, else None."""
    rows = await stack.actions()
    return next((a for a in rows if (a["event_id"], a["status"]) == (event_id, status)), None)


async def test_given_the_api_answers_400_then_one_request_and_the_alarm_is_parked_with_its_explanation(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    fake_api.script = [400]
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()

    raw, event_id = await post_exact(stack, seed_alarm())

    [parked] = await wait_parked(services, vhost)
    headers = parked["properties"]["headers"]
    assert headers["x-autopilot-status"] == "permanent_error"
    assert headers["x-autopilot-attempts"] == 1
    assert "400" in headers["x-autopilot-error"]
    failed_at = datetime.fromisoformat(headers["x-autopilot-failed-at"].replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - failed_at) < timedelta(minutes=1)
    assert parked["payload"] == raw.decode() and parked["payload_encoding"] == "string"
    assert parked["properties"]["message_id"] == event_id
    assert len(fake_api.upgrade_requests()) == 1
    [action] = await stack.wait_actions(1)
    assert (action["status"], action["reason"]) == ("failed", "permanent_error")
    assert worker.events("message.parked")[0]["status"] == "permanent_error"
    # Looking (ack mode "requeue true") leaves it where it is.
    assert len(await peek_dead(services, vhost)) == 1


async def test_given_the_api_down_longer_than_all_attempts_then_parked_and_replay_upgrades_exactly_once(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    fake_api.default_status = 503
    stack = make_stack(QUICK_RETRIES="0", MAX_ATTEMPTS="3")
    await stack.start_receiver()
    worker = await stack.start_worker()
    _, event_id = await post_exact(stack, seed_alarm())

    [parked] = await wait_parked(services, vhost)
    headers = parked["properties"]["headers"]
    assert (headers["x-autopilot-status"], headers["x-autopilot-attempts"]) == ("retries_exhausted", 3)
    assert len(fake_api.upgrade_requests()) == 3

    fake_api.default_status = 200
    result = await run_dlq(stack.env, "replay", "--all")

    assert result.returncode == 0, result.stderr
    assert event_id in result.stdout
    [succeeded] = await worker.wait_event("upgrade.succeeded")
    assert succeeded["replayed"] is True and succeeded["attempts"] == 1
    action = await wait_until(lambda: action_has(stack, event_id, "succeeded"), what="the upgrade")
    assert action["attempts"] == 1
    assert len(fake_api.upgrade_requests()) == 4
    assert await peek_dead(services, vhost) == []


async def test_given_garbage_on_the_work_queue_then_it_is_parked_as_decode_error_and_the_worker_goes_on(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()
    connection = await aio_pika.connect(vhost)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        garbage = aio_pika.Message(b"{not json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(garbage, routing_key=topology.WORK_QUEUE)

    [parked] = await wait_parked(services, vhost)
    headers = parked["properties"]["headers"]
    assert headers["x-autopilot-status"] == "decode_error"
    assert "not JSON" in headers["x-autopilot-error"]
    assert parked["payload"] == "{not json"

    assert (await stack.post(seed_alarm()))[0] == 202
    [action] = await stack.wait_actions(1)
    assert action["status"] == "succeeded"
    assert len(fake_api.upgrade_requests()) == 1
    assert worker.popen.poll() is None


async def test_given_a_parked_alarm_when_replayed_inside_the_cooldown_then_a_cooling_down_skip_and_no_request(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    fake_api.script = [400]
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()
    alarm = seed_alarm()
    _, parked_id = await post_exact(stack, alarm)
    await wait_parked(services, vhost)
    # The same content again: this one upgrades, and starts the cooldown.
    _, upgraded_id = await post_exact(stack, alarm)
    await wait_until(lambda: action_has(stack, upgraded_id, "succeeded"), what="the second upgrade")
    assert len(fake_api.upgrade_requests()) == 2

    result = await run_dlq(stack.env, "replay", parked_id)

    assert result.returncode == 0, result.stderr

    action = await wait_until(lambda: action_has(stack, parked_id, "skipped"), what="the replay's skip")
    # Not "duplicate": a replay is not swallowed by duplicate detection, but the cooldown holds.
    assert action["reason"] == "cooling_down"
    assert [e["replayed"] for e in worker.events("upgrade.skipped")] == [True]
    assert len(fake_api.upgrade_requests()) == 2
    assert await peek_dead(services, vhost) == []


@pytest.mark.early
async def test_given_parked_alarms_then_the_cli_lists_shows_refuses_unknown_ids_and_purges(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    fake_api.default_status = 400
    stack = make_stack()
    await stack.start_receiver()
    await stack.start_worker()
    first_raw, first_id = await post_exact(stack, seed_alarm(value=91))
    await wait_parked(services, vhost, 1)
    _, second_id = await post_exact(stack, seed_alarm(value=92))
    await wait_parked(services, vhost, 2)

    listed = await run_dlq(stack.env, "list")
    again = await run_dlq(stack.env, "list")
    shown = await run_dlq(stack.env, "show", first_id)
    unknown = await run_dlq(stack.env, "replay", "no-such-id")
    unconfirmed = await run_dlq(stack.env, "purge")

    assert listed.returncode == 0, listed.stderr
    for needle in ("permanent_error", SEED_INSTANCE, "memory 91", "memory 92", "400"):
        assert needle in listed.stdout
    # Each parked message once, in the order it was parked, and listing twice shows the same.
    assert listed.stdout.count(first_id) == 1 and listed.stdout.count(second_id) == 1
    assert listed.stdout.index(first_id) < listed.stdout.index(second_id)
    assert again.stdout == listed.stdout
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["body"] == json.loads(first_raw)
    assert view["headers"]["x-autopilot-status"] == "permanent_error"
    assert unknown.returncode != 0 and "no-such-id" in unknown.stderr
    assert unconfirmed.returncode != 0 and "--yes" in unconfirmed.stderr
    assert len(await wait_parked(services, vhost, 2)) == 2  # nothing above removed anything

    purged = await run_dlq(stack.env, "purge", "--yes")

    assert purged.returncode == 0, purged.stderr
    assert "2" in purged.stdout
    assert await peek_dead(services, vhost) == []
    assert len(fake_api.upgrade_requests()) == 2


async def test_given_a_bad_setting_then_the_cli_stops_with_one_line_naming_it(vhost: str) -> None:
    result = await run_dlq({"RABBITMQ_URL": vhost, "RETRY_DELAYS": "soon"}, "list")

    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "RETRY_DELAYS" in result.stderr
