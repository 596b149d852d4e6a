"""Broker names and the one topology every process declares, idempotently.

Every queue is a durable quorum queue. Delay queues hold a message for their TTL and then
dead-letter it back onto the work queue; the work queue dead-letters into the parking lot, so
a delivery limit (RabbitMQ 4 sets one of 20 on every quorum queue) can never silently drop an
alarm. Dead-lettering is ``at-least-once`` (RabbitMQ >= 3.10, quorum queues only), which in
turn requires ``x-overflow: reject-publish``.
"""

from __future__ import annotations

from typing import Any

WORK_QUEUE = "cloudamqp.alarms"
DEAD_QUEUE = "cloudamqp.alarms.dead"
RETRY_QUEUE_PREFIX = "cloudamqp.alarms.retry."

# A poison message that kills its worker every time is parked after this many deliveries.
DELIVERY_LIMIT = 20
# The parking lot has no dead-letter target, so it must never hit a delivery limit: RabbitMQ 4
# sets 20 by default, and every look at a message in the UI counts as a delivery there.
# (-1, "unlimited" on 4.x, drops the message on its first return on 3.x; this works on both.)
PARKING_DELIVERY_LIMIT = 2**31 - 1


def retry_queue_name(delay_seconds: float) -> str:
    """``cloudamqp.alarms.retry.10s`` / ``….retry.200ms``: the TTL is in the name so that a
    changed ``RETRY_DELAYS`` declares new queues instead of clashing with old arguments."""
    millis = round(delay_seconds * 1000)
    if millis % 1000 == 0:
        return f"{RETRY_QUEUE_PREFIX}{millis // 1000}s"
    return f"{RETRY_QUEUE_PREFIX}{millis}ms"


def _dead_letter_to(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def queue_arguments(name: str, delay_seconds: float | None = None) -> dict[str, Any]:
    """Arguments for one of our queues; the single place where they are decided."""
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if name == DEAD_QUEUE:
        args["x-delivery-limit"] = PARKING_DELIVERY_LIMIT
    elif name == WORK_QUEUE:
        args.update(_dead_letter_to(DEAD_QUEUE))
        args["x-delivery-limit"] = DELIVERY_LIMIT
    elif name.startswith(RETRY_QUEUE_PREFIX):
        if delay_seconds is None:
            raise ValueError("a delay queue needs its delay")
        args.update(_dead_letter_to(WORK_QUEUE))
        args["x-message-ttl"] = round(delay_seconds * 1000)
    return args


def all_queues(retry_delays: tuple[float, ...]) -> list[tuple[str, dict[str, Any]]]:
    """Every queue of the topology with its arguments, parking lot first."""
    queues = [(DEAD_QUEUE, queue_arguments(DEAD_QUEUE)), (WORK_QUEUE, queue_arguments(WORK_QUEUE))]
    for delay in sorted(set(retry_delays)):
        name = retry_queue_name(delay)
        queues.append((name, queue_arguments(name, delay)))
    return queues


async def declare_topology(channel: Any, retry_delays: tuple[float, ...]) -> None:
    """Declare every queue; safe to call from any number of processes at once."""
    for name, args in all_queues(retry_delays):
        await channel.declare_queue(name, durable=True, arguments=args)
