"""Operable in production: metrics, health and self-healing, the OpenAPI contract, secrets."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import vhost_name
from tests.integration.conftest import API_KEY, SEED_INSTANCE, MakeStack, seed_alarm
from tests.support import (
    Proc,
    Services,
    TcpProxy,
    free_port,
    management_request,
    prometheus_samples,
    wait_until,
)


async def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    return prometheus_samples(text)


async def test_given_traffic_then_receiver_and_worker_counters_move(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    port = free_port()
    stack = make_stack(WORKER_METRICS_PORT=str(port))
    await stack.start_receiver()
    process = await stack.start_worker()
    await process.wait_event("check.done", timeout=30)  # its own reads at start, counted below

    assert (await stack.post(seed_alarm(value=85)))[0] == 202
    assert (await stack.post(seed_alarm(value=50)))[0] == 202
    assert (await stack.post([1]))[0] == 400
    async with aiohttp.ClientSession() as session:
        # aiohttp's own errors: JSON like ours, and counted like ours.
        async with session.get(stack.base + "/nowhere") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        async with session.get(stack.base + "/cloudamqp/alarm") as resp:
            assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
            assert "POST" in resp.headers["Allow"]
    await stack.wait_actions(2)

    receiver = await scrape(stack.base + "/metrics")
    worker = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert receiver['autopilot_receiver_requests_total{route="/cloudamqp/alarm",status="202"}'] == 2
    assert receiver['autopilot_receiver_requests_total{route="/cloudamqp/alarm",status="400"}'] == 1
    assert receiver['autopilot_receiver_requests_total{route="unmatched",status="404"}'] == 1
    assert receiver['autopilot_receiver_requests_total{route="unmatched",status="405"}'] == 1
    assert receiver["autopilot_receiver_accept_seconds_count"] == 2
    assert worker['autopilot_worker_messages_total{outcome="upgraded"}'] == 1
    assert worker['autopilot_worker_messages_total{outcome="below_threshold"}'] == 1
    # The instance list and the plan catalogue read at start, the same two read by the checks
    # at start, and the upgrade (the instance read before it: 404).
    assert worker['autopilot_worker_api_responses_total{status="200"}'] == 5
    assert worker['autopilot_worker_api_request_seconds_count{method="POST"}'] == 1
    assert worker[f'autopilot_worker_last_upgrade_timestamp_seconds{{instance="{SEED_INSTANCE}"}}'] > 0
    assert worker["autopilot_worker_in_flight"] == 0


async def test_given_the_broker_is_unreachable_then_publish_failures_are_counted(
    make_stack: MakeStack,
) -> None:
    stack = make_stack(RABBITMQ_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    await stack.start_receiver()

    assert (await stack.post(seed_alarm()))[0] == 503

    samples = await scrape(stack.base + "/metrics")
    assert samples["autopilot_receiver_publish_failures_total"] == 1
    assert samples['autopilot_receiver_requests_total{route="/cloudamqp/alarm",status="503"}'] == 1


async def test_given_the_store_goes_away_then_readyz_fails_and_recovers_by_itself(
    make_stack: MakeStack, postgres_url: str
) -> None:
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.port or 5432)
    await proxy.start()
    stack = make_stack(
        DATABASE_URL=parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    )
    await stack.start_receiver()
    assert (await stack.get("/readyz"))[0] == 200

    await proxy.cut()
    status, body = await stack.get("/readyz")
    assert status == 503 and "store" in body["detail"]

    await proxy.start()

    async def ready() -> bool:
        return (await stack.get("/readyz"))[0] == 200

    await wait_until(ready, timeout=15, interval=0.3, what="readyz to recover")
    await proxy.cut()


async def test_given_the_workers_connection_is_dropped_then_it_reconnects_and_consumes_again(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services, vhost: str
) -> None:
    stack = make_stack()
    await stack.start_receiver()
    worker = await stack.start_worker()
    name = vhost_name(vhost)

    async def worker_connections() -> list[str]:
        rows = await management_request(services, "GET", f"/api/vhosts/{name}/connections")
        return [c["name"] for c in rows or []]

    connections = await wait_until(worker_connections, what="connections listed by the management API")
    for connection in connections:  # the receiver's too: both must heal by themselves
        await management_request(services, "DELETE", f"/api/connections/{connection}")

    async def processed() -> bool:
        if (await stack.post(seed_alarm(value=50)))[0] != 202:
            return False
        return any(a["reason"] == "below_threshold" for a in await stack.actions())

    await wait_until(processed, timeout=30, interval=0.5, what="an alarm processed after the reconnect")
    assert worker.popen.poll() is None


async def test_given_a_failing_run_then_neither_the_api_key_nor_the_token_appears_anywhere(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn
) -> None:
    token = "tok-never-log-me-42"
    # A hostile API that echoes the credentials it got into its error body.
    fake_api.script = [500, 401]
    fake_api.echo_headers = True
    stack = make_stack(WEBHOOK_TOKEN=token, QUICK_RETRIES="0", MAX_ATTEMPTS="2")
    receiver = await stack.start_receiver()
    worker = await stack.start_worker()

    status, _ = await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{token}")
    assert status == 202
    assert (await stack.post(seed_alarm(), path="/cloudamqp/alarm/wrong-token"))[0] == 401
    await worker.wait_event("message.parked")
    _, actions = await stack.get(f"/actions?token={token}")

    texts = [receiver.log_path.read_text(), worker.log_path.read_text(), repr(actions)]
    assert "Bearer ***" in worker.log_path.read_text() or "***" in repr(actions)
    for text in texts:
        assert API_KEY not in text
        assert token not in text


# A pause's "until" must lie in the future, which a schema cannot say: such requests answer
# 400 (tested in test_controls.py), so "valid data is accepted" is not checked on the writes.
WRITES = r"^/(pause|instances/|actions/[^/]+/(approve|deny))"
WRITE_ONLY = ("--include-path-regex", WRITES, "--exclude-checks", "positive_data_acceptance")


# The two runs, each against a receiver of its own, so that a parallel `make test` runs them at once.
@pytest.mark.early
@pytest.mark.parametrize(
    ("bearer", "only"), [("webhook", ()), ("operator", WRITE_ONLY)], ids=["webhook-token", "operator-writes"]
)
def test_the_openapi_document_holds_against_the_live_receiver(
    tmp_path: Path, base_env: dict[str, str], bearer: str, only: tuple[str, ...]
) -> None:
    """schemathesis generates requests from the document: no 5xx, every response conforms —
    once with the webhook token (every route; writes then answer 401), once with the
    operator token on the write endpoints."""
    token, operator = "schema-token", "schema-operator-token-51c0"
    env = {**base_env, "WEBHOOK_TOKEN": token, "OPERATOR_TOKEN": operator, "LOG_FORMAT": "json"}
    receiver = Proc("receiver", env, tmp_path / "receiver.log")
    url = f"http://127.0.0.1:{env['RECEIVER_PORT']}"

    def schemathesis(bearer: str, *only: str) -> str:
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
                "--checks", "all", "--max-examples", "15", "--seed", "7", "--request-timeout", "10",
                "--wait-for-schema", "20", "--header", f"Authorization: Bearer {bearer}", *only,
            ],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        summary = result.stdout[-3000:]
        assert result.returncode == 0, summary
        assert re.search(r"\d+ generated, \d+ passed", summary), summary
        return summary

    try:
        schemathesis(token if bearer == "webhook" else operator, *only)
    finally:
        receiver.signal(signal.SIGTERM)
        receiver.popen.wait(20)
