"""Baseline for the worker: a bare aio-pika consume-and-ack loop on the same quorum queue.

``python -m bench.raw_consumer URL --prefetch N --out FILE [--go GOFILE]``: connects, says
``consumer.ready``, waits for ``GOFILE`` to exist (so that several consumers start together),
acks everything it gets, and after ``--idle`` seconds without a message writes the epoch
second of every ack, and the CPU seconds it used from the start to its last ack, to ``FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aio_pika

from shared import topology
from shared.settings import Settings


async def run(url: str, prefetch: int, idle: float, out: str, go: str | None) -> None:
    acks: list[float] = []
    cpu = {"start": 0.0, "last": 0.0}
    last = asyncio.Event()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(topology.WORK_QUEUE, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            acks.append(time.time())
            cpu["last"] = time.process_time()
            last.set()

        print(json.dumps({"event": "consumer.ready", "t": time.time()}), flush=True)
        if go is not None:
            await _starting_gun(go)
        cpu["start"] = time.process_time()
        await queue.consume(on_message)
        while True:
            last.clear()
            try:
                await asyncio.wait_for(last.wait(), timeout=idle)
            except TimeoutError:
                break  # the others took what was left, or it is all done
    _write(out, {"acks": acks, "cpu_s": max(cpu["last"] - cpu["start"], 0.0)})


async def _starting_gun(go: str) -> None:
    """Until ``go`` exists: several consumers start within a few milliseconds of each other."""
    loop = asyncio.get_running_loop()
    # Polling a file that another process creates: there is no event to wait on.
    while not await loop.run_in_executor(None, os.path.exists, go):  # noqa: ASYNC110
        await asyncio.sleep(0.002)


def _write(out: str, result: dict[str, Any]) -> None:
    with open(out, "w") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--prefetch", type=int, default=Settings().worker_prefetch)
    parser.add_argument("--idle", type=float, default=1.5)
    parser.add_argument("--out", required=True)
    parser.add_argument("--go")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.prefetch, args.idle, args.out, args.go))


if __name__ == "__main__":
    main()
