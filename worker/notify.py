"""Outbound notifications in the worker: the relay and the deliverer, on a connection of
their own so that nothing here can delay, block or repeat an upgrade.

- The **relay** claims unpublished outbox rows (``shared.outbox``; written in the same
  transaction as the change that causes them), publishes one message per endpoint the
  notification is routed to onto ``cloudamqp.notifications`` with publisher confirms, and
  marks the row published. A relay that dies between publishing and marking leaves the row
  to another after its lease: a duplicate message with the same notification id, which the
  deliverer recognises.
- The **deliverer** consumes ``cloudamqp.notifications`` with manual ack: one request to one
  endpoint per message, settled like an alarm (``worker.amqp.settle``: retry through
  ``cloudamqp.notifications.retry.*`` honouring ``Retry-After``, park in
  ``cloudamqp.notifications.dead``). A 410 disables that endpoint (recorded in the store,
  so every worker stops sending to it). The notification id is the ``webhook-id``, stable
  across retries and redeliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import envelope, metrics, outbox, topology
from shared.alarm import iso, parse_timestamp
from shared.errors import DecodeError, RetryableError
from shared.notifications import Endpoint, route
from shared.settings import Settings
from shared.store import Store
from worker import channels
from worker.amqp import InFlight, connected, first_done, settle
from worker.outcomes import DECODE_ERROR, PERMANENT_ERROR, Ack, Outcome, Park, Retries, Retry

log = structlog.get_logger("notify")

PREFETCH = 16  # deliveries in flight per worker
RELAY_POLL_SECONDS = 0.2  # how often the relay looks for new outbox rows
RELAY_BATCH = 100
RELAY_LEASE_SECONDS = 10.0  # a claimed row's lease: another relay publishes it after this
DISABLED_REFRESH_SECONDS = 5.0  # how often endpoints disabled by other workers are re-read
UNKNOWN_ENDPOINT = "unknown_endpoint"


class Notifier:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        endpoints: list[Endpoint],
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.store = store
        self.outbox = store.outbox
        self.endpoints = endpoints
        self.by_id = {e.id: e for e in endpoints}
        self.session = session
        self.clock = clock
        self.retries = Retries.for_notifications(settings)
        self.family = topology.NOTIFICATIONS
        self.channel: AbstractChannel | None = None
        self._disabled: set[str] = set()
        self._disabled_read = 0.0
        self._inflight = InFlight()

    # --- the connection ----------------------------------------------------------------------

    async def run(
        self, stop: asyncio.Event, *, burst: bool = False, upstream: asyncio.Event | None = None
    ) -> None:
        """Relay and deliver until ``stop`` is set. ``burst``: stop by itself once ``upstream``
        (the alarm consumer) is done and the outbox and the notification queues are empty."""

        async def serve(connection: Any, stop: asyncio.Event, lost: asyncio.Event) -> bool:
            return await self._serve(connection, stop, lost, burst, upstream)

        await connected(self.settings.rabbitmq_url, stop, serve)
        log.info("notify.stopped")

    async def _serve(
        self,
        connection: Any,
        stop: asyncio.Event,
        lost: asyncio.Event,
        burst: bool,
        upstream: asyncio.Event | None,
    ) -> bool:
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            self.channel = channel
            await channel.set_qos(prefetch_count=PREFETCH)
            await topology.declare_topology(
                channel, self.settings.delay_queues, self.settings.notify_retry_delays
            )
            queue = await channel.get_queue(topology.NOTIFY_QUEUE, ensure=False)
            tag = await queue.consume(self.on_message)
        except Exception as exc:
            log.warning("notify.setup_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        log.info("notify.ready", endpoints=[e.id for e in self.endpoints])
        relay = asyncio.ensure_future(self._relay(channel, stop))
        waits: list[Any] = [stop.wait(), lost.wait(), relay]
        if burst:
            waits.append(self._until_drained(channel, stop, upstream))
        try:
            await first_done(*waits)
        finally:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await relay
        if not stop.is_set():
            log.warning("notify.connection_lost", in_flight=len(self._inflight))
            return False
        if not lost.is_set():
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        await self._inflight.idle.wait()
        return True

    async def _until_drained(
        self, channel: AbstractChannel, stop: asyncio.Event, upstream: asyncio.Event | None
    ) -> None:
        names = [self.family.work, *(self.family.retry_queue(d) for d in self.settings.notify_retry_delays)]
        quiet = 0
        while quiet < 2:
            await asyncio.sleep(0.05)
            if upstream is not None and not upstream.is_set():
                quiet = 0
                continue
            ready = 0
            for name in names:
                declared = await channel.declare_queue(name, passive=True)
                ready += int(declared.declaration_result.message_count or 0)
            idle = ready == 0 and self._inflight.idle.is_set() and not await self.outbox.pending()
            quiet = quiet + 1 if idle else 0
        log.info("notify.drained")
        stop.set()

    # --- the relay ---------------------------------------------------------------------------

    async def _relay(self, channel: AbstractChannel, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                published = await self.relay_once(channel)
            except Exception as exc:
                # Store or broker away: the rows stay in the outbox (leased), tried again later.
                log.warning("notify.relay_failed", error=f"{type(exc).__name__}: {exc}")
                published = 0
            if not published:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RELAY_POLL_SECONDS)

    async def relay_once(self, channel: AbstractChannel) -> int:
        """Publish one batch of the outbox; how many notifications were published."""
        if not await self.outbox.pending():
            return 0
        rows = await self.outbox.claim(self.clock(), RELAY_LEASE_SECONDS, RELAY_BATCH)
        disabled = await self.disabled()
        # Marked published together, once the broker has confirmed each one's messages: also
        # when a later one fails (it stays leased, and is published again after the lease).
        done: list[tuple[str, list[tuple[str, str]]]] = []
        try:
            for row in rows:
                done.append((row["notification_id"], await self._publish(channel, row, disabled)))
        finally:
            if done:
                await self.outbox.published(done, self.clock())
        for row, (_, sent) in zip(rows, done, strict=False):
            log.info(
                "notification.published",
                notification_id=row["notification_id"],
                type=row["event_type"],
                endpoints=[endpoint_id for endpoint_id, _ in sent],
            )
        return len(rows)

    async def _publish(
        self, channel: AbstractChannel, row: dict[str, Any], disabled: set[str]
    ) -> list[tuple[str, str]]:
        """One message per endpoint the notification goes to, each confirmed by the broker;
        those endpoints (``(id, channel)``)."""
        body = {"type": row["event_type"], "timestamp": _iso(row["created_at"]), "data": outbox.loads(row)}
        targets = [
            e for e in route(self.endpoints, row["event_type"], row["instance_id"]) if e.id not in disabled
        ]
        for endpoint in targets:
            message = envelope.notification_message(row["notification_id"], endpoint.id, body)
            await channel.default_exchange.publish(message, routing_key=self.family.work, mandatory=True)
        return [(e.id, e.kind.value) for e in targets]

    async def disabled(self) -> set[str]:
        """Endpoints that answered 410 (this worker's, and others' as of a few seconds ago)."""
        now = time.monotonic()
        if now - self._disabled_read >= DISABLED_REFRESH_SECONDS:
            self._disabled |= await self.outbox.disabled()
            self._disabled_read = now
        return self._disabled

    # --- the deliverer -----------------------------------------------------------------------

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await self._inflight.run(self._work(message))

    async def _work(self, message: AbstractIncomingMessage) -> None:
        try:
            outcome = await self.handle(message)
        except Exception as exc:
            log.exception("notification.handling_failed", message_id=message.message_id)
            attempts = envelope.attempts(message.headers or {}) + 1
            outcome = self.retries.after_failure(f"internal error: {type(exc).__name__}", attempts)
        assert self.channel is not None
        await settle(self.channel, message, outcome, self.family)

    async def handle(self, message: AbstractIncomingMessage) -> Outcome:
        try:
            delivery = envelope.decode_delivery(message.body, message.headers or {})
        except DecodeError as exc:
            log.error("notification.undecodable", error=str(exc), message_id=message.message_id)
            return Park(f"cannot decode: {exc}", DECODE_ERROR, 0)
        endpoint = self.by_id.get(delivery.endpoint)
        bound = log.bind(
            notification_id=delivery.notification_id,
            type=delivery.body.get("type"),
            endpoint=delivery.endpoint,
            attempt=delivery.attempts + 1,
        )
        if endpoint is None:
            bound.error("notification.unknown_endpoint")
            return Park("the endpoint is no longer configured", UNKNOWN_ENDPOINT, delivery.attempts)
        if await self.outbox.delivered(delivery.notification_id, endpoint.id):
            bound.info("notification.already_delivered")
            return Ack()
        if endpoint.id in await self.disabled():
            await self._record(delivery, endpoint, outbox.DISABLED, error="endpoint disabled (410 Gone)")
            bound.info("notification.endpoint_disabled_skip")
            return Ack()
        return await self._deliver(delivery, endpoint, bound)

    async def _deliver(self, delivery: envelope.Delivery, endpoint: Endpoint, bound: Any) -> Outcome:
        attempts = delivery.attempts + 1
        kind = endpoint.kind.value
        request = channels.build(
            endpoint, delivery.notification_id, delivery.body, self.clock(), self.settings.public_url
        )
        try:
            answer = await channels.send(self.session, request, self.settings.notify_timeout_seconds)
        except RetryableError as exc:
            return await self._failed(
                delivery, endpoint, bound, str(exc), self.retries.after_failure(str(exc), attempts)
            )
        metrics.NOTIFY_REQUEST_SECONDS.labels(kind).observe(answer.seconds)
        result = channels.verdict(answer.status)
        if result is channels.Verdict.DELIVERED:
            return await self._delivered(delivery, endpoint, bound, answer)
        error = f"{kind} answered {answer.status}"
        if result is channels.Verdict.GONE:
            await self.outbox.disable(endpoint.id, kind, error, self.clock())
            self._disabled.add(endpoint.id)
            await self._record(delivery, endpoint, outbox.DISABLED, error=error)
            metrics.NOTIFY_DISABLED.labels(kind, endpoint.id).inc()
            bound.warning("notification.endpoint_disabled", detail=f"{error}: no more notifications to it")
            return Ack()
        if result is channels.Verdict.RETRY:
            outcome = self.retries.after_failure(error, attempts, answer.retry_after)
        else:
            outcome = Park(error, PERMANENT_ERROR, attempts)
        return await self._failed(delivery, endpoint, bound, error, outcome)

    async def _delivered(
        self, delivery: envelope.Delivery, endpoint: Endpoint, bound: Any, answer: channels.Answer
    ) -> Outcome:
        kind = endpoint.kind.value
        await self._record(delivery, endpoint, outbox.DELIVERED, latency_ms=answer.seconds * 1000)
        metrics.NOTIFY_SENT.labels(kind).inc()
        created = _epoch(delivery.body.get("timestamp"))
        if created is not None:
            metrics.NOTIFY_LATENCY.labels(kind).observe(max(self.clock() - created, 0.0))
        bound.info("notification.delivered", status=answer.status, seconds=round(answer.seconds, 3))
        return Ack()

    async def _failed(
        self, delivery: envelope.Delivery, endpoint: Endpoint, bound: Any, error: str, outcome: Retry | Park
    ) -> Outcome:
        kind = endpoint.kind.value
        metrics.NOTIFY_FAILED.labels(kind).inc()
        status = outbox.PARKED if isinstance(outcome, Park) else outbox.RETRYING
        if isinstance(outcome, Park):
            metrics.NOTIFY_PARKED.labels(kind).inc()
        await self._record(delivery, endpoint, status, error=error)
        bound.warning("notification.failed", error=error, then=status)
        return outcome

    async def _record(
        self, delivery: envelope.Delivery, endpoint: Endpoint, status: str, **fields: Any
    ) -> None:
        await self.outbox.record(
            delivery.notification_id,
            endpoint.id,
            endpoint.kind.value,
            status,
            attempts=delivery.attempts + (0 if status == outbox.DISABLED else 1),
            now=self.clock(),
            **fields,
        )


def _iso(ts: float) -> str | None:
    return iso(float(ts))


def _epoch(value: Any) -> float | None:
    try:
        return parse_timestamp(value) if value is not None else None
    except ValueError:
        return None
