"""The worker's alarm consumer: consume the fast lane and the work queue with manual ack,
adapt messages to ``Alarm`` at the edge, and settle every one exactly once
(``worker.amqp.settle``, which ``worker.notify`` settles notifications with too).

Retries and parking are publish-then-ack with publisher confirms: a crash between the two
leaves a duplicate (which the store recognises), never a lost alarm.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import envelope, metrics, topology
from shared.errors import DecodeError
from shared.notifications import alarm_data, parked_notice
from shared.settings import Settings
from worker.amqp import InFlight, connected, count, first_done, settle, unhandled
from worker.batch import FirstSteps
from worker.outcomes import DECODE_ERROR, Outcome, Park, Retries
from worker.process import Processor

log = structlog.get_logger("worker")

DRAIN_POLL_SECONDS = 0.05  # how often a burst worker looks whether its queues are empty


def failure_outcome(retries: Retries, message: AbstractIncomingMessage, exc: BaseException) -> Outcome:
    """An unexpected error (store down, a bug): a durable retry that spends an attempt."""
    attempts = envelope.attempts(message.headers or {}) + 1
    return retries.after_failure(f"internal error: {type(exc).__name__}: {exc}", attempts)


class Consumer:
    def __init__(self, settings: Settings, processor: Processor):
        self.settings = settings
        self.processor = processor
        self.channel: AbstractChannel | None = None
        self._inflight = InFlight()
        self._first_steps = FirstSteps(processor, settings.worker_batch, lambda: len(self._inflight))
        self._connection: Any = None
        self._burst = False

    @property
    def consuming(self) -> bool:
        """Connected to the broker and consuming."""
        return self._connection is not None and not self._connection.is_closed

    @property
    def in_flight(self) -> int:
        """Messages being worked on now."""
        return len(self._inflight)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await self._inflight.run(self._work(message, first=False))

    async def on_fast(self, message: AbstractIncomingMessage) -> None:
        """A delivery from the fast lane: decided before what came from the work queue."""
        await self._inflight.run(self._work(message, first=True))

    async def _work(self, message: AbstractIncomingMessage, *, first: bool) -> None:
        metrics.IN_FLIGHT.inc()
        try:
            try:
                outcome: Outcome = await self.handle(message, first=first)
            except Exception as exc:
                outcome = unhandled(message, exc)
            await self.settle(message, outcome)
        finally:
            metrics.IN_FLIGHT.dec()

    async def handle(self, message: AbstractIncomingMessage, *, first: bool = False) -> Outcome:
        headers = message.headers or {}
        if envelope.is_check(headers):
            return await self.handle_check(message)
        try:
            alarm = envelope.decode_alarm(message.body, headers, message.message_id, time.time())
        except DecodeError as exc:
            log.error("message.undecodable", error=str(exc), message_id=message.message_id)
            return Park(f"cannot decode: {exc}", DECODE_ERROR, 0)
        try:
            then = await self._first_steps.take(alarm, first=first)
            return await then()
        except Exception as exc:
            log.exception("alarm.processing_failed", event_id=alarm.event_id)
            return failure_outcome(self.processor.retries, message, exc)

    async def handle_check(self, message: AbstractIncomingMessage) -> Outcome:
        try:
            check = envelope.decode_check(message.body, message.headers)
        except DecodeError as exc:
            return Park(f"cannot decode: {exc}", DECODE_ERROR, 0)
        try:
            return await self.processor.follow_up(check)
        except Exception as exc:
            log.exception("upgrade.check_error", action_id=check.action_id)
            attempts = envelope.attempts(message.headers or {}) + 1
            return self.processor.retries.again(f"internal error: {type(exc).__name__}: {exc}", attempts)

    async def settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        """The one place an alarm (or check) message is settled (see ``settle``); a parked one
        writes its ``alarm.parked`` notification first."""
        assert self.channel is not None
        if isinstance(outcome, Park):
            await self._notify_parked(message, outcome)
        await settle(self.channel, message, outcome, count=count)

    async def _notify_parked(self, message: AbstractIncomingMessage, park: Park) -> None:
        """Write ``alarm.parked`` to the outbox before the message moves. Parking does not
        depend on it: when the store cannot take it, the park goes ahead and the loss is
        logged (handing the message back instead could lose the park itself: a redelivery
        finds its action already recorded as failed and is acknowledged, not parked)."""
        headers = message.headers or {}
        try:
            alarm = envelope.decode_alarm(message.body, headers, message.message_id, time.time())
            alarm_info: dict[str, Any] | None = alarm_data(alarm)
        except Exception:  # not an alarm (or not a readable one): the notice says so
            alarm_info = None
        message_id = envelope.identifier(message.message_id) or envelope.event_id_of(headers) or "unknown"
        # One notification per parking of a message: a replay that is parked again is news.
        key = f"{message_id}|{envelope.replayed_at(headers) or ''}"
        notice = parked_notice(message_id, park.status, park.error, park.attempts, alarm_info)
        try:
            await self.processor.store.notify(replace(notice, key=key))
        except Exception as exc:
            log.error(
                "notification.not_recorded", type=notice.type.value, error=f"{type(exc).__name__}: {exc}"
            )

    async def run(self, stop: asyncio.Event, *, burst: bool = False) -> None:
        """Consume until ``stop`` is set, then finish in-flight work and return.

        A lost connection (broker restart, network, an operator closing it in the UI) is
        re-opened here, with backoff, and consuming resumes; unacknowledged messages of the
        lost connection are redelivered by the broker, and the store makes that harmless.

        ``burst``: stop by itself once the work queue and its delay queues are empty and no
        message is in flight (``python -m worker --burst``; the in-process tests use it).
        """
        self._burst = burst
        try:
            await connected(self.settings.rabbitmq_url, stop, self._consume)
        finally:
            self._connection = None
        log.info("worker.stopped")

    async def _consume(self, connection: Any, stop: asyncio.Event, lost: asyncio.Event) -> bool:
        """One connection's life; True when stopped on request, False when the connection was lost."""
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.channel = channel
            await channel.set_qos(prefetch_count=self.settings.worker_prefetch)
            await topology.declare_topology(channel, self.settings.delay_queues)
            # The fast lane: with a prefetch of its own (per consumer), so that what arrives
            # there is delivered at once, however long the work queue; consumed first, so that
            # a worker starting on a backlog takes it before a prefetch of the work queue.
            fast = await channel.get_queue(topology.FAST_QUEUE, ensure=False)
            fast_tag = await fast.consume(self.on_fast)
            queue = await channel.get_queue(topology.WORK_QUEUE, ensure=False)
            tag = await queue.consume(self.on_message)
        except Exception as exc:
            log.warning("broker.setup_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._connection = connection
        log.info("worker.ready", queue=topology.WORK_QUEUE, prefetch=self.settings.worker_prefetch)
        waits: list[Coroutine[Any, Any, Any]] = [stop.wait(), lost.wait()]
        if self._burst:
            waits.append(self._until_drained(channel, stop))
        await first_done(*waits)
        if not stop.is_set():
            log.warning("broker.connection_lost", in_flight=len(self._inflight))
            return False
        log.info("worker.stopping", in_flight=len(self._inflight))
        if not lost.is_set():
            await queue.cancel(tag)
            await fast.cancel(fast_tag)
        await self._inflight.idle.wait()
        return True

    async def _until_drained(self, channel: AbstractChannel, stop: asyncio.Event) -> None:
        """Set ``stop`` once nothing is ready in our queues and nothing is in flight, seen
        twice in a row (a message on its way to us is in neither count for a moment)."""
        names = [
            topology.WORK_QUEUE,
            topology.FAST_QUEUE,
            *(topology.retry_queue_name(d) for d in self.settings.delay_queues),
        ]
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(DRAIN_POLL_SECONDS)
            ready = 0
            for name in names:
                declared = await channel.declare_queue(name, passive=True)
                ready += int(declared.declaration_result.message_count or 0)
            quiet = quiet + 1 if ready == 0 and self._inflight.idle.is_set() else 0
        log.info("worker.drained")
        stop.set()
