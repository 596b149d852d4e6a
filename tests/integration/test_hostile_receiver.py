"""Hostile requests at the receiver (issue 24): refused with a 4xx before anything is published,
never a 5xx — for the webhook, the JSON views, the controls and the console — on SQLite and
PostgreSQL. Each case is one of the issue's own inputs."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from receiver.app import create_app, make_runner
from receiver.console import COOKIE
from receiver.keys import STORE
from shared.settings import Settings
from tests.integration.conftest import MakeStack, seed_alarm
from tests.integration.test_console import login
from tests.integration.test_receiver_inprocess import (
    T0,
    MakeReceiver,
    assert_error,
    make_receiver,
    post,
    receiver_env,
    record,
)
from tests.support import free_port, queue_depth

__all__ = ["make_receiver", "receiver_env"]  # fixtures shared with test_receiver_inprocess

Client = TestClient[web.Request, web.Application]
WORK_QUEUE = "cloudamqp.alarms"
OPERATOR_TOKEN = "operator-token-hostile-1"


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def raw_request(client: Client, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes the HTTP client libraries will not (undecodable header values); the status and
    the whole answer."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(head + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer


async def test_given_an_alarm_nested_1000_deep_then_400_and_nothing_is_published(
    make_receiver: MakeReceiver, vhost: str
) -> None:
    receiver = await make_receiver()
    raw = f'{{"alarm_type": "memory", "detail": {nested(1000)}}}'.encode()

    status, body = await post(receiver, None, data=raw, headers={"Content-Type": "application/json"})

    assert status == 400, body
    assert_error(body, "too_deep")
    assert await queue_depth(vhost, WORK_QUEUE) == 0


async def test_given_an_alarm_type_nested_300_deep_then_400_before_publishing_never_a_500_after(
    make_receiver: MakeReceiver, vhost: str
) -> None:
    receiver = await make_receiver()
    raw = f'{{"alarm_type": {nested(300, "{}")}, "value": 85}}'.encode()

    status, body = await post(receiver, None, data=raw, headers={"Content-Type": "application/json"})

    assert status == 400, body
    assert_error(body, "too_deep")
    assert await queue_depth(vhost, WORK_QUEUE) == 0


async def test_given_a_nul_in_the_message_then_400_on_either_store(
    make_receiver: MakeReceiver, vhost: str
) -> None:
    receiver = await make_receiver()

    status, body = await post(receiver, seed_alarm(message="disk \u0000 full"))

    assert status == 400, body
    assert_error(body, "control_character")
    assert "U+0000" in body["detail"]
    assert await queue_depth(vhost, WORK_QUEUE) == 0


async def test_given_a_stored_event_with_nan_then_get_events_answers_json_without_nan(
    make_receiver: MakeReceiver,
) -> None:
    receiver = await make_receiver()
    # As an older worker recorded it, before the contract refused non-finite numbers.
    await record(receiver.app[STORE], {"alarm_type": "memory", "value": float("nan")}, T0)

    async with receiver.get("/events") as resp:
        assert resp.status == 200
        events = strict_json(await resp.text())["events"]

    assert [e["body"]["value"] for e in events] == [None]


async def test_given_an_x_operator_header_of_undecodable_bytes_then_400_json_never_500(
    make_receiver: MakeReceiver,
) -> None:
    receiver = await make_receiver(OPERATOR_TOKEN=OPERATOR_TOKEN)
    form = b'{"duration": 600, "reason": "maintenance"}'
    head = (
        b"POST /pause HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + OPERATOR_TOKEN.encode() + b"\r\nX-Operator: \xff\xfe\xc3("
        b"\r\nContent-Length: " + str(len(form)).encode()
    )

    status, answer = await raw_request(receiver, head, form)

    assert status == 400, answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert set(body) == {"error", "detail"}


# aiohttp warns of the multipart field name in a bad encoding (the hostile input itself); the
# warning's text carries the undecodable byte as a lone surrogate, which a pytest-xdist worker
# cannot send to the controller (an INTERNALERROR that ends the run), so it is not recorded.
@pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")
async def test_given_a_login_form_in_a_bad_encoding_then_a_400_page_never_500(
    make_receiver: MakeReceiver,
) -> None:
    receiver = await make_receiver(OPERATOR_TOKEN=OPERATOR_TOKEN)
    async with receiver.get("/ui/login") as resp:
        cookie = resp.headers["Set-Cookie"].split(";", 1)[0].encode()
    for content_type, form in (
        (b"application/x-www-form-urlencoded", b"token=%ff%fe&name=%c3%28"),
        (b"application/x-www-form-urlencoded; charset=utf-8", b"token=\xff\xfe&name=a"),
        (b"application/x-www-form-urlencoded; charset=no-such-codec", b"token=abc"),
        (
            b"multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\xff\r\n\r\n\xfe\r\n--x--",
        ),
    ):
        head = (
            (
                b"POST /ui/login HTTP/1.1\r\nHost: x\r\nCookie: "
                + cookie
                + b"\r\nContent-Type: "
                + content_type
            )
            + b"\r\nContent-Length: "
            + str(len(form)).encode()
        )
        status, answer = await raw_request(receiver, head, form)
        assert status in (400, 403), (content_type, answer[:300])
        assert b"text/html" in answer.split(b"\r\n\r\n", 1)[0], answer[:300]


async def test_given_a_client_trickling_its_headers_then_the_receiver_cuts_it_after_the_header_timeout(
    receiver_env: dict[str, str],
) -> None:
    app = create_app(Settings.from_env(receiver_env))
    runner = make_runner(app, header_timeout=1.0)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(b"POST /cloudamqp/alarm HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            for _ in range(100):  # one header byte every 0.2 s: 20 s if never cut
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.2)

        sender = asyncio.ensure_future(trickle())
        closed = await asyncio.wait_for(reader.read(), 10)  # b"" once the receiver hangs up
        cut_after = time.monotonic() - started
        sender.cancel()
        writer.close()
    finally:
        await runner.cleanup()

    assert closed == b""
    assert 0.9 <= cut_after <= 3.0, cut_after
    print(f"trickling client cut after {cut_after:.2f} s (header timeout 1 s)")


async def test_given_the_token_in_the_path_or_query_then_no_log_line_carries_it_access_log_included(
    make_stack: MakeStack,
) -> None:
    token = "path-token-9c2e51f0a7"
    stack = make_stack(WEBHOOK_TOKEN=token, LOG_LEVEL="debug")
    receiver = await stack.start_receiver(LOG_LEVEL="debug")

    assert (await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{token}"))[0] == 202
    assert (await stack.post(seed_alarm(), path=f"/cloudamqp/alarm?token={token}"))[0] == 202
    assert (await stack.post(seed_alarm(), path=f"/cloudamqp/alarm/{token}x"))[0] == 401

    lines = await receiver.wait_event("http.access", count=3)
    assert {line["path"] for line in lines} == {
        "/cloudamqp/alarm/<redacted>",
        "/cloudamqp/alarm?token=<redacted>",
    }
    assert token not in receiver.log_path.read_text()


async def test_given_a_copied_console_cookie_then_it_stops_working_when_its_owner_logs_out(
    make_receiver: MakeReceiver, aiohttp_client: AiohttpClient
) -> None:
    receiver = await make_receiver(OPERATOR_TOKEN=OPERATOR_TOKEN)
    csrf = await login(receiver, OPERATOR_TOKEN)
    [cookie] = [c for c in receiver.session.cookie_jar if c.key == COOKIE]
    copied = {"Cookie": f"{COOKIE}={cookie.value}"}
    # another browser, same receiver
    thief: TestClient[web.Request, None] = await aiohttp_client(receiver.server)
    thief.session.cookie_jar.clear()
    async with thief.get("/ui/", headers=copied, allow_redirects=False) as resp:
        assert resp.status == 200  # the copy works while its session lasts

    async with receiver.post("/ui/logout", data={"_csrf": csrf}, allow_redirects=False) as resp:
        assert resp.status == 303

    async with thief.get("/ui/", headers=copied, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"].startswith("/ui/login")
