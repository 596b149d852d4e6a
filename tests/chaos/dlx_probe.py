"""``python -m tests.chaos.dlx_probe [ROUNDS]``: the broker alone, no autopilot process.

On a 3-node cluster of our own (``OwnCluster``) with our topology, publish numbered messages,
confirmed, into the 1 s delay queue (``cloudamqp.alarms.retry.1s``: TTL, then at-least-once
dead-lettering into ``cloudamqp.alarms``) before, while and after the node leading the work
queue is down (graceful stop, SIGKILL on odd rounds) for 10 s. A consumer on another node
counts what comes out of the work queue:

- ``on_time``: within its round (which ends 10 s after its publishing does);
- ``late``: only in a later round (held by the delay queue meanwhile, counted nowhere:
  neither ready nor unacknowledged);
- ``never``: not even after every round and a last leader change of the delay queue.

It is what ``cluster-leader`` (tests/chaos/scenarios.py) showed as confirmation checks that
never came back; see docs/benchmarks.md, Chaos.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aio_pika

from shared import topology
from tests.chaos.harness import RETRY_DELAYS, OwnCluster

DELAY_QUEUE = topology.retry_queue_name(1.0)


async def _publish(
    channel: aio_pika.abc.AbstractChannel, sent: dict[int, int], round_: int, publishing: asyncio.Event
) -> None:
    """Numbered messages into the delay queue, each confirmed, while ``publishing`` is set."""
    while publishing.is_set():
        number = len(sent)
        message = aio_pika.Message(str(number).encode(), delivery_mode=2)
        await channel.default_exchange.publish(message, routing_key=DELAY_QUEUE, timeout=30)
        sent[number] = round_
        await asyncio.sleep(0.01)  # pacing the publisher


async def probe(rounds: int) -> dict[str, int]:
    workdir = Path(tempfile.mkdtemp(prefix="autopilot-dlx-probe-"))
    cluster = OwnCluster(workdir)
    sent: dict[int, int] = {}  # message number -> round
    visible = {DELAY_QUEUE: 0, topology.WORK_QUEUE: 0}  # ready at the rounds' ends, summed
    arrived: dict[int, int] = {}  # message number -> round in which it came out
    current = 0
    try:
        await cluster.start()
        setup = await aio_pika.connect(cluster.urls[0], timeout=10)
        async with setup:
            await topology.declare_topology(await setup.channel(), RETRY_DELAYS)
        for current in range(rounds):
            leader = await cluster.leader_of(topology.WORK_QUEUE)
            other = next(i for i in range(len(cluster.nodes)) if i != leader)
            connection = await aio_pika.connect(cluster.urls[other], timeout=10)
            async with connection:
                channel = await connection.channel(publisher_confirms=True)
                queue = await channel.declare_queue(topology.WORK_QUEUE, passive=True)

                async def take(message: aio_pika.abc.AbstractIncomingMessage, now: int = current) -> None:
                    arrived.setdefault(int(message.body), now)
                    await message.ack()

                await queue.consume(take)
                publishing = asyncio.Event()
                publishing.set()

                publisher = asyncio.create_task(_publish(channel, sent, current, publishing))
                await asyncio.sleep(1.0)  # publishing before the fault
                node = cluster.nodes[leader]
                await (node.kill() if current % 2 == 1 else node.stop())
                await asyncio.sleep(10.0)  # publishing while the node is down
                await node.start()
                await asyncio.sleep(5.0)  # and while it rejoins
                publishing.clear()
                await publisher
                await asyncio.sleep(10)  # the round's own window for arrivals
                # Not waiting in either queue where anyone can see it (ready counts), while
                # some of the round's messages have not come out: then the delay queue holds them.
                for name in (DELAY_QUEUE, topology.WORK_QUEUE):
                    declared = await channel.declare_queue(name, passive=True)
                    visible[name] += int(declared.declaration_result.message_count or 0)
        # A last leader change of the delay queue: whatever it held may come out now.
        holder = await cluster.leader_of(DELAY_QUEUE)
        current = rounds
        reader = next(i for i in range(len(cluster.nodes)) if i != holder)
        connection = await aio_pika.connect(cluster.urls[reader], timeout=10)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(topology.WORK_QUEUE, passive=True)
            await cluster.nodes[holder].stop()
            await cluster.nodes[holder].start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                message = await queue.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.2)  # polling the queue
                    continue
                arrived.setdefault(int(message.body), current)
    finally:
        await cluster.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    on_time = sum(1 for n, r in sent.items() if arrived.get(n) == r)
    late = sum(1 for n, r in sent.items() if n in arrived and arrived[n] != r)
    return {
        "sent": len(sent),
        "on_time": on_time,
        "late": late,
        "never": len(sent) - on_time - late,
        "ready_in_delay_queue_at_round_ends": visible[DELAY_QUEUE],
        "ready_in_work_queue_at_round_ends": visible[topology.WORK_QUEUE],
    }


def cli() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    counts = asyncio.run(probe(rounds))
    print("[dlx-probe] " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    return 0 if counts["late"] == counts["never"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(cli())
