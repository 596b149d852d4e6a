"""The CloudAMQP client's pure parts (refusals, ids, delays) as tables, and ``UPGRADE_API=auto``
against the loopback stand-in."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from shared.errors import BusyError, PermanentError, RetryableError
from shared.settings import UpgradeApi
from tests.cloudamqp_stand_in import DEFAULT_KEY, CloudAmqpStandIn
from worker.cloudamqp import CloudAmqpClient, classify
from worker.instances import Directory
from worker.outcomes import retry_delay

WAIT = {"error": "Please wait for your cluster to be configured before trying to update it"}
SHARED = {"error": "Sorry, you can't move to a shared plan automatically. Please create a new instance."}


@pytest.mark.parametrize(
    ("status", "body", "error", "words"),
    [
        (200, {"message": "Your cluster is being reconfigured"}, None, ""),
        (422, WAIT, BusyError, "Please wait for your cluster"),
        (423, {"error": "Locked"}, BusyError, "Locked"),
        (429, {"error": "Too many requests"}, RetryableError, "429"),
        (503, {"error": "Service unavailable"}, RetryableError, "503"),
        (500, "<html>oops</html>", RetryableError, "oops"),
        (400, {"error": "Firewall configuring", "error_code": 40001}, RetryableError, "error_code 40001"),
        (400, {"error": "Timeout talking to backend", "error_code": 40099}, RetryableError, "40099"),
        (400, {"error": "Account suspended", "error_code": 40005}, PermanentError, "Account suspended"),
        (400, {"error": "Invalid disk size", "error_code": 40007}, PermanentError, "Invalid disk size"),
        (422, SHARED, PermanentError, "can't move to a shared plan"),
        (404, {"error": "Not found"}, PermanentError, "404: Not found"),
        (410, {"message": "Gone"}, PermanentError, "Gone"),
        (401, {"error": "Not authorized"}, PermanentError, "the CloudAMQP API key was refused"),
        (403, {"error": "Forbidden"}, PermanentError, "the CloudAMQP API key was refused"),
    ],
)
def test_cloudamqps_answers_are_classified_as_its_own_provider_does(
    status: int, body: object, error: type[Exception] | None, words: str
) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    if error is None:
        classify(status, text, None)
        return
    with pytest.raises(error) as raised:
        classify(status, text, None)
    assert type(raised.value) is error and words in str(raised.value)


def test_a_429_without_retry_after_backs_off_to_at_most_a_minute() -> None:
    with pytest.raises(RetryableError) as raised:
        classify(429, "{}", None)
    delays = (10.0, 60.0, 300.0, 1800.0)
    assert [retry_delay(delays, n, None, raised.value.max_delay) for n in (1, 2, 3, 4)] == [10, 60, 60, 60]
    assert retry_delay(delays, 3, None) == 300  # any other failure: the configured delay


LISTING = [
    {"id": 359559, "name": "orders", "plan": "bunny-1", "providerid": "e0c6e389-64bf-467d-b018-13c1a1d2636f"},
    {"id": 359560, "name": "359559", "plan": "hare-1", "providerid": "0a7a9c6e-0000-4000-8000-000000000001"},
]


@pytest.mark.parametrize(
    ("configured", "alarm_names", "same_as", "api_id"),
    [
        ("359559", "e0c6e389-64bf-467d-b018-13c1a1d2636f", "359559", "359559"),
        ("orders", "359559", "orders", "359559"),  # an id beats a name that looks like it
        ("e0c6e389-64bf-467d-b018-13c1a1d2636f", "orders", "e0c6e389-64bf-467d-b018-13c1a1d2636f", "359559"),
        ("359560", "0a7a9c6e-0000-4000-8000-000000000001", "359560", "359560"),
    ],
)
def test_an_instance_is_known_by_its_id_uuid_and_name(
    configured: str, alarm_names: str, same_as: str, api_id: str
) -> None:
    directory = Directory.from_listing([configured], LISTING)

    assert directory.configured(alarm_names) == same_as
    assert directory.api_id(configured) == api_id
    assert directory.unresolved == ()


def test_an_instance_the_list_lacks_is_used_as_given_and_unknown_alarms_stay_themselves() -> None:
    directory = Directory.from_listing(["mistyped", "orders"], LISTING)

    assert directory.unresolved == ("mistyped",)
    assert (directory.api_id("mistyped"), directory.configured("elsewhere")) == ("mistyped", "elsewhere")
    assert not directory.knows("elsewhere") and directory.knows("359559")


async def test_auto_asks_the_blogs_endpoint_once_even_when_plan_changes_come_together() -> None:
    api = CloudAmqpStandIn(blog="absent", latency=0.05)
    ids = [api.add_instance(f"i{n}").id for n in range(5)]
    await api.start()
    try:
        async with aiohttp.ClientSession() as session:
            client = CloudAmqpClient(
                session, base_url=api.url, api_key=DEFAULT_KEY, timeout=5, quick_retries=0
            )
            assert client.api_in_use == "auto"

            async def nothing() -> None:
                return None

            await asyncio.gather(*(client.upgrade(str(i), "hare-1", "why", nothing) for i in ids))
    finally:
        await api.stop()

    assert client.api_in_use == UpgradeApi.INSTANCES.value
    calls = [(r.method, r.status) for r in api.upgrade_requests()]
    assert calls.count(("POST", 404)) == 1 and calls.count(("PUT", 200)) == 5
    assert all(i.plan == "hare-1" for i in api.instances.values())


async def test_a_plan_change_is_sent_as_the_documented_api_takes_it_form_or_json() -> None:
    api = CloudAmqpStandIn()
    instance = api.add_instance("orders")
    await api.start()
    try:
        async with aiohttp.ClientSession() as session:
            auth = {"Authorization": "Basic " + base64.b64encode(f":{DEFAULT_KEY}".encode()).decode()}
            wrong = {"Authorization": "Basic " + base64.b64encode(b":wrong").decode()}
            url = f"{api.url}/api/instances/{instance.id}"
            async with session.put(url, data={"plan": "hare-1"}, headers=auth) as resp:
                assert resp.status == 200
            async with session.put(url, json={"plan": "rabbit-1"}, headers=auth) as resp:
                # CloudAMQP still applying the first change (reconfigure_seconds 0: already done).
                assert resp.status == 200
            async with session.get(url, headers=wrong) as resp:
                assert (resp.status, await resp.json()) == (401, {"error": "Not authorized"})
    finally:
        await api.stop()
    assert instance.plan == "rabbit-1"


@pytest.mark.parametrize("kind", ["plan", "disk"])
async def test_a_change_whose_answer_never_came_is_not_asked_again_but_a_refused_one_is(kind: str) -> None:
    # A timeout after the request went out: CloudAMQP may have made the change, so the client
    # gives up at once (``unanswered``) and leaves the follow-up to a read of the instance. A
    # 503 says it did not: asked again at once, as before.
    api = CloudAmqpStandIn(blog="absent", script=["lost", 503])
    instance = api.add_instance("orders", "hare-1")
    instance.extra_disk = 0
    await api.start()

    async def nothing() -> None:
        return None

    try:
        async with aiohttp.ClientSession() as session:
            client = CloudAmqpClient(
                session, base_url=api.url, api_key=DEFAULT_KEY, timeout=0.5, quick_retries=3,
                mode=UpgradeApi.INSTANCES,
            )  # fmt: skip

            async def change() -> None:
                if kind == "plan":
                    await client.upgrade(str(instance.id), "rabbit-1", "why", nothing)
                else:
                    await client.resize_disk(str(instance.id), 25, False, nothing)

            with pytest.raises(RetryableError) as lost:
                await change()
            assert lost.value.unanswered and "did not answer" in str(lost.value)
            sent = api.upgrade_requests() if kind == "plan" else api.disk_requests()
            assert len(sent) == 1  # not asked again
            if kind == "plan":  # (a disk resize within six hours would be refused)
                await change()  # 503, then asked again at once: 200
                sent = api.upgrade_requests()
                assert [r.status for r in sent[1:]] == [503, 200]
    finally:
        await api.stop()


async def test_a_connection_never_made_carried_no_request_and_one_dropped_after_sending_may_have() -> None:
    async with aiohttp.ClientSession() as session:
        # Nothing listens on this port: the request never left.
        client = CloudAmqpClient(
            session, base_url="http://127.0.0.1:9", api_key=DEFAULT_KEY, timeout=2, quick_retries=0,
            mode=UpgradeApi.INSTANCES,
        )  # fmt: skip
        with pytest.raises(RetryableError) as refused:
            await client.read_instance("1")
        assert not refused.value.unanswered

    # A server that reads the request and closes the connection without a word.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            client = CloudAmqpClient(
                session, base_url=f"http://127.0.0.1:{port}", api_key=DEFAULT_KEY, timeout=2,
                quick_retries=0, mode=UpgradeApi.INSTANCES,
            )  # fmt: skip

            async def nothing() -> None:
                return None

            with pytest.raises(RetryableError) as dropped:
                await client.upgrade("1", "hare-1", "why", nothing)
            assert dropped.value.unanswered
    finally:
        server.close()
        await server.wait_closed()
