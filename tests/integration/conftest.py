"""The stack under test: real receiver and worker processes against a per-test vhost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.cloudamqp_stand_in import CloudAmqpStandIn, Instance
from tests.support import Proc, free_port, wait_until

SEED_INSTANCE = "3555175d-4055-46e9-81b1-288a17846b9a"
SEED_API_ID = 359559  # the seed instance's integer id in the CloudAMQP API
API_KEY = "test-api-key-5f1c9a"


def now_iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat(timespec="seconds").replace("+00:00", "Z")


def seed_alarm(**changes: Any) -> dict[str, Any]:
    """The CloudAMQP blog's example alarm for the managed instance, triggered now."""
    alarm = {"alarm_type": "memory", "value": 85, "instance_id": SEED_INSTANCE, "triggered_at": now_iso()}
    alarm.update(changes)
    return alarm


class Stack:
    def __init__(self, env: dict[str, str], tmp_path: Path):
        self.env = env
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.receiver: Proc | None = None
        self.port = int(env["RECEIVER_PORT"])
        self.http: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, module: str, overrides: dict[str, str]) -> Proc:
        env = {**self.env, **overrides}
        proc = Proc(module, env, self.tmp_path / f"{module}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    async def start_receiver(self, **overrides: str) -> Proc:
        self.receiver = self._spawn("receiver", overrides)
        await self.receiver.wait_event("receiver.ready")
        return self.receiver

    async def start_worker(self, **overrides: str) -> Proc:
        worker = self._spawn("worker", overrides)
        await worker.wait_event("worker.ready")
        return worker

    async def session(self) -> aiohttp.ClientSession:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        return self.http

    async def post(self, body: Any, *, path: str = "/cloudamqp/alarm", **kwargs: Any) -> tuple[int, Any]:
        session = await self.session()
        if "data" not in kwargs:
            kwargs["json"] = body
        async with session.post(self.base + path, **kwargs) as resp:
            text = await resp.text()
            try:
                import json

                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text

    async def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        session = await self.session()
        async with session.get(self.base + path, **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)

    async def actions(self) -> list[dict[str, Any]]:
        status, body = await self.get("/actions?limit=500")
        assert status == 200, body
        return list(body["actions"])

    async def wait_actions(
        self, count: int, *, final: bool = True, timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        finals = {"succeeded", "skipped", "dry_run", "failed"}

        async def enough() -> list[dict[str, Any]]:
            rows = await self.actions()
            done = [a for a in rows if a["status"] in finals] if final else rows
            return rows if len(done) >= count else []

        return await wait_until(enough, timeout=timeout, what=f"{count} decided actions")

    async def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                await proc.stop()
        if self.http is not None:
            await self.http.close()


@pytest.fixture
def base_env(vhost: str, fake_api: CloudAmqpStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        "RABBITMQ_URL": vhost,
        "DATABASE_URL": f"sqlite:///{tmp_path}/autopilot.db",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(free_port()),
        "CLOUDAMQP_API_URL": fake_api.url,
        "CLOUDAMQP_API_KEY": API_KEY,
        "CLOUDAMQP_INSTANCE_ID": SEED_INSTANCE,
        "RETRY_DELAYS": "0.2,0.5",
        "UPGRADE_POLL_SECONDS": "0.2",
        "CLAIM_LEASE_SECONDS": "5",
        # A plan CloudAMQP sells (the seed's default, bunny-2, is not: the worker refuses it
        # as unknown_plan against the stand-in's catalogue; tests/integration/test_prices.py).
        "UPGRADE_PLAN": "hare-1",
    }


# What the ``make_stack`` fixture yields: a Stack for this test's env, with overrides.
MakeStack = Callable[..., Stack]


@pytest.fixture
async def make_stack(base_env: dict[str, str], tmp_path: Path) -> AsyncIterator[MakeStack]:
    stacks: list[Stack] = []

    def make(**overrides: str) -> Stack:
        stack = Stack({**base_env, **overrides}, tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.close()


def seed_instance(api: CloudAmqpStandIn, plan: str = "bunny-1") -> Instance:
    """The seed alarm's instance in the stand-in's account: its console UUID is SEED_INSTANCE."""
    return api.add_instance("seed-instance", plan, id=SEED_API_ID, providerid=SEED_INSTANCE)
