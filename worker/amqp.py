"""The AMQP plumbing every consumer of ours shares: messages worked on in tasks of our own
(``InFlight``), each settled exactly once (``settle``: the outcome's copy published with a
confirm, then the ack; a message the park path cannot copy parked as it is; ``unhandled``
for a delivery whose handling raised), the connection kept (``connected``: to the next node
that answers, with backoff), and ``first_done``.

``worker.consumer`` (alarms) and ``worker.notify`` (notifications) are built on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from shared import brokers, contract, envelope, metrics, topology
from worker.outcomes import Outcome, Park, Route

log = structlog.get_logger("worker")

UNHANDLED = "unhandled"  # the park status of a message whose handling raised unexpectedly


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


def count(outcome: Outcome) -> None:
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


async def first_done(*waits: Any) -> None:
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
