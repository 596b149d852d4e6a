"""``python -m shared.dlq`` (``autopilot-dlq``): read, show, replay and purge the parking lot.

Subcommands: ``list``, ``show ID``, ``replay ID… | --all``, ``purge [--yes]``. An ID is a
message's ``message_id`` (the receiver's event id, also in ``x-autopilot-event-id``); a message
that has neither (published by hand) is named ``body-`` plus a hash of its body.

Reading never removes anything. RabbitMQ has no "peek", so a scan takes messages with
``basic.get`` in manual-ack mode and *holds* every one of them unacknowledged until it is
done: a held message is not handed out again, so each message is seen exactly once and in
queue order. When the scan ends (or the process dies, or the connection drops) the broker gets
every held message back, in the order read (``basic.nack`` with requeue; ``nack`` rather than
``reject`` because RabbitMQ 4.3+ counts a reject against a quorum queue's delivery limit). A
scan takes at most as many messages as the queue held when it started, so messages parked
meanwhile (a replayed alarm that fails again) are not read twice. Messages that another reader
holds at that moment (the management UI mid-"Get") are not seen by this scan.

Replay publishes a copy to ``cloudamqp.alarms`` — persistent, with publisher confirms, a fresh
attempt count and ``x-autopilot-replayed`` — and acknowledges the parked message only after
the broker confirmed the copy: a crash in between leaves a duplicate (which the cooldown claim
turns into a recorded skip), never a lost alarm.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from shared import brokers, contract, envelope, topology
from shared.alarm import iso
from shared.errors import BrokerUnavailable
from shared.runtime import load_settings_or_exit
from shared.settings import Settings

PROGRAM = "autopilot-dlq"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_ERROR_WIDTH = 70


# --- pure helpers ------------------------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """An AMQP header value as something ``json.dumps`` accepts."""
    if isinstance(value, bytes | bytearray):
        return contract.shown_text(bytes(value), 1000)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, str):
        return contract.shown_text(value.encode("utf-8", "replace"), 1000)
    if isinstance(value, Mapping):
        return {str(json_safe(str(k))): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def message_ref(message_id: str | None, headers: Mapping[str, Any], body: bytes) -> str:
    """The ID an operator types: message id, else our event-id header, else a body hash."""
    event_id = json_safe(headers.get(envelope.H_EVENT_ID))
    if message_id:
        return message_id
    if isinstance(event_id, str) and event_id:
        return event_id
    return f"body-{hashlib.sha256(body).hexdigest()[:16]}"


def parse_body(body: bytes) -> Any:
    """The body as JSON, or None when it is not JSON that can be shown as JSON (any bytes at
    all may be parked: nesting past any parser's depth, 5,000-digit numbers, lone surrogates)."""
    return contract.readable(body)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def alarm_summary(parsed: Any) -> tuple[str, str]:
    """(instance, "alarm_type value") of a parked body, ``-`` where unknown."""
    if not isinstance(parsed, dict):
        return "-", "(not an alarm)"
    instance = parsed.get("instance_id")
    kind = parsed.get("alarm_type") or parsed.get("message") or "?"
    value = parsed.get("value")
    alarm = str(kind) if value is None else f"{kind} {value}"
    return (str(instance) if instance else "-"), _one_line(alarm, 30)


@dataclass(frozen=True)
class Row:
    failed_at: str
    ref: str
    instance: str
    alarm: str
    attempts: str
    status: str
    error: str


COLUMNS = ("FAILED AT", "ID", "INSTANCE", "ALARM", "ATTEMPTS", "STATUS", "ERROR")


def summary_row(ref: str, headers: Mapping[str, Any], body: bytes) -> Row:
    """One line of ``list`` for a parked message."""

    def header(name: str) -> str:
        value = json_safe(headers.get(name))
        return "-" if value is None or value == "" else str(value)

    instance, alarm = alarm_summary(parse_body(body))
    status = header(envelope.H_STATUS)
    if status == "-" and headers.get("x-first-death-reason"):
        # Dead-lettered by the broker itself (the work queue's delivery limit), not parked by us.
        status = f"broker:{header('x-first-death-reason')}"
    return Row(
        failed_at=header(envelope.H_FAILED_AT),
        ref=ref,
        instance=instance,
        alarm=alarm,
        attempts=header(envelope.H_ATTEMPTS),
        status=status,
        error=_one_line(header(envelope.H_ERROR), _ERROR_WIDTH),
    )


def render_table(rows: Sequence[Row]) -> str:
    """Rows as aligned text columns under a header line."""
    cells = [COLUMNS] + [
        (r.failed_at, r.ref, r.instance, r.alarm, r.attempts, r.status, r.error) for r in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def describe(ref: str, message_id: str | None, headers: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """What ``show`` prints: identity, headers, and the original body (as JSON when it is)."""
    out: dict[str, Any] = {
        "id": ref,
        "queue": topology.DEAD_QUEUE,
        "message_id": message_id,
        "headers": json_safe(dict(headers)),
    }
    parsed = parse_body(body)
    if parsed is None and body.strip() != b"null":
        out["body_text"] = contract.shown_text(body)
    else:
        out["body"] = parsed
    return out


def _ref(message: AbstractIncomingMessage) -> str:
    return message_ref(message.message_id, message.headers or {}, message.body)


def _names(message: AbstractIncomingMessage) -> set[str]:
    """Every ID the operator may have copied for this message (UI, list, receiver's 202)."""
    event_id = json_safe((message.headers or {}).get(envelope.H_EVENT_ID))
    names = {_ref(message), message.message_id, event_id if isinstance(event_id, str) else None}
    return {name for name in names if name}


# --- the broker side ---------------------------------------------------------------------------


class Scan:
    """Parked messages taken one by one and held unacknowledged until ``give_back``."""

    def __init__(self, queue: AbstractQueue, budget: int):
        self._queue = queue
        self._budget = budget
        self.taken: list[AbstractIncomingMessage] = []

    def __aiter__(self) -> Scan:
        return self

    async def __anext__(self) -> AbstractIncomingMessage:
        if self._budget <= 0:
            raise StopAsyncIteration
        message = await self._queue.get(no_ack=False, fail=False, timeout=10)
        if message is None:
            raise StopAsyncIteration
        self._budget -= 1
        self.taken.append(message)
        return message

    async def give_back(self) -> None:
        """Requeue every message this scan holds and has not settled."""
        for message in self.taken:
            if message.processed:
                continue
            try:
                await message.nack(requeue=True)
            except aio_pika.exceptions.AMQPError:
                # The channel is gone; the broker requeues whatever it still held.
                return


class ParkingLot:
    """The dead-letter queue and the work queue, over one confirmed channel."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue):
        self._channel = channel
        self._queue = queue

    async def count(self) -> int:
        """Messages ready in the parking lot now (held ones are not counted by RabbitMQ)."""
        result = await self._queue.declare()
        return int(result.message_count or 0)

    @asynccontextmanager
    async def scan(self) -> AsyncIterator[Scan]:
        """Hold what is read; hand it back at the end, whatever happens.

        Every scan reads the whole queue: handing back only a prefix would move that prefix
        behind the rest (RabbitMQ 3.x requeues to the back of a quorum queue without a limit).
        """
        scan = Scan(self._queue, await self.count())
        try:
            yield scan
        finally:
            await scan.give_back()

    async def replay(self, message: AbstractIncomingMessage, replayed_at: str) -> None:
        """Publish a fresh copy to the work queue; ack the parked one once it is confirmed."""
        copy = envelope.replay_copy(message, replayed_at)
        try:
            await self._channel.default_exchange.publish(
                copy, routing_key=topology.WORK_QUEUE, mandatory=True, timeout=10
            )
        except Exception as exc:
            why = f"{_ref(message)}: {type(exc).__name__}: {exc}"
            raise BrokerUnavailable(f"the broker did not confirm the replay of {why}") from exc
        await message.ack()

    async def replay_matching(self, wanted: set[str] | None, replayed_at: str) -> tuple[list[str], set[str]]:
        """Replay every parked message named in ``wanted`` (None: every one); the refs replayed
        and the names of ``wanted`` that were found."""
        replayed: list[str] = []
        found: set[str] = set()
        async with self.scan() as scan:
            async for message in scan:
                matched = _names(message) & wanted if wanted is not None else set()
                if wanted is not None and not matched:
                    continue  # held until the scan ends, so the next get moves on
                await self.replay(message, replayed_at)
                replayed.append(_ref(message))
                found |= matched
        return replayed, found

    async def purge(self) -> int:
        result = await self._queue.purge(timeout=10)
        return int(getattr(result, "message_count", 0) or 0)


async def _declare(channel: AbstractChannel, name: str) -> AbstractQueue:
    return await channel.declare_queue(name, durable=True, arguments=topology.queue_arguments(name))


@asynccontextmanager
async def open_parking_lot(settings: Settings) -> AsyncIterator[ParkingLot]:
    """Connect, declare the two queues this tool touches (idempotent), yield the parking lot.

    Only those two: an operator running this with default settings must not leave delay
    queues for the default ``RETRY_DELAYS`` behind on a broker whose workers use others.
    """
    try:
        connection = await brokers.connect(settings.rabbitmq_url, node_timeout=10)
    except Exception as exc:
        where, why = brokers.redact_urls(settings.rabbitmq_url), str(exc) or type(exc).__name__
        raise BrokerUnavailable(f"cannot connect to RabbitMQ at {where}: {why}") from exc
    try:
        yield await parking_lot_on(await connection.channel(publisher_confirms=True, on_return_raises=True))
    finally:
        await connection.close()


async def parking_lot_on(channel: AbstractChannel) -> ParkingLot:
    """The parking lot over a confirming channel the caller owns (the receiver's console keeps
    one connection open instead of connecting per page)."""
    queue = await _declare(channel, topology.DEAD_QUEUE)
    await _declare(channel, topology.WORK_QUEUE)
    return ParkingLot(channel, queue)


# --- commands ----------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(f"{PROGRAM}: {text}", file=sys.stderr, flush=True)


async def cmd_list(lot: ParkingLot, args: argparse.Namespace) -> int:
    rows: list[Row] = []
    async with lot.scan() as scan:
        async for message in scan:
            rows.append(summary_row(_ref(message), message.headers or {}, message.body))
    if getattr(args, "json", False):
        _say(json.dumps([asdict(row) for row in rows], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        _say(f"{topology.DEAD_QUEUE} is empty: nothing is parked.")
        return EXIT_OK
    _say(render_table(rows))
    _say(f"\n{len(rows)} parked message(s) in {topology.DEAD_QUEUE}; nothing was removed.")
    return EXIT_OK


async def cmd_show(lot: ParkingLot, args: argparse.Namespace) -> int:
    views: list[dict[str, Any]] = []
    async with lot.scan() as scan:
        async for message in scan:
            if args.id in _names(message):
                views.append(describe(_ref(message), message.message_id, message.headers or {}, message.body))
    if not views:
        _complain(f"no parked message with id {args.id} in {topology.DEAD_QUEUE}")
        return EXIT_FAILED
    _say(json.dumps(views[0], indent=2, ensure_ascii=False))
    if len(views) > 1:
        # A crash between parking and acking parks a message twice; replay takes every copy.
        _complain(f"note: {len(views)} parked copies of {args.id}; showing the first")
    return EXIT_OK


async def cmd_replay(lot: ParkingLot, args: argparse.Namespace) -> int:
    wanted = set(args.ids)
    found: set[str] = set()
    replayed_at = iso(time.time())
    assert replayed_at is not None
    replayed = 0
    async with lot.scan() as scan:
        async for message in scan:
            matched = _names(message) & wanted
            if not args.all and not matched:
                continue  # held until the scan ends, so the next get moves on
            await lot.replay(message, replayed_at)
            replayed += 1
            found |= matched
            ref = _ref(message)
            _say(f"replayed {ref} ({summary_row(ref, message.headers or {}, message.body).alarm})")
    _say(f"{replayed} message(s) replayed to {topology.WORK_QUEUE} with a fresh attempt count.")
    missing = sorted(wanted - found)
    for ref in missing:
        _complain(f"no parked message with id {ref} in {topology.DEAD_QUEUE}")
    return EXIT_FAILED if missing else EXIT_OK


def confirm_purge(count: int) -> bool:
    """Ask on the terminal; False unless the answer is yes."""
    try:
        answer = input(f"Delete all {count} parked message(s) from {topology.DEAD_QUEUE}? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in {"y", "yes"}


async def cmd_purge(lot: ParkingLot, args: argparse.Namespace) -> int:
    if not args.yes and not sys.stdin.isatty():
        _complain("purge deletes parked alarms for good; pass --yes to confirm (stdin is not a terminal)")
        return EXIT_USAGE
    count = await lot.count()
    if count == 0:
        _say(f"{topology.DEAD_QUEUE} is empty: nothing to purge.")
        return EXIT_OK
    if not args.yes and not confirm_purge(count):
        _say("Not purged.")
        return EXIT_FAILED
    purged = await lot.purge()
    _say(f"Purged {purged} message(s) from {topology.DEAD_QUEUE}.")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=f"Inspect and replay alarms parked in {topology.DEAD_QUEUE}.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="list parked messages (nothing is removed)")
    listing.add_argument("--json", action="store_true", help="print the rows as JSON")
    listing.set_defaults(run=cmd_list)
    show = sub.add_parser("show", help="print one parked message's headers and body as JSON")
    show.add_argument("id")
    show.set_defaults(run=cmd_show)
    replay = sub.add_parser("replay", help=f"move parked messages back to {topology.WORK_QUEUE}")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--all", action="store_true", help="replay every parked message")
    replay.set_defaults(run=cmd_replay)
    purge = sub.add_parser("purge", help="delete every parked message")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(run=cmd_purge)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "replay" and bool(args.ids) == bool(args.all):
        parser.error("replay needs either one or more IDs or --all")
    return args


async def run(settings: Settings, args: argparse.Namespace) -> int:
    async with open_parking_lot(settings) as lot:
        code: int = await args.run(lot, args)
        return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m worker.dlq`` and the ``autopilot-dlq`` console script."""
    args = parse_args(argv)
    settings = load_settings_or_exit(PROGRAM)
    # The client libraries log connection failures too; this tool reports them in one line.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(settings, args))
    except BrokerUnavailable as exc:
        _complain(str(exc))
    except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
        _complain(f"broker error: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        _complain("interrupted; held messages go back to the queue")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
