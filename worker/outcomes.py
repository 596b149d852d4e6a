"""How a message is settled, and the retry policy that decides when to try again or give up.

An ``Outcome`` says what becomes of the message that was processed (an alarm, or a
notification on its way to one endpoint: ``route`` takes the queue family): acknowledged, sent through
a delay queue (a retry that spends an attempt, a deferral that does not, or a follow-up check
of an accepted upgrade), or parked with an explanation. ``Retries`` owns the delays and the
attempt limit; ``Consumer.settle`` carries the outcome out (publish, then ack) and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage

from shared import envelope, topology
from shared.envelope import AnyCheck
from shared.settings import Settings

log = structlog.get_logger("worker")

RETRIES_EXHAUSTED = "retries_exhausted"
PERMANENT_ERROR = "permanent_error"
DECODE_ERROR = "decode_error"


@dataclass(frozen=True)
class Route:
    """Where a settled message goes before it is acknowledged."""

    queue: str
    message: aio_pika.Message


@dataclass(frozen=True)
class Ack:
    """Done (whatever was decided): acknowledge."""

    label: ClassVar[str | None] = None

    def route(
        self, message: AbstractIncomingMessage, now: float, family: topology.Family = topology.ALARMS
    ) -> Route | None:
        return None

    def announce(self, message: AbstractIncomingMessage) -> None:
        """Nothing to say: the decision's own log line said it."""


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay`` through a delay queue; ``attempts`` is the count after this one."""

    error: str
    attempts: int
    delay: float
    label: ClassVar[str | None] = "retried"

    def route(
        self, message: AbstractIncomingMessage, now: float, family: topology.Family = topology.ALARMS
    ) -> Route | None:
        copy = envelope.retry_copy(message, self.attempts)
        return Route(family.retry_queue(self.delay), copy)

    def announce(self, message: AbstractIncomingMessage) -> None:
        log.info(
            "message.retry_scheduled",
            message_id=message.message_id,
            attempts=self.attempts,
            delay_s=self.delay,
        )


@dataclass(frozen=True)
class Defer:
    """Wait in a delay queue without spending an attempt: another worker holds the claim, or
    CloudAMQP is busy configuring the instance (since ``busy_since``)."""

    delay: float
    reason: str
    busy_since: float | None = None
    label: ClassVar[str | None] = "deferred"

    def route(
        self, message: AbstractIncomingMessage, now: float, family: topology.Family = topology.ALARMS
    ) -> Route | None:
        return Route(family.retry_queue(self.delay), envelope.retry_copy(message, busy_from=self.busy_since))

    def announce(self, message: AbstractIncomingMessage) -> None:
        log.info("message.deferred", message_id=message.message_id, delay_s=self.delay)


@dataclass(frozen=True)
class Park:
    """Give up: move to the parking lot with an explanation."""

    error: str
    status: str
    attempts: int
    label: ClassVar[str | None] = "parked"

    def route(
        self, message: AbstractIncomingMessage, now: float, family: topology.Family = topology.ALARMS
    ) -> Route | None:
        copy = envelope.park_copy(message, self.error, self.status, self.attempts, now)
        return Route(family.dead, copy)

    def announce(self, message: AbstractIncomingMessage) -> None:
        log.error(
            "message.parked",
            message_id=message.message_id,
            status=self.status,
            error=self.error,
            attempts=self.attempts,
        )


@dataclass(frozen=True)
class Follow:
    """Acknowledge, and send ``check`` through a delay queue of ``delay`` seconds."""

    check: AnyCheck
    delay: float
    label: ClassVar[str | None] = "check_scheduled"

    def route(
        self, message: AbstractIncomingMessage, now: float, family: topology.Family = topology.ALARMS
    ) -> Route | None:
        return Route(topology.retry_queue_name(self.delay), envelope.check_message(self.check))

    def announce(self, message: AbstractIncomingMessage) -> None:
        """The processor logged the check it scheduled."""


Outcome = Ack | Retry | Defer | Park | Follow


def defer_delay(retry_delays: tuple[float, ...], wait: float) -> float:
    """The longest delay queue that does not overshoot ``wait``, else the shortest one."""
    fitting = [d for d in retry_delays if d <= wait]
    return max(fitting) if fitting else min(retry_delays)


def retry_delay(
    retry_delays: tuple[float, ...], attempts: int, retry_after: float | None, max_delay: float | None = None
) -> float:
    """Delay before the next attempt: the configured one for this attempt (no longer than
    ``max_delay`` where one is given: the longest delay queue within it), or the shortest
    configured delay that honours ``Retry-After`` (the longest when none is long enough)."""
    base = retry_delays[min(max(attempts, 1), len(retry_delays)) - 1]
    if retry_after is None and max_delay is not None and base > max_delay:
        return defer_delay(retry_delays, max_delay)
    if retry_after is None or retry_after <= base:
        return base
    longer = [d for d in retry_delays if d >= retry_after]
    return min(longer) if longer else max(retry_delays)


@dataclass(frozen=True)
class Retries:
    """The retry policy: ``RETRY_DELAYS`` (only these delay queues exist) and ``MAX_ATTEMPTS``."""

    delays: tuple[float, ...]
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Retries:
        return cls(settings.retry_delays, settings.max_attempts)

    @classmethod
    def for_notifications(cls, settings: Settings) -> Retries:
        """``NOTIFY_RETRY_DELAYS`` and ``NOTIFY_MAX_ATTEMPTS``: a receiver may be down far longer
        than the CloudAMQP API is allowed to be."""
        return cls(settings.notify_retry_delays, settings.notify_max_attempts)

    def exhausted(self, attempts: int) -> bool:
        """No attempt is left after ``attempts`` of them."""
        return attempts >= self.max_attempts

    def after_failure(
        self, error: str, attempts: int, retry_after: float | None = None, max_delay: float | None = None
    ) -> Retry | Park:
        """A retryable failure of attempt ``attempts``: try again later, or park when none is left."""
        if self.exhausted(attempts):
            return Park(error, RETRIES_EXHAUSTED, attempts)
        return Retry(error, attempts, retry_delay(self.delays, attempts, retry_after, max_delay))

    def again(self, error: str, attempts: int) -> Retry:
        """A retry that is never parked: for a check message, whose look is harmless to repeat
        and whose loss would leave an approval or a confirmation open for good."""
        return Retry(error, attempts, retry_delay(self.delays, attempts, None))

    def defer(self, wait: float, reason: str) -> Defer:
        return Defer(defer_delay(self.delays, wait), reason)

    @property
    def check_interval(self) -> float:
        """Seconds between plan reads while an upgrade runs at CloudAMQP (about a minute)."""
        return defer_delay(self.delays, 60.0)
