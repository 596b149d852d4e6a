"""The worker's broker side: consume with manual ack, adapt messages to ``Alarm`` at the edge,
and settle every message in exactly one place (``settle``).

Retries and parking are publish-then-ack with publisher confirms: a crash between the two
leaves a duplicate (which the store recognises), never a lost alarm. The module-level
``settle`` does this for any queue family; ``worker.notify`` settles notifications with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import brokers, contract, envelope, metrics, topology
from shared.errors import DecodeError
from shared.notifications import alarm_data, parked_notice
from shared.settings import Settings
from worker.batch import FirstSteps
from worker.outcomes import DECODE_ERROR, Outcome, Park, Retries, Route
from worker.process import Processor

log = structlog.get_logger("worker")

UNHANDLED = "unhandled"  # the park status of a message whose handling raised unexpectedly
DRAIN_POLL_SECONDS = 0.05  # how often a burst worker looks whether its queues are empty


def failure_outcome(retries: Retries, message: AbstractIncomingMessage, exc: BaseException) -> Outcome:
    """An unexpected error (store down, a bug): a durable retry that spends an attempt."""
    attempts = envelope.attempts(message.headers or {}) + 1
    return retries.after_failure(f"internal error: {type(exc).__name__}: {exc}", attempts)


def unhandled(message: AbstractIncomingMessage, exc: BaseException, queue: str = topology.WORK_QUEUE) -> Park:
    """A delivery whose handling raised where nothing expected it (its headers, its body, a
    bug): parked at once with the exception's type and text, counted and logged with the
    event id, so that it can never stay unacknowledged and hold a prefetch slot for good."""
    error = f"could not be handled: {type(exc).__name__}: {_short(exc)}"
    metrics.UNHANDLED.labels(queue).inc()
    log.error(
        "message.unhandled",
        event_id=envelope.event_id_of(message.headers or {}),
        message_id=envelope.identifier(message.message_id),
        queue=queue,
        error=error,
        exc_info=exc,
    )
    return Park(error, UNHANDLED, envelope.attempts(message.headers or {}))


def _short(exc: BaseException) -> str:
    try:
        return contract.shown_text(str(exc).encode("utf-8", "replace"), 300)
    except Exception:
        return "(its text cannot be shown)"


class InFlight:
    """The messages being worked on, each in a task of ours, shielded.

    The client library cancels its delivery tasks when the connection drops. The work must not
    be abandoned with it: an upgrade call in flight would go unrecorded and be repeated after
    the lease. So it runs in a task of ours; its ack then fails and the broker redelivers,
    which the store recognises as already processed. ``idle`` is set while nothing runs."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def __len__(self) -> int:
        return len(self.tasks)

    async def run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        self.idle.clear()
        task.add_done_callback(self._done)
        await asyncio.shield(task)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.idle.set()


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
        await settle(self.channel, message, outcome, count=_count)

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
        await _first(*waits)
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


def _count(outcome: Outcome) -> None:
    if outcome.label is not None:
        metrics.MESSAGES.labels(outcome.label).inc()


async def settle(
    channel: AbstractChannel,
    message: AbstractIncomingMessage,
    outcome: Outcome,
    family: topology.Family = topology.ALARMS,
    count: Callable[[Outcome], None] | None = None,
) -> None:
    """Settle a message of ``family``: publish its outcome's copy (to a delay queue or the
    parking lot) with a confirm, then ack. Not confirmed: nack with requeue, never a loss."""
    try:
        route = _route(message, outcome, family)
        if route is not None:
            await channel.default_exchange.publish(route.message, routing_key=route.queue, mandatory=True)
            outcome.announce(message)
        if count is not None:
            count(outcome)
    except Exception:
        # Not confirmed: hand the message back rather than lose it.
        log.exception("message.settle_failed", message_id=message.message_id)
        await _quietly(message.nack(requeue=True))
        return
    # On a lost channel the ack fails and the broker redelivers: a duplicate, never a loss.
    await _quietly(message.ack())


def _route(message: AbstractIncomingMessage, outcome: Outcome, family: topology.Family) -> Route | None:
    """The outcome's copy; when this message's own headers or properties cannot be copied, it is
    parked as it is with them shown as text: the park path never fails on what a message holds."""
    now = time.time()
    try:
        route = outcome.route(message, now, family)
        if route is None or envelope.encodable(route.message):
            return route
        problem = "its headers cannot be copied"
    except Exception as exc:
        problem = f"its copy cannot be built: {type(exc).__name__}"
    if isinstance(outcome, Park):
        error, status, attempts = outcome.error, outcome.status, outcome.attempts
    else:
        error, status = f"could not be handled: {problem}", UNHANDLED
        attempts = envelope.attempts(message.headers or {})
    log.error("message.parked_plain", message_id=envelope.identifier(message.message_id), problem=problem)
    return Route(family.dead, envelope.plain_park_copy(message, error, status, attempts, now))


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


async def connected(
    url: str, stop: asyncio.Event, serve: Callable[[Any, asyncio.Event, asyncio.Event], Awaitable[bool]]
) -> None:
    """Run ``serve(connection, stop, lost)`` on a connection to ``url`` (``RABBITMQ_URL``:
    one node or a cluster's), again on a new one each time the connection is lost — to the
    next node that answers — until ``serve`` says it stopped on request (True) or ``stop``
    is set while no broker answers."""
    nodes = brokers.Nodes(url)
    while not stop.is_set():
        connection = await connect_with_backoff(nodes, stop)
        if connection is None:
            return
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_, event=lost: event.set())
        try:
            if await serve(connection, stop, lost):
                return
        finally:
            if not connection.is_closed:
                await connection.close()


async def connect_with_backoff(nodes: brokers.Nodes, stop: asyncio.Event) -> Any:
    """A connection, retried with backoff until a node answers or ``stop`` is set; every
    node is tried before each wait."""
    delay = 0.5
    while not stop.is_set():
        try:
            connection = await nodes.connect(node_timeout=5)
        except Exception as exc:
            error = str(exc) if isinstance(exc, brokers.NoNodeAnswered) else f"{type(exc).__name__}: {exc}"
            log.warning("broker.unavailable", error=error, retry_in_s=delay)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
        else:
            log.info("broker.connected", node=nodes.current)
            return connection
    return None
