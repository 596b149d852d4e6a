"""A busy wait's start travels with the message from one look to the next (the header
``x-autopilot-busy-since``), through the broker. A float in a header table goes on the wire as
a 32-bit float, which holds today's epoch seconds only to the nearest 128: a wait of a minute
could be taken for over two and the alarm parked early. It travels as ISO 8601 text."""

from __future__ import annotations

import aio_pika
import pytest

from shared import envelope
from shared.envelope import H_BUSY_SINCE


async def _through_the_broker(vhost: str, message: aio_pika.Message) -> aio_pika.abc.AbstractIncomingMessage:
    connection = await aio_pika.connect(vhost)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("busy-header", auto_delete=False)
        await channel.default_exchange.publish(message, routing_key=queue.name)
        got = await queue.get(no_ack=True, timeout=5)
        await queue.delete()
    return got


@pytest.mark.parametrize("since", [1_796_579_263.991, 1_796_579_200.25, 1_893_456_000.5])
async def test_given_a_busy_wait_deferred_through_the_broker_then_its_start_comes_back_to_the_millisecond(
    vhost: str, since: float
) -> None:
    first = await _through_the_broker(vhost, aio_pika.Message(b'{"alarm_type": "memory"}', message_id="m1"))
    copy = envelope.retry_copy(first, attempts_so_far=1, busy_from=since)
    looked_again = await _through_the_broker(vhost, copy)
    headers = looked_again.headers or {}
    assert envelope.busy_since(headers) == pytest.approx(since, abs=0.001)
    assert envelope.attempts(headers) == 1


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("2026-12-06T17:47:43.991Z", 1_796_579_263.991),
        (b"2026-12-06T17:47:43.991Z", 1_796_579_263.991),
        (1_765_043_200.0, 1_765_043_200.0),  # a number, as deferred by an earlier version
        (1_765_043_200, 1_765_043_200.0),
        ("not a time", None),
        ("", None),
        (True, None),
        (-5.0, None),
        ("9999-12-31T00:00:00Z", None),  # beyond what a busy wait can have started at
    ],
)
def test_busy_since_reads_text_and_numbers_and_nothing_else(value: object, read: float | None) -> None:
    got = envelope.busy_since({H_BUSY_SINCE: value})
    assert got == (pytest.approx(read, abs=0.001) if read is not None else None)
