"""Hostile messages straight onto the queues the worker consumes: each one ends acknowledged,
retried or parked with a reason — never unacknowledged — on SQLite and PostgreSQL (issue 24).

The regression cases are the issue's own inputs, published directly (as a sender that got past
an older receiver, or anyone with the broker's credentials, would)."""

from __future__ import annotations

import json
import time
from typing import Any

import aio_pika

from shared import envelope, topology
from shared.alarm import new_id
from shared.store import Store
from tests.integration.conftest import seed_alarm
from tests.integration.test_worker_inprocess import DELAYS, Drain, drain, parked, publish
from tests.support import queue_depth

__all__ = ["drain"]  # the fixture, shared with test_worker_inprocess


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def publish_with_headers(
    url: str, body: bytes, headers: dict[str, Any], queue: str = topology.WORK_QUEUE
) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await topology.declare_topology(channel, DELAYS)
        message = aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)


async def assert_parked_once_and_nothing_left(
    url: str, store: Store, status: str
) -> aio_pika.abc.AbstractIncomingMessage:
    [message] = await parked(url)
    headers = message.headers or {}
    assert headers[envelope.H_STATUS] == status, headers
    assert headers[envelope.H_ERROR], headers
    # Nothing unacknowledged: the burst worker has closed its connection, so a message it held
    # without settling would be back in the queue now.
    assert await queue_depth(url, topology.WORK_QUEUE) == 0
    assert await store.list_events() == []
    return message


async def test_given_a_body_nested_1000_deep_then_the_worker_parks_it_instead_of_holding_it_for_ever(
    vhost: str, drain: Drain
) -> None:
    await publish(vhost, f'{{"alarm_type": "memory", "x": {nested(1000)}}}'.encode(), delays=DELAYS)

    store = await drain()

    await assert_parked_once_and_nothing_left(vhost, store, "decode_error")


async def test_given_a_body_with_a_5000_digit_number_then_the_worker_parks_it(
    vhost: str, drain: Drain
) -> None:
    await publish(vhost, b'{"alarm_type": "memory", "value": ' + b"9" * 5000 + b"}", delays=DELAYS)

    store = await drain()

    await assert_parked_once_and_nothing_left(vhost, store, "decode_error")


async def test_given_a_body_with_a_lone_surrogate_then_the_worker_parks_it(vhost: str, drain: Drain) -> None:
    await publish(vhost, b'{"alarm_type": "memory", "message": "\\ud800"}', delays=DELAYS)

    store = await drain()

    await assert_parked_once_and_nothing_left(vhost, store, "decode_error")


async def test_given_a_nul_in_the_message_then_both_stores_park_it_at_once_never_after_retries(
    vhost: str, drain: Drain
) -> None:
    await publish(vhost, json.dumps(seed_alarm(message="disk \u0000 full")).encode(), delays=DELAYS)

    store = await drain()

    await assert_parked_once_and_nothing_left(vhost, store, "decode_error")
    assert await store.list_actions() == []


async def test_given_nan_in_the_body_then_the_worker_parks_it_and_records_nothing_unprintable(
    vhost: str, drain: Drain
) -> None:
    await publish(vhost, b'{"alarm_type": "memory", "value": NaN}', delays=DELAYS)

    store = await drain()

    await assert_parked_once_and_nothing_left(vhost, store, "decode_error")


async def test_given_a_received_at_header_in_year_9999_then_the_alarm_is_recorded_as_received_now(
    vhost: str, drain: Drain
) -> None:
    event_id = new_id()
    headers = {envelope.H_EVENT_ID: event_id, envelope.H_RECEIVED_AT: "9999-12-31T23:59:59Z"}
    before = time.time()
    await publish_with_headers(vhost, json.dumps(seed_alarm(instance_id="other")).encode(), headers)

    store = await drain()

    [event] = await store.list_events()
    assert event["event_id"] == event_id
    assert before - 1 <= float(event["received_at"]) <= time.time() + 1
    assert await parked(vhost) == []
    assert await queue_depth(vhost, topology.WORK_QUEUE) == 0
