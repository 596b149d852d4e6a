"""The worker's broker side: consume with manual ack, adapt messages to ``Alarm`` at the edge,
and settle every message in exactly one place (``settle``).

Retries and parking are publish-then-ack with publisher confirms: a crash between the two
leaves a duplicate (which the store recognises), never a lost alarm.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import metrics, topology
from shared.alarm import decode_alarm
from shared.errors import DecodeError
from shared.settings import Settings
from worker.process import Ack, Check, Defer, Follow, Outcome, Park, Processor, Retry, retry_delay

log = structlog.get_logger("worker")

# Headers the broker writes; a copy we publish must not carry stale ones.
_BROKER_HEADERS = (
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-delivery-count",
)


_SETTLED_AS: dict[type, str] = {
    Retry: "retried",
    Defer: "deferred",
    Park: "parked",
    Follow: "check_scheduled",
}


def copy_message(message: AbstractIncomingMessage, **headers: Any) -> aio_pika.Message:
    """The same body and identity, persistent, with our headers updated."""
    merged = {k: v for k, v in (message.headers or {}).items() if k not in _BROKER_HEADERS}
    merged.update(headers)
    return aio_pika.Message(
        body=message.body,
        headers=merged,
        content_type=message.content_type or "application/json",
        message_id=message.message_id,
        timestamp=message.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def failure_outcome(message: AbstractIncomingMessage, exc: BaseException) -> Outcome:
    """An unexpected error (store down, a bug): a durable retry that spends an attempt."""
    headers = message.headers or {}
    try:
        attempts = int(str(headers.get(topology.H_ATTEMPTS, 0))) + 1
    except ValueError:
        attempts = 1
    return Retry(f"internal error: {type(exc).__name__}: {exc}", attempts)


class Consumer:
    def __init__(self, settings: Settings, processor: Processor):
        self.settings = settings
        self.processor = processor
        self.channel: AbstractChannel | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connection: Any = None

    @property
    def consuming(self) -> bool:
        """Connected to the broker and consuming."""
        return self._connection is not None and not self._connection.is_closed

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # The client library cancels its delivery tasks when the connection drops. The work
        # must not be abandoned with it: an upgrade call in flight would go unrecorded and be
        # repeated after the lease. So it runs in a task of ours, shielded; its ack then fails
        # and the broker redelivers, which the store recognises as already processed.
        task = asyncio.ensure_future(self._work(message))
        self._inflight.add(task)
        self._idle.clear()
        task.add_done_callback(self._done)
        await asyncio.shield(task)

    async def _work(self, message: AbstractIncomingMessage) -> None:
        metrics.IN_FLIGHT.inc()
        try:
            await self.settle(message, await self.handle(message))
        finally:
            metrics.IN_FLIGHT.dec()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not self._inflight:
            self._idle.set()

    async def handle(self, message: AbstractIncomingMessage) -> Outcome:
        if (message.headers or {}).get(topology.H_CHECK):
            return await self.handle_check(message)
        try:
            alarm = decode_alarm(message.body, message.headers or {}, message.message_id, time.time())
        except DecodeError as exc:
            log.error("message.undecodable", error=str(exc), message_id=message.message_id)
            return Park(f"cannot decode: {exc}", "decode_error", 0)
        try:
            return await self.processor.process(alarm)
        except Exception as exc:
            log.exception("alarm.processing_failed", event_id=alarm.event_id)
            return failure_outcome(message, exc)

    async def handle_check(self, message: AbstractIncomingMessage) -> Outcome:
        try:
            check = Check.from_json(json.loads(message.body))
        except (ValueError, DecodeError) as exc:
            return Park(f"cannot decode: {exc}", "decode_error", 0)
        try:
            return await self.processor.check(check)
        except Exception as exc:
            log.exception("upgrade.check_error", action_id=check.action_id)
            return failure_outcome(message, exc)

    async def settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        """Ack, or publish to a delay queue or the parking lot and then ack."""
        if isinstance(outcome, Retry) and outcome.attempts >= self.settings.max_attempts:
            outcome = Park(outcome.error, "retries_exhausted", outcome.attempts)
        try:
            if isinstance(outcome, Retry):
                delay = retry_delay(self.settings.retry_delays, outcome.attempts, outcome.retry_after)
                await self._publish(
                    copy_message(message, **{topology.H_ATTEMPTS: outcome.attempts}),
                    topology.retry_queue_name(delay),
                )
                log.info(
                    "message.retry_scheduled",
                    message_id=message.message_id,
                    attempts=outcome.attempts,
                    delay_s=delay,
                )
            elif isinstance(outcome, Defer):
                await self._publish(copy_message(message), topology.retry_queue_name(outcome.delay))
                log.info("message.deferred", message_id=message.message_id, delay_s=outcome.delay)
            elif isinstance(outcome, Follow):
                await self._publish(check_message(outcome.check), topology.retry_queue_name(outcome.delay))
            elif isinstance(outcome, Park):
                await self._publish(copy_message(message, **park_headers(outcome)), topology.DEAD_QUEUE)
                log.error(
                    "message.parked",
                    message_id=message.message_id,
                    status=outcome.status,
                    error=outcome.error,
                    attempts=outcome.attempts,
                )
            if not isinstance(outcome, Ack):
                metrics.MESSAGES.labels(_SETTLED_AS[type(outcome)]).inc()
        except Exception:
            # Not confirmed: hand the message back rather than lose it.
            log.exception("message.settle_failed", message_id=message.message_id)
            await _quietly(message.nack(requeue=True))
            return
        # On a lost channel the ack fails and the broker redelivers: a duplicate, never a loss.
        await _quietly(message.ack())

    async def _publish(self, msg: aio_pika.Message, queue: str) -> None:
        assert self.channel is not None
        await self.channel.default_exchange.publish(msg, routing_key=queue, mandatory=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish in-flight work and return.

        A lost connection (broker restart, network, an operator closing it in the UI) is
        re-opened here, with backoff, and consuming resumes; unacknowledged messages of the
        lost connection are redelivered by the broker, and the store makes that harmless.
        """
        while not stop.is_set():
            connection = await connect_with_backoff(self.settings.rabbitmq_url, stop)
            if connection is None:
                break
            lost = asyncio.Event()
            connection.close_callbacks.add(lambda *_, event=lost: event.set())
            try:
                if await self._consume(connection, stop, lost):
                    break
            finally:
                self._connection = None
                if not connection.is_closed:
                    await connection.close()
        log.info("worker.stopped")

    async def _consume(self, connection: Any, stop: asyncio.Event, lost: asyncio.Event) -> bool:
        """One connection's life; True when stopped on request, False when the connection was lost."""
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.channel = channel
            await channel.set_qos(prefetch_count=self.settings.worker_prefetch)
            await topology.declare_topology(channel, self.settings.retry_delays)
            queue = await channel.get_queue(topology.WORK_QUEUE, ensure=False)
            tag = await queue.consume(self.on_message)
        except Exception as exc:
            log.warning("broker.setup_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        self._connection = connection
        log.info("worker.ready", queue=topology.WORK_QUEUE, prefetch=self.settings.worker_prefetch)
        await _first(stop.wait(), lost.wait())
        if not stop.is_set():
            log.warning("broker.connection_lost", in_flight=len(self._inflight))
            return False
        log.info("worker.stopping", in_flight=len(self._inflight))
        if not lost.is_set():
            await queue.cancel(tag)
        await self._idle.wait()
        return True


async def _quietly(settling: Any) -> None:
    try:
        await settling
    except Exception as exc:
        log.warning("message.settle_lost", error=f"{type(exc).__name__}: {exc}")


async def _first(*waits: Any) -> None:
    """Wait until the first of ``waits`` completes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def check_message(check: Check) -> aio_pika.Message:
    return aio_pika.Message(
        body=json.dumps(check.to_json()).encode(),
        headers={topology.H_CHECK: "1"},
        content_type="application/json",
        message_id=f"check-{check.action_id}-{check.checks}",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def park_headers(outcome: Park) -> dict[str, Any]:
    return {
        topology.H_ERROR: outcome.error[:1000],
        topology.H_ATTEMPTS: outcome.attempts,
        topology.H_STATUS: outcome.status,
        topology.H_FAILED_AT: datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


async def connect_with_backoff(url: str, stop: asyncio.Event) -> Any:
    """A connection, retried with backoff until the broker answers or ``stop`` is set."""
    delay = 0.5
    while not stop.is_set():
        try:
            return await aio_pika.connect(url, timeout=5)
        except Exception as exc:
            log.warning("broker.unavailable", error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
    return None
