"""Broker names and the one topology every process declares, idempotently.

Every queue is a durable quorum queue. Delay queues hold a message for their TTL and then
dead-letter it back onto the work queue; the work queue dead-letters into the parking lot, so
a delivery limit (RabbitMQ 4 sets one of 20 on every quorum queue) can never silently drop an
alarm. Dead-lettering is ``at-least-once`` (RabbitMQ >= 3.10, quorum queues only), which in
turn requires ``x-overflow: reject-publish``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORK_QUEUE = "cloudamqp.alarms"
# The fast lane (``receiver.lanes``): alarms the policy would upgrade, the first of their
# instance in a while; the workers decide them before what waits in the work queue.
FAST_QUEUE = "cloudamqp.alarms.fast"
DEAD_QUEUE = "cloudamqp.alarms.dead"
RETRY_QUEUE_PREFIX = "cloudamqp.alarms.retry."

# Outbound notifications: one message per (notification, endpoint), the same shape of work,
# delay and parking queues as the alarms, so one endpoint's retries never hold up another's.
NOTIFY_QUEUE = "cloudamqp.notifications"
NOTIFY_DEAD_QUEUE = "cloudamqp.notifications.dead"
NOTIFY_RETRY_QUEUE_PREFIX = "cloudamqp.notifications.retry."


@dataclass(frozen=True)
class Family:
    """A work queue with its delay queues and parking lot."""

    work: str
    dead: str
    retry_prefix: str
    fast: str | None = None  # a second work queue, taken before the first

    def retry_queue(self, delay_seconds: float) -> str:
        """``<work>.retry.10s`` / ``….retry.200ms``: the TTL is in the name so that changed
        delays declare new queues instead of clashing with old arguments."""
        millis = round(delay_seconds * 1000)
        if millis % 1000 == 0:
            return f"{self.retry_prefix}{millis // 1000}s"
        return f"{self.retry_prefix}{millis}ms"

    def queues(self, retry_delays: tuple[float, ...]) -> list[tuple[str, dict[str, Any]]]:
        """Every queue of the family with its arguments, parking lot first."""
        queues = [(self.dead, self.arguments(self.dead)), (self.work, self.arguments(self.work))]
        if self.fast is not None:
            queues.append((self.fast, self.arguments(self.fast)))
        for delay in sorted(set(retry_delays)):
            name = self.retry_queue(delay)
            queues.append((name, self.arguments(name, delay)))
        return queues

    def arguments(self, name: str, delay_seconds: float | None = None) -> dict[str, Any]:
        """Arguments for one of the family's queues; the single place where they are decided."""
        args: dict[str, Any] = {"x-queue-type": "quorum"}
        if name == self.dead:
            args["x-delivery-limit"] = PARKING_DELIVERY_LIMIT
        elif name in (self.work, self.fast):
            args.update(_dead_letter_to(self.dead))
            args["x-delivery-limit"] = DELIVERY_LIMIT
        elif name.startswith(self.retry_prefix):
            if delay_seconds is None:
                raise ValueError("a delay queue needs its delay")
            args.update(_dead_letter_to(self.work))
            args["x-message-ttl"] = round(delay_seconds * 1000)
        return args


# A poison message that kills its worker every time is parked after this many deliveries.
DELIVERY_LIMIT = 20
# The parking lot has no dead-letter target, so it must never hit a delivery limit: RabbitMQ 4
# sets 20 by default, and every look at a message in the UI counts as a delivery there.
# (-1, "unlimited" on 4.x, drops the message on its first return on 3.x; this works on both.)
PARKING_DELIVERY_LIMIT = 2**31 - 1


def retry_queue_name(delay_seconds: float) -> str:
    """``cloudamqp.alarms.retry.10s`` / ``….retry.200ms`` (see ``Family.retry_queue``)."""
    return ALARMS.retry_queue(delay_seconds)


def _dead_letter_to(queue: str) -> dict[str, Any]:
    return {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def queue_arguments(name: str, delay_seconds: float | None = None) -> dict[str, Any]:
    """Arguments for one of our queues, alarm or notification."""
    family = NOTIFICATIONS if name.startswith(NOTIFY_QUEUE) else ALARMS
    return family.arguments(name, delay_seconds)


def all_queues(
    retry_delays: tuple[float, ...], notify_delays: tuple[float, ...] = ()
) -> list[tuple[str, dict[str, Any]]]:
    """Every queue of the topology with its arguments, parking lots first."""
    return ALARMS.queues(retry_delays) + (NOTIFICATIONS.queues(notify_delays) if notify_delays else [])


async def declare_topology(
    channel: Any, retry_delays: tuple[float, ...], notify_delays: tuple[float, ...] = ()
) -> None:
    """Declare every queue; safe to call from any number of processes at once. With
    ``notify_delays``, the notification queues too."""
    for name, args in all_queues(retry_delays, notify_delays):
        await channel.declare_queue(name, durable=True, arguments=args)


ALARMS = Family(WORK_QUEUE, DEAD_QUEUE, RETRY_QUEUE_PREFIX, FAST_QUEUE)
NOTIFICATIONS = Family(NOTIFY_QUEUE, NOTIFY_DEAD_QUEUE, NOTIFY_RETRY_QUEUE_PREFIX)
