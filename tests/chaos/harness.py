"""Fault injection with full accounting, in the manner of RabbitMQ's Jepsen suite: send a known
set of alarms through the real processes while something breaks, then reconcile.

accepted = processed, lost = 0, duplicate upgrades = 0, and nothing unexplained in any queue.

- ``CloudAmqpStandIn`` (``tests.cloudamqp_stand_in``): the CloudAMQP API, with fault windows
  (503s, hangs), counting the upgrade requests it answered with success per instance.
- ``OwnBroker``: a second RabbitMQ node this suite starts, stops and kills, on its own ports
  with its own data directory — never the machine's shared broker.
- ``OwnCluster``: three such nodes with a cookie of their own, joined into one cluster.
- ``Stack``: the receiver and workers as real processes (``tests.support.Proc``).
- ``send``: posts every planned alarm, re-posting on 503 / connection errors the way a
  webhook sender would, and remembers every event id answered with 202.
- ``settle`` and ``reconcile``: wait for the system to go quiet, then count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aiohttp

from shared import topology
from shared.store import DONE_STATUSES, Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.support import Proc, Services, free_port, management_request, wait_until

API_KEY = "chaos-api-key"
START_PLAN, TARGET_PLAN = "bunny-1", "hare-1"
# Short delays so that a run takes seconds; attempts enough to outlast every fault we inject.
RETRY_DELAYS = (0.2, 0.5, 1.0)
MAX_ATTEMPTS = 200


# --- the alarms ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """How much to send: ``instances`` needing one upgrade each, with identical re-sends,
    reminders (same problem, higher value), resolves, and below-threshold alarms."""

    instances: int
    duplicates: int
    reminders: int
    lows: int
    rate: float  # alarms offered per second

    @classmethod
    def short(cls) -> Size:
        return cls(instances=10, duplicates=2, reminders=2, lows=10, rate=25.0)

    @classmethod
    def long(cls) -> Size:
        return cls(instances=150, duplicates=3, reminders=3, lows=150, rate=40.0)


@dataclass(frozen=True)
class Plan:
    alarms: list[dict[str, Any]]
    instances: list[str]  # each needs exactly one upgrade
    quiet: list[str]  # managed too, but only ever below the threshold

    @property
    def managed(self) -> list[str]:
        return self.instances + self.quiet

    def needs_upgrade(self, body: dict[str, Any]) -> bool:
        return (
            body.get("alarm_type") == "memory"
            and isinstance(body.get("value"), int | float)
            and body["value"] > 80
            and body.get("resolved") is not True
            and not (body.get("metadata") or {}).get("resolved")
        )


def plan_alarms(size: Size, prefix: str, seed: int = 8) -> Plan:
    """A shuffled mix. Any order is fine: whichever alarm of an instance comes first upgrades
    it, every other one is a duplicate, a cooling-down or a resolved skip."""
    rng = random.Random(seed)
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    instances = [f"{prefix}-{n:04d}" for n in range(size.instances)]
    alarms: list[dict[str, Any]] = []
    for instance in instances:
        first = {"alarm_type": "memory", "value": 85, "instance_id": instance, "triggered_at": now}
        alarms += [first] * (1 + size.duplicates)
        alarms += [{**first, "value": 86 + k} for k in range(size.reminders)]
        if rng.random() < 0.3:
            alarms.append({**first, "resolved": True})
        if rng.random() < 0.3:
            alarms.append({**first, "metadata": {"resolved": True}})
    quiet = [f"{prefix}-low-{n:04d}" for n in range(size.lows)]
    alarms += [{"alarm_type": "memory", "value": 50, "instance_id": q, "triggered_at": now} for q in quiet]
    rng.shuffle(alarms)
    return Plan(alarms, instances, quiet)


# --- a broker of our own ---------------------------------------------------------------------


def _rabbit_script(name: str) -> str | None:
    """The real script, not Debian's wrapper (which re-runs it as the rabbitmq user)."""
    direct = Path("/usr/lib/rabbitmq/bin") / name
    if direct.exists():
        return str(direct)
    return shutil.which(name)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class OwnBroker:
    """A second RabbitMQ node, started by this suite with its own name, ports, data and log
    directories, cookie (``HOME``) and an empty plugin list; stopped and deleted at the end."""

    def __init__(self, workdir: Path, *, management: bool = False, config: str = ""):
        tag = uuid.uuid4().hex[:8]
        self.node = f"chaos-{tag}@localhost"
        self.dir = workdir / f"rabbit-{tag}"
        self.port = free_port()
        self.dist_port = free_port()
        # The management plugin on a port of its own (the broker checks read its /api/nodes).
        self.management_port = free_port() if management else None
        self.config = config  # more rabbitmq.conf lines
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @staticmethod
    def available() -> str | None:
        """None when a node can be started here, else why not."""
        if _rabbit_script("rabbitmq-server") is None:
            return "rabbitmq-server is not installed"
        if _rabbit_script("rabbitmqctl") is None:
            return "rabbitmqctl is not installed"
        return None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def management_url(self) -> str:
        assert self.management_port is not None, "started without management"
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def _env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        return {
            **base,
            "HOME": str(self.dir),  # the Erlang cookie lives here, not in the shared node's home
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    async def start(self, timeout: float = 90.0) -> None:
        if self.proc is None:
            (self.dir / "mnesia").mkdir(parents=True, exist_ok=True)
            (self.dir / "log").mkdir(exist_ok=True)
            plugins = "rabbitmq_management" if self.management_port else ""
            (self.dir / "enabled_plugins").write_text(f"[{plugins}].\n")
            (self.dir / "rabbitmq-env.conf").write_text("")
            conf = [f"listeners.tcp.default = 127.0.0.1:{self.port}"]
            if self.management_port:
                conf += [f"management.tcp.port = {self.management_port}", "management.tcp.ip = 127.0.0.1"]
            (self.dir / "rabbitmq.conf").write_text("\n".join([*conf, self.config, ""]))
        else:
            self.restarts += 1
        self.proc = self._spawn()

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.node} exited: {self.tail()}")
            return port_open(self.port)

        await wait_until(up, timeout=timeout, interval=0.1, what=f"{self.node} to listen on {self.port}")

    def _spawn(self) -> subprocess.Popen[bytes]:
        script = _rabbit_script("rabbitmq-server")
        assert script is not None
        with open(self.dir / "server.out", "ab") as out:
            # Its own session: a Ctrl-C meant for the test run does not reach the node first.
            return subprocess.Popen(
                [script],
                env=self._env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def tail(self, chars: int = 2000) -> str:
        path = self.dir / "server.out"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    async def _run_ctl(self, *args: str, timeout: float, tool: str = "rabbitmqctl") -> tuple[int | None, str]:
        """``rabbitmqctl -n NODE ARGS…`` (or another CLI tool) with the node's environment: its
        exit status (None when it had to be killed after ``timeout``) and its output."""
        script = _rabbit_script(tool)
        assert script is not None
        proc = await asyncio.create_subprocess_exec(
            script,
            "-n",
            self.node,
            *args,
            env=self._env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None, ""
        return proc.returncode, out.decode(errors="replace")

    async def ctl(self, *args: str, timeout: float = 30.0, tool: str = "rabbitmqctl") -> str:
        """``rabbitmqctl`` (or ``tool``) against this node; its output, or AssertionError with it."""
        status, out = await self._run_ctl(*args, timeout=timeout, tool=tool)
        if status is None:
            raise AssertionError(f"{tool} {' '.join(args)} on {self.node} timed out")
        if status != 0:
            raise AssertionError(f"{tool} {' '.join(args)} on {self.node} failed: {out[-1000:]}")
        return out

    async def stop(self, timeout: float = 60.0) -> None:
        """Graceful: ``rabbitmqctl stop`` (falls back to SIGTERM of the script we started)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        status, _ = await self._run_ctl("stop", timeout=timeout)
        if status != 0:
            self.proc.send_signal(signal.SIGTERM)
        await self._wait_exit(timeout)

    async def kill(self) -> None:
        """A crash: SIGKILL to the Erlang VM (no goodbye to clients, no clean shutdown)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "beam" in child.name():
                    child.kill()
            except (psutil.Error, OSError):
                continue  # a short-lived helper of the node (a disk check's shell) already gone
        await self._wait_exit(30)

    async def _wait_exit(self, timeout: float) -> None:
        proc = self.proc
        assert proc is not None

        def gone() -> bool:
            return proc.poll() is not None and not port_open(self.port)

        try:
            await wait_until(gone, timeout=timeout, interval=0.1, what=f"{self.node} to exit")
        except AssertionError:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    async def cleanup(self) -> None:
        try:
            await self.stop(timeout=30)
        finally:
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            shutil.rmtree(self.dir, ignore_errors=True)


class OwnCluster:
    """A RabbitMQ cluster of our own: ``size`` ``OwnBroker`` nodes (own names, ports, data
    directories) sharing a cookie of their own, joined to the first one. Never the machine's
    shared broker; stopped and deleted by ``cleanup``. Quorum queues declared once all nodes
    have joined get a member on every node (RabbitMQ's default group size: the cluster)."""

    def __init__(self, workdir: Path, size: int = 3):
        self.nodes = [OwnBroker(workdir) for _ in range(size)]
        self.cookie = uuid.uuid4().hex

    @staticmethod
    def available() -> str | None:
        return OwnBroker.available()

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """``RABBITMQ_URL`` for the whole cluster: every node, comma-separated."""
        return ",".join(self.urls)

    def index_of(self, name: str) -> int:
        """Which of ours a node is, by its Erlang name or ``host:port``."""
        for index, node in enumerate(self.nodes):
            if name in {node.node, f"127.0.0.1:{node.port}"}:
                return index
        raise KeyError(name)

    def running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.proc is not None and node.proc.poll() is None]

    async def start(self, timeout: float = 120.0) -> None:
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            cookie = node.dir / ".erlang.cookie"  # HOME is the node's directory
            cookie.write_text(self.cookie)
            cookie.chmod(0o400)
        await asyncio.gather(*(node.start(timeout) for node in self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            await self.ctl(node, "stop_app")
            await self.ctl(node, "join_cluster", first.node)
            await self.ctl(node, "start_app")
            await wait_until(
                partial(port_open, node.port), timeout=timeout, interval=0.1, what=f"{node.node}"
            )
        status = json.loads(await self.ctl(first, "cluster_status", "--formatter", "json"))
        running = set(status.get("running_nodes", []))
        if running != {node.node for node in self.nodes}:
            raise AssertionError(f"the cluster did not form: running {sorted(running)}")

    async def ctl(self, node: OwnBroker, *args: str, timeout: float = 60.0, tool: str = "rabbitmqctl") -> str:
        """``OwnBroker.ctl`` on one of the cluster's nodes."""
        return await node.ctl(*args, timeout=timeout, tool=tool)

    async def queue_members(self, vhost: str = "/") -> dict[str, dict[str, Any]]:
        """Per queue: its type, leader, members and online members, as a running node sees them."""
        node = self.nodes[self.running()[0]]
        out = await self.ctl(
            node, "list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
            "--formatter", "json", "--quiet",
        )  # fmt: skip
        return {row["name"]: row for row in json.loads(out)}

    async def leader_of(self, queue: str, vhost: str = "/") -> int:
        """Which node leads ``queue`` now."""
        leader = (await self.queue_members(vhost))[queue]["leader"]
        return self.index_of(str(leader))

    async def connections(self, index: int) -> list[dict[str, Any]]:
        """The client connections one node holds (peer port and host of each)."""
        out = await self.ctl(
            self.nodes[index], "list_connections", "peer_host", "peer_port", "--formatter", "json", "--quiet"
        )
        return list(json.loads(out))

    async def cleanup(self) -> None:
        await asyncio.gather(*(node.cleanup() for node in self.nodes), return_exceptions=True)


# --- our processes -------------------------------------------------------------------------


class Stack:
    """One receiver and N workers of this checkout, sharing ``env``; all stopped in ``close``."""

    def __init__(self, env: dict[str, str], workdir: Path, worker_env: dict[str, str] | None = None):
        self.env = env
        self.worker_env = {**env, **(worker_env or {})}
        self.workdir = workdir
        self.receiver: Proc | None = None
        self.workers: list[Proc] = []
        self.retired: list[Proc] = []  # killed or stopped workers, for their logs
        self.port = int(env["RECEIVER_PORT"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, module: str, overrides: dict[str, str] | None = None) -> Proc:
        env = {**(self.worker_env if module == "worker" else self.env), **(overrides or {})}
        return Proc(module, env, self.workdir / f"{module}-{uuid.uuid4().hex[:6]}.log")

    async def start_receiver(self, overrides: dict[str, str] | None = None) -> None:
        self.receiver = self._spawn("receiver", overrides)
        await self.receiver.wait_event("receiver.ready", timeout=60)

    async def start_worker(self, *, wait: bool = True, overrides: dict[str, str] | None = None) -> Proc:
        worker = self._spawn("worker", overrides)
        self.workers.append(worker)
        if wait:
            await worker.wait_event("worker.ready", timeout=60)
        return worker

    async def kill_worker(self, index: int) -> None:
        worker = self.workers.pop(index)
        await worker.kill()
        self.retired.append(worker)

    async def stop_workers(self) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            if worker.popen.poll() is None:
                await worker.stop(timeout=60)
        self.retired += workers

    def all_workers(self) -> list[Proc]:
        return self.retired + self.workers

    def worker_events(self, name: str) -> list[dict[str, Any]]:
        return [e for w in self.all_workers() for e in w.events(name)]

    async def close(self) -> None:
        await self.stop_workers()
        if self.receiver is not None and self.receiver.popen.poll() is None:
            await self.receiver.stop(timeout=30)


def stack_env(
    amqp_url: str, database_url: str, api: CloudAmqpStandIn, instances: Iterable[str], **extra: str
) -> dict[str, str]:
    """The stack's environment; the instances join the stand-in's account (on START_PLAN)."""
    instances = list(instances)
    for name in instances:
        if api.find(name) is None:
            api.add_instance(name, START_PLAN)
    return {
        "RABBITMQ_URL": amqp_url,
        "DATABASE_URL": database_url,
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(free_port()),
        "WEBHOOK_TOKEN": "",
        "CLOUDAMQP_API_URL": api.url,
        "CLOUDAMQP_API_KEY": API_KEY,
        "CLOUDAMQP_INSTANCE_ID": ",".join(instances),
        "UPGRADE_PLAN": TARGET_PLAN,
        "RETRY_DELAYS": ",".join(str(d) for d in RETRY_DELAYS),
        "UPGRADE_POLL_SECONDS": str(RETRY_DELAYS[1]),
        "MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "CLAIM_LEASE_SECONDS": "3",
        "CLOUDAMQP_API_TIMEOUT": "2",
        "WORKER_PREFETCH": "8",
        "LOG_LEVEL": "info",
        **extra,
    }


# --- sending -------------------------------------------------------------------------------


@dataclass
class SendLog:
    """What the sender saw: per planned alarm, the event id of its 202 (or None)."""

    accepted: dict[int, str] = field(default_factory=dict)
    accepted_at: list[float] = field(default_factory=list)  # monotonic time of each 202
    statuses: Counter[str] = field(default_factory=Counter)
    first_503: float | None = None
    last_503: float | None = None
    wrong: list[str] = field(default_factory=list)  # answers that break the contract


async def send(
    base: str,
    plan: Plan,
    rate: float,
    *,
    deadline: float,
    concurrency: int = 16,
    log: SendLog | None = None,
    holds: dict[int, asyncio.Event] | None = None,
) -> SendLog:
    """Offer every planned alarm at ``rate``; on 503 or a connection error, post it again
    (after 0.2 s) until 202 or ``deadline`` (monotonic). An answer that was lost in transit
    leaves the alarm's fate unknown, so the re-post may make it a second event — that is the
    sender's side, and the store must still end up with exactly one upgrade.

    ``holds`` (alarm index → event): that alarm and the ones after it wait until the event is
    set, so that a scenario can be sure some alarms meet its fault instead of racing it."""
    log = log or SendLog()
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=10)

    async def one(session: aiohttp.ClientSession, index: int, body: dict[str, Any]) -> None:
        async with gate:
            while time.monotonic() < deadline:
                try:
                    async with session.post(f"{base}/cloudamqp/alarm", json=body) as resp:
                        status = resp.status
                        answer = await resp.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.statuses[type(exc).__name__] += 1
                else:
                    log.statuses[str(status)] += 1
                    if status == 202 and isinstance(answer, dict) and answer.get("id"):
                        log.accepted[index] = str(answer["id"])
                        log.accepted_at.append(time.monotonic())
                        return
                    if status == 503:
                        now = time.monotonic()
                        log.first_503 = log.first_503 or now
                        log.last_503 = now
                        if resp.headers.get("Retry-After") is None:
                            log.wrong.append("503 without Retry-After")
                    else:
                        log.wrong.append(f"{status}: {answer}")
                        return
                await asyncio.sleep(0.2)  # a webhook sender's back-off, not synchronisation

    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        async for index in _paced(len(plan.alarms), rate, holds or {}):
            tasks.append(asyncio.create_task(one(session, index, plan.alarms[index])))
        await asyncio.gather(*tasks)
    return log


async def _paced(count: int, rate: float, holds: dict[int, asyncio.Event]) -> AsyncIterator[int]:
    """0 … count-1, each at its time: ``rate`` per second, waiting at each of ``holds``."""
    start = time.monotonic()
    for index in range(count):
        held = holds.get(index)
        if held is not None and not held.is_set():
            await held.wait()
            start = time.monotonic() - index / rate  # the pacing goes on from here
        delay = start + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load
        yield index


# --- settling and counting -----------------------------------------------------------------


async def _all_rows(fetch: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = await fetch(limit=500, offset=offset)
        rows += page
        if len(page) < 500:
            return rows
        offset += 500


async def store_view(store: Store) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every event and every action, by event id."""
    events = await _all_rows(store.list_events)
    actions = await _all_rows(store.list_actions)
    return {e["event_id"]: e for e in events}, {a["event_id"]: a for a in actions}


def queue_names() -> list[str]:
    return [name for name, _ in topology.all_queues(RETRY_DELAYS)]


async def queue_depths(amqp_url: str) -> dict[str, int]:
    """Ready messages in each of our queues (unacknowledged ones are not counted)."""
    depths: dict[str, int] = {}
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for name in queue_names():
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = int(queue.declaration_result.message_count or 0)
            except aio_pika.exceptions.ChannelClosed:
                depths[name] = 0  # never declared: nothing ever waited there
    return depths


async def peek_dead(amqp_url: str, limit: int = 20) -> list[dict[str, Any]]:
    """Headers of parked messages, handed back unchanged."""
    found: list[dict[str, Any]] = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.DEAD_QUEUE, passive=True)
        held = []
        for _ in range(limit):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
            found.append({k: str(v) for k, v in (message.headers or {}).items()})
        for message in held:
            await message.nack(requeue=True)
    return found


@dataclass
class Summary:
    scenario: str
    sent: int
    accepted: int
    processed: int
    upgrades: int
    duplicates: int
    lost: int
    missing: int = 0
    unexplained: int = 0
    parked: int = 0
    not_accepted: int = 0
    recorded: int = 0  # upgrades GET /actions shows as succeeded
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.accepted == self.processed
            and self.lost == 0
            and self.duplicates == 0
            and self.missing == 0
            and self.unexplained == 0
            and self.parked == 0
            and self.not_accepted == 0
            and not self.details.get("wrong_answers")
            and not self.details.get("failed_checks")
        )

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAIL"
        return (
            f"[chaos] {self.scenario:<16} sent={self.sent} accepted={self.accepted} "
            f"processed={self.processed} "
            f"upgrades={self.upgrades} duplicates={self.duplicates} lost={self.lost} missing={self.missing} "
            f"unexplained={self.unexplained} parked={self.parked} not_accepted={self.not_accepted} "
            f"recorded={self.recorded} {verdict}"
        )


@dataclass
class Expectation:
    plan: Plan
    log: SendLog

    def accepted_ids(self) -> set[str]:
        return set(self.log.accepted.values())

    def upgrade_instances(self) -> set[str]:
        """Instances with at least one accepted alarm that calls for an upgrade."""
        return {
            self.plan.alarms[i]["instance_id"]
            for i in self.log.accepted
            if self.plan.needs_upgrade(self.plan.alarms[i])
        }


async def settle(
    stack: Stack,
    expect: Expectation,
    api: CloudAmqpStandIn,
    amqp_url: str,
    database_url: str,
    *,
    timeout: float,
) -> None:
    """Wait until every accepted event is decided, every expected upgrade happened and our
    queues hold nothing ready; then stop the workers (they finish what they hold) and make
    sure nothing came back. Gives up quietly at ``timeout``: ``reconcile`` says what is wrong."""
    deadline = time.monotonic() + timeout
    wanted = expect.upgrade_instances()
    ids = expect.accepted_ids()
    store = await Store.open(database_url)

    async def quiet() -> bool:
        events, actions = await store_view(store)
        if any(i not in events or actions.get(i, {}).get("status") not in DONE_STATUSES for i in ids):
            return False
        if not wanted <= set(api.successes()):
            return False
        return not any((await queue_depths(amqp_url)).values())

    try:
        for _ in range(3):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(AssertionError):
                await wait_until(quiet, timeout=left, interval=0.5, what="the system to go quiet")
            await stack.stop_workers()
            if not any((await queue_depths(amqp_url)).values()) or time.monotonic() > deadline:
                return
            # Something was settled into a delay queue while stopping: let it come back through.
            for _ in range(2):
                await stack.start_worker()
    finally:
        await store.close()


async def reconcile(
    scenario: str, expect: Expectation, api: CloudAmqpStandIn, amqp_url: str, database_url: str
) -> Summary:
    store = await Store.open(database_url)
    try:
        events, actions = await store_view(store)
    finally:
        await store.close()
    ids = expect.accepted_ids()
    processed = {i for i in ids if i in events and actions.get(i, {}).get("status") in DONE_STATUSES}
    lost = {i for i in ids if i not in events}
    successes = api.successes()
    wanted = expect.upgrade_instances()
    duplicates = sum(n - 1 for inst, n in successes.items() if n > 1 and inst in wanted)
    duplicates += sum(n for inst, n in successes.items() if inst not in wanted)
    depths = await queue_depths(amqp_url)
    dead = depths.pop(topology.DEAD_QUEUE, 0)
    summary = Summary(
        scenario=scenario,
        sent=len(expect.plan.alarms),
        accepted=len(ids),
        processed=len(processed),
        upgrades=sum(successes.values()),
        duplicates=duplicates,
        lost=len(lost),
        missing=len(wanted - set(successes)),
        unexplained=sum(depths.values()),
        parked=dead,
        not_accepted=len(expect.plan.alarms) - len(expect.log.accepted),
        recorded=sum(1 for a in actions.values() if a["status"] == "succeeded"),
    )
    summary.details = {
        "http": dict(expect.log.statuses),
        "api": dict(api.outcomes()),
        "wrong_answers": expect.log.wrong[:10],
        "events_in_store": len(events),
        "undecided": sorted(ids - processed - lost)[:10],
        "lost_ids": sorted(lost)[:10],
        "duplicated_instances": {i: n for i, n in successes.items() if n > 1 or i not in wanted},
        "missing_instances": sorted(wanted - set(successes))[:10],
        "queues": {k: v for k, v in depths.items() if v},
        "action_statuses": dict(Counter(f"{a['status']}:{a['reason']}" for a in actions.values())),
    }
    if dead:
        summary.details["parked_headers"] = await peek_dead(amqp_url)
    return summary


# --- where things run ----------------------------------------------------------------------


@dataclass
class Env:
    """Where a scenario runs: the shared broker (a fresh vhost per scenario), PostgreSQL (a
    fresh database when asked) and a scratch directory."""

    services: Services
    workdir: Path

    @contextlib.asynccontextmanager
    async def vhost(self) -> AsyncIterator[str]:
        name = f"chaos-{uuid.uuid4().hex[:10]}"
        await management_request(self.services, "PUT", f"/api/vhosts/{name}")
        try:
            await management_request(
                self.services,
                "PUT",
                f"/api/permissions/{name}/guest",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
            yield urlsplit(self.services.amqp_url)._replace(path="/" + quote(name, safe="")).geturl()
        finally:
            await management_request(self.services, "DELETE", f"/api/vhosts/{name}")

    @contextlib.asynccontextmanager
    async def postgres(self) -> AsyncIterator[tuple[str, str]]:
        """(url, database name) of a fresh database, dropped afterwards."""
        import asyncpg

        name = f"chaos_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.services.postgres_url, timeout=5)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        try:
            yield urlsplit(self.services.postgres_url)._replace(path=f"/{name}").geturl(), name
        finally:
            admin = await asyncpg.connect(self.services.postgres_url, timeout=5)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()

    def sqlite(self) -> str:
        return f"sqlite:///{self.workdir}/chaos-{uuid.uuid4().hex[:8]}.db"


def dump(summary: Summary) -> str:
    return json.dumps(summary.details, indent=2, default=str)
