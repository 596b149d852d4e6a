"""Publishing accepted alarms: persistent, mandatory, confirmed — or ``BrokerUnavailable``.

The connection is opened lazily and re-opened after any failure, so the receiver recovers by
itself when the broker returns — or, with a cluster's nodes in ``RABBITMQ_URL``, on the next
node that answers (``shared.brokers``). While no node answers, reconnects are attempted at
most once per ``reconnect_interval`` so that requests fail fast with a 503 instead of each
waiting for a connect timeout.

Throughput (docs/benchmarks.md): aio-pika's ``Exchange.publish`` has aiormq hold the channel's
lock until the frame is written to the socket, so under HTTP load each publish queued behind
the previous ones for a few event-loop turns. The publisher hands the frame to aiormq without
waiting for the socket write (``wait=False``) and builds the AMQP properties itself; it still
waits for the broker's confirm, so a 202 still means "the broker has it".
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq import Channel, spec

from shared import brokers, envelope, topology
from shared.errors import BrokerUnavailable

log = structlog.get_logger("shared.publisher")


NACKS_BEFORE_RECONNECT = 3


class Publisher:
    def __init__(
        self,
        url: str,
        retry_delays: tuple[float, ...],
        *,
        connect_timeout: float = 3.0,
        publish_timeout: float = 5.0,
        reconnect_interval: float = 1.0,
    ):
        self._nodes = brokers.Nodes(url)
        self._retry_delays = retry_delays
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._reconnect_interval = reconnect_interval
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._raw: Channel | None = None  # the aiormq channel under ``_channel``
        self._lock = asyncio.Lock()
        self._next_attempt = 0.0
        self._last_error = "not connected yet"
        self._nacks = 0  # negative acknowledgements in a row on this connection

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    @property
    def last_error(self) -> str:
        return self._last_error

    async def _channel_or_raise(self) -> Channel:
        if self._raw is not None and not self._raw.is_closed:
            return self._raw
        async with self._lock:
            if self._raw is not None and not self._raw.is_closed:
                return self._raw
            await self._reset()
            if time.monotonic() < self._next_attempt:
                raise BrokerUnavailable(f"broker unavailable: {self._last_error}")
            try:
                connection = await self._nodes.connect(self._connect_timeout)
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                await topology.declare_topology(channel, self._retry_delays)
                raw = cast(Channel, await channel.get_underlay_channel())
            except Exception as exc:
                self._fail(exc)
                raise BrokerUnavailable(f"broker unavailable: {self._last_error}") from None
            self._connection, self._channel, self._raw = connection, channel, raw
            log.info("broker.connected", node=self._nodes.current)
            return raw

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, brokers.NoNodeAnswered):
            self._last_error = str(exc)  # already "<error>" or "<node>: <error>; …"
        else:
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._next_attempt = time.monotonic() + self._reconnect_interval
        log.warning("broker.unavailable", error=self._last_error)

    async def _reset(self) -> None:
        connection, self._connection, self._channel, self._raw = self._connection, None, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:  # already broken; nothing more to do
                log.debug("broker.close_failed")

    async def publish(
        self, body: bytes, event_id: str, received_at: float, queue: str = topology.WORK_QUEUE
    ) -> None:
        """Return only once the broker has confirmed the message onto ``queue`` (the work
        queue, or the fast lane: ``receiver.lanes``)."""
        channel = await self._channel_or_raise()
        # What aio_pika.Message(...).properties would be, without building the Message.
        properties = spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
            priority=0,
            message_id=event_id,
            timestamp=datetime.fromtimestamp(received_at, tz=UTC),
            headers=envelope.alarm_headers(event_id, received_at),
        )
        await self._send(channel, body, properties, queue)

    async def publish_message(self, message: aio_pika.Message) -> None:
        """Any message of ours (an approval's nudge) onto the work queue, confirmed."""
        await self._send(await self._channel_or_raise(), message.body, message.properties)

    async def _send(
        self,
        channel: Channel,
        body: bytes,
        properties: spec.Basic.Properties,
        queue: str = topology.WORK_QUEUE,
    ) -> None:
        try:
            # The timeout covers the broker's confirm, not only the write.
            await channel.basic_publish(
                body,
                routing_key=queue,
                properties=properties,
                mandatory=True,
                timeout=self._publish_timeout,
                wait=False,
            )
            self._nacks = 0
        except aio_pika.exceptions.DeliveryError as exc:
            # Returned (unroutable) or nacked: the broker did not take it.
            reason = _delivery_reason(exc)
            log.warning("broker.not_confirmed", reason=reason)
            unroutable = reason.startswith("unroutable")
            self._nacks += not unroutable
            # Unroutable: the work queue is gone (deleted by hand?), and a fresh channel declares
            # the topology again. Nacked again and again: the node cannot take it (a cluster
            # node was seen nacking every publish for a minute after the queue's leader was
            # killed), so go to the next node; with one node, a fresh connection to it.
            if unroutable or self._nacks >= NACKS_BEFORE_RECONNECT:
                async with self._lock:
                    if self._raw is channel:
                        self._nacks = 0
                        await self._reset()
            raise BrokerUnavailable(f"broker did not take the message: {reason}") from None
        except Exception as exc:
            self._fail(exc)
            if len(self._nodes.urls) > 1:
                # The connection was lost, not refused: another node may answer at once, so
                # the next request tries them instead of being held back for this one.
                self._next_attempt = 0.0
            async with self._lock:
                if self._raw is channel:
                    await self._reset()
            raise BrokerUnavailable(f"broker unavailable: {self._last_error}") from None

    async def check(self) -> str | None:
        """None when a channel is open (opening one if needed), else why not."""
        try:
            await self._channel_or_raise()
        except BrokerUnavailable as exc:
            return str(exc)
        return None

    async def close(self) -> None:
        async with self._lock:
            await self._reset()


def _delivery_reason(exc: Any) -> str:
    frame = getattr(exc, "frame", None)
    name = type(frame).__name__ if frame is not None else "nack"
    return "unroutable (no queue bound)" if "Return" in name else "negatively acknowledged"
