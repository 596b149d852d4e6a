"""The fault scenarios. Each sends a planned set of alarms while breaking one thing, lets the
system recover, and returns the reconciliation (``harness.Summary``).

Run short from pytest (tests/chaos/test_chaos.py, part of ``make test``) or long from
``python -m tests.chaos`` (``make chaos``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aio_pika

from shared import topology
from tests.chaos.harness import (
    API_KEY,
    RETRY_DELAYS,
    Env,
    Expectation,
    OwnBroker,
    OwnCluster,
    Plan,
    SendLog,
    Size,
    Stack,
    Summary,
    plan_alarms,
    queue_names,
    reconcile,
    send,
    settle,
    stack_env,
)
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.support import TcpProxy, wait_until


@dataclass(frozen=True)
class Faults:
    """How hard and how long: the short run (pytest) and the long one (``make chaos``)."""

    size: Size
    kill_every: float  # seconds between worker SIGKILLs
    kills: int
    broker_outage: float  # seconds the broker stays down, each cycle
    broker_cycles: int
    api_outage: float  # seconds of 503s
    api_hang: float  # seconds of hanging requests
    store_outage: float  # seconds the database refuses connections
    settle_timeout: float

    @classmethod
    def short(cls) -> Faults:
        return cls(Size.short(), 1.0, 4, 2.0, 1, 4.0, 3.0, 3.0, 40.0)

    @classmethod
    def long(cls) -> Faults:
        return cls(Size.long(), 2.5, 30, 5.0, 3, 60.0, 20.0, 20.0, 240.0)


@contextlib.asynccontextmanager
async def stand_in(**kwargs: Any) -> AsyncIterator[CloudAmqpStandIn]:
    api = CloudAmqpStandIn(api_key=API_KEY, **kwargs)
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


@contextlib.asynccontextmanager
async def stack_of(
    env: dict[str, str], workdir: Any, workers: int, worker_env: dict[str, str] | None = None
) -> AsyncIterator[Stack]:
    stack = Stack(env, workdir, worker_env)
    try:
        await stack.start_receiver()
        await asyncio.gather(*(stack.start_worker() for _ in range(workers)))
        yield stack
    finally:
        await stack.close()


def _accepted_at_least(log: SendLog, count: int) -> bool:
    return len(log.accepted) >= count


def _answered_503_since(log: SendLog, seen: float | None) -> bool:
    return log.last_503 != seen


def _send_deadline(plan: Plan, size: Size, slack: float) -> float:
    return time.monotonic() + len(plan.alarms) / size.rate + slack


async def _finish(
    name: str,
    stack: Stack,
    plan: Plan,
    log: SendLog,
    api: CloudAmqpStandIn,
    amqp: str,
    db: str,
    faults: Faults,
) -> Summary:
    expect = Expectation(plan, log)
    await settle(stack, expect, api, amqp, db, timeout=faults.settle_timeout)
    return await reconcile(name, expect, api, amqp, db)


# --- worker SIGKILL ------------------------------------------------------------------------


async def worker_kill(env: Env, faults: Faults) -> Summary:
    """Three workers; every ``kill_every`` seconds one of them is SIGKILLed (mid-call, mid-
    transaction, mid-settle: wherever it is) and a new one started. Upgrades go through the
    customer API (``instances``), whose plan read is what makes a repeat after a crash safe."""
    plan = plan_alarms(faults.size, "kill")
    rng = random.Random(3)
    async with stand_in(latency=0.2) as api, env.vhost() as amqp:
        db = env.sqlite()
        senv = stack_env(amqp, db, api, plan.managed, UPGRADE_API="instances")
        async with stack_of(senv, env.workdir, 3) as stack:
            sender = asyncio.create_task(
                send(stack.base, plan, faults.size.rate, deadline=_send_deadline(plan, faults.size, 60))
            )
            for _ in range(faults.kills):
                # Pacing the faults; the kill itself waits for the process to be gone.
                await asyncio.sleep(faults.kill_every * rng.uniform(0.5, 1.5))
                await stack.kill_worker(rng.randrange(len(stack.workers)))
                await stack.start_worker(wait=False)
            for worker in stack.workers:
                await worker.wait_event("worker.ready", timeout=60)
            log = await sender
            summary = await _finish("worker-kill", stack, plan, log, api, amqp, db, faults)
    summary.details["kills"] = faults.kills
    return summary


# --- broker restart ------------------------------------------------------------------------


class ProxyOutage:
    """The fallback when no second node can be started: cut a TCP proxy in front of the
    shared broker (it never goes down itself)."""

    def __init__(self, target_port: int):
        self.proxy = TcpProxy(target_port)

    async def start(self) -> None:
        await self.proxy.start()

    async def down(self, crash: bool) -> None:
        await self.proxy.cut()

    async def up(self) -> None:
        await self.proxy.start()


class NodeOutage:
    """Stop (graceful) or kill (SIGKILL) our own node, then start it again, same data."""

    def __init__(self, broker: OwnBroker):
        self.broker = broker

    async def down(self, crash: bool) -> None:
        if crash:
            await self.broker.kill()
        else:
            await self.broker.stop()

    async def up(self) -> None:
        await self.broker.start()


async def broker_restart(env: Env, faults: Faults) -> Summary:
    """Receiver and two workers on a RabbitMQ node of our own; under load the node is stopped
    (graceful, then SIGKILL on odd cycles) and started again. During the outage the receiver
    must answer 503 (never 202 and then lose it) and afterwards recover by itself; the
    workers reconnect. Upgrades go through the customer API (``instances``): a call cut off
    by the outage is then repeated harmlessly (see ``broker_drop_mid_call`` for the other)."""
    reason = OwnBroker.available()
    broker = OwnBroker(env.workdir) if reason is None else None
    plan = plan_alarms(faults.size, "broker")
    rate = min(faults.size.rate, len(plan.alarms) / (3.0 * faults.broker_cycles))
    try:
        if broker is not None:
            await broker.start()
            amqp, outage = broker.url, NodeOutage(broker)
            how = f"own node {broker.node} on 127.0.0.1:{broker.port}"
            async with stand_in(latency=0.02) as api:
                summary = await _broker_cycles(env, faults, plan, rate, api, amqp, outage)
        else:
            async with env.vhost() as vhost, stand_in(latency=0.02) as api:
                proxy_outage = ProxyOutage(5672)
                await proxy_outage.start()
                amqp = vhost.replace(":5672/", f":{proxy_outage.proxy.port}/")
                how = f"TCP proxy outage (no second node: {reason})"
                summary = await _broker_cycles(env, faults, plan, rate, api, amqp, proxy_outage)
    finally:
        if broker is not None:
            await broker.cleanup()
    summary.details["broker"] = how
    return summary


async def _broker_cycles(
    env: Env, faults: Faults, plan: Plan, rate: float, api: CloudAmqpStandIn, amqp: str, outage: Any
) -> Summary:
    db = env.sqlite()
    senv = stack_env(amqp, db, api, plan.managed, UPGRADE_API="instances")
    async with stack_of(senv, env.workdir, 2) as stack:
        log = SendLog()
        deadline = _send_deadline(plan, faults.size, 120)
        # A share of the alarms is held back until each outage is in place: stopping a node
        # takes seconds (longer on a busy machine), and the sender must not be done by then.
        down = [asyncio.Event() for _ in range(faults.broker_cycles)]
        share = len(plan.alarms) // (faults.broker_cycles + 1)
        holds = {share * (cycle + 1): event for cycle, event in enumerate(down)}
        sender = asyncio.create_task(send(stack.base, plan, rate, deadline=deadline, log=log, holds=holds))
        recoveries = []
        for cycle in range(faults.broker_cycles):
            enough = min(5 * (cycle + 1), share * (cycle + 1))
            await wait_until(partial(_accepted_at_least, log, enough), timeout=60, what="some 202s")
            await outage.down(crash=cycle % 2 == 1)
            seen = log.last_503
            down[cycle].set()
            await wait_until(
                partial(_answered_503_since, log, seen), timeout=30, what="the receiver to answer 503"
            )
            await asyncio.sleep(faults.broker_outage)  # the outage itself
            accepted = len(log.accepted)
            await outage.up()
            up_at = time.monotonic()  # the broker listens again
            await wait_until(partial(_accepted_at_least, log, accepted + 1), timeout=60, what="202s again")
            recoveries.append(round(time.monotonic() - up_at, 2))
        log = await sender
        summary = await _finish("broker-restart", stack, plan, log, api, amqp, db, faults)
        summary.details["receiver_recovery_s"] = recoveries
        summary.details["worker_reconnects"] = len(stack.worker_events("broker.connection_lost"))
    return summary


# --- the CloudAMQP API failing -------------------------------------------------------------


async def api_unavailable(env: Env, faults: Faults) -> Summary:
    """The API answers 503 for ``api_outage`` seconds from the first alarm on, then is
    healthy: durable retries carry every upgrade through, each exactly once."""
    plan = plan_alarms(faults.size, "api503")
    async with stand_in(latency=0.02) as api, env.vhost() as amqp:
        db = env.sqlite()
        async with stack_of(stack_env(amqp, db, api, plan.managed), env.workdir, 2) as stack:
            api.fail_until = time.monotonic() + faults.api_outage
            log = await send(
                stack.base, plan, faults.size.rate, deadline=_send_deadline(plan, faults.size, 60)
            )
            summary = await _finish("api-503", stack, plan, log, api, amqp, db, faults)
    return summary


async def api_hang(env: Env, faults: Faults) -> Summary:
    """The API accepts connections and never answers for ``api_hang`` seconds, past the
    worker's CLOUDAMQP_API_TIMEOUT (2 s), then is healthy.

    The timeout must stay well above what the stand-in, sharing this loaded process, takes
    once healthy: with 0.5 s it once answered a request in 0.5 s that it had carried out, the
    worker had given up on it, and its retry upgraded the instance again. That is the real
    limit of the ``actions`` API (README: a call that times out after CloudAMQP took it is
    repeated), not what this scenario is about."""
    plan = plan_alarms(faults.size, "hang")
    async with stand_in(latency=0.02) as api, env.vhost() as amqp:
        db = env.sqlite()
        senv = stack_env(amqp, db, api, plan.instances, CLOUDAMQP_API_TIMEOUT="2")
        async with stack_of(senv, env.workdir, 2) as stack:
            api.hang_until = time.monotonic() + faults.api_hang
            log = await send(
                stack.base, plan, faults.size.rate, deadline=_send_deadline(plan, faults.size, 60)
            )
            summary = await _finish("api-hang", stack, plan, log, api, amqp, db, faults)
    return summary


# --- the state store going away ------------------------------------------------------------


async def _refuse_connections(admin_url: str, database: str, seconds: float) -> int:
    """For ``seconds``: no new connections to ``database`` and every existing one killed
    (``pg_terminate_backend``), again and again. Returns how many backends were killed."""
    import asyncpg

    admin = await asyncpg.connect(admin_url, timeout=5)
    killed = 0
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) AS gone FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            killed += sum(1 for r in rows if r["gone"])
            await asyncio.sleep(0.2)  # the outage's own rhythm
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    return killed


async def store_unavailable(env: Env, faults: Faults, mode: str = "actions") -> Summary:
    """PostgreSQL store; the moment the first upgrade request reaches the API (which takes
    0.3 s to answer), the database starts refusing connections and terminating every open
    one, for ``store_outage`` seconds: upgrades that succeed at CloudAMQP must still be
    recorded once, and never repeated."""
    plan = plan_alarms(faults.size, "store")
    async with (
        stand_in(latency=0.3) as api,
        env.vhost() as amqp,
        env.postgres() as (db, name),
        stack_of(stack_env(amqp, db, api, plan.managed, UPGRADE_API=mode), env.workdir, 2) as stack,
    ):
        log = SendLog()
        deadline = _send_deadline(plan, faults.size, 60)
        sender = asyncio.create_task(send(stack.base, plan, faults.size.rate, deadline=deadline, log=log))
        await wait_until(lambda: api.arrived >= 1, timeout=30, interval=0.01, what="an upgrade in flight")
        killed = await _refuse_connections(env.services.postgres_url, name, faults.store_outage)
        log = await sender
        summary = await _finish(f"store-outage/{mode}", stack, plan, log, api, amqp, db, faults)
    summary.details["backends_killed"] = killed
    return summary


async def store_unavailable_instances(env: Env, faults: Faults) -> Summary:
    return await store_unavailable(env, faults, "instances")


# --- the broker connection dropping while an upgrade call is in flight ----------------------


async def broker_drop_mid_call(env: Env, faults: Faults) -> Summary:
    """``actions`` mode (the default). The workers reach the broker through a TCP proxy; the
    moment an upgrade request reaches the API (which takes 1 s to answer), the proxy cuts
    the workers' connections, and restores them a second later. The worker is alive and
    its call succeeds: it should record that, so that the redelivery is a no-op."""
    plan = plan_alarms(faults.size, "drop")
    proxy = TcpProxy(5672)
    await proxy.start()
    try:
        async with stand_in(latency=1.0) as api, env.vhost() as amqp:
            db = env.sqlite()
            via_proxy = {"RABBITMQ_URL": amqp.replace(":5672/", f":{proxy.port}/")}
            async with stack_of(stack_env(amqp, db, api, plan.managed), env.workdir, 2, via_proxy) as stack:
                log = SendLog()
                deadline = _send_deadline(plan, faults.size, 60)
                sender = asyncio.create_task(
                    send(stack.base, plan, faults.size.rate, deadline=deadline, log=log)
                )
                await wait_until(
                    lambda: api.arrived >= 1, timeout=30, interval=0.01, what="an upgrade in flight"
                )
                in_flight = api.in_flight()
                await proxy.cut()
                await wait_until(
                    lambda: stack.worker_events("broker.connection_lost"),
                    timeout=10,
                    what="the drop to be seen",
                )
                await proxy.start()
                log = await sender
                summary = await _finish("broker-drop-call", stack, plan, log, api, amqp, db, faults)
    finally:
        await proxy.cut()
    summary.details["calls_in_flight_at_drop"] = in_flight
    return summary


# --- a 3-node cluster losing a node ----------------------------------------------------------


def _starting_at(cluster: OwnCluster, first: int) -> str:
    """``RABBITMQ_URL`` listing every node, ``first`` first: where a process connects first."""
    n = len(cluster.nodes)
    return ",".join(cluster.urls[(first + k) % n] for k in range(n))


async def _replication(cluster: OwnCluster) -> tuple[dict[str, int], list[str]]:
    """Members per queue of ours, and what is wrong: every queue must be a quorum queue with
    a member on each node."""
    members = await cluster.queue_members()
    wanted = {node.node for node in cluster.nodes}
    counts, wrong = {}, []
    for name in queue_names():
        row = members.get(name)
        if row is None:
            wrong.append(f"{name}: not declared")
            continue
        counts[name] = len(row["members"])
        if row["type"] != "quorum" or set(row["members"]) != wanted:
            wrong.append(f"{name}: {row['type']} on {sorted(row['members'])}")
    return counts, wrong


async def _declare_on(url: str) -> None:
    """Declare our topology through one node, once the cluster has formed: the queues get a
    member on every node (nothing in our declare arguments limits the group size)."""
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        await topology.declare_topology(await connection.channel(), RETRY_DELAYS)


def _node_of(proc: Any) -> str | None:
    """``host:port`` of the node a process last connected to (its ``broker.connected`` log)."""
    events = proc.events("broker.connected")
    return str(events[-1]["node"]) if events else None


async def _on_cluster(
    env: Env, faults: Faults, name: str, prefix: str, victim: Callable[[OwnCluster, Stack], Awaitable[int]]
) -> Summary:
    """A receiver and two workers on a 3-node cluster of our own, spread over the nodes (each
    process lists every node in RABBITMQ_URL, starting with a different one): the receiver
    on a follower of ``cloudamqp.alarms``, one worker on its leader, one on the other
    follower. Under load, ``broker_cycles`` times: the node ``victim`` picks is stopped
    (graceful, then SIGKILL on odd cycles) and, after ``broker_outage`` seconds, started
    again. 202s must go on while it is down — failover, not waiting for the node."""
    reason = OwnCluster.available()
    if reason is not None:
        return Summary(name, 0, 0, 0, 0, 0, 0, details={"failed_checks": [f"no cluster: {reason}"]})
    cluster = OwnCluster(env.workdir)
    plan = plan_alarms(faults.size, prefix)
    # Slow enough that the sending spans every cycle (a stop, an election, the outage, a
    # restart: up to half a minute on a busy machine).
    rate = min(faults.size.rate, len(plan.alarms) / ((25.0 + faults.broker_outage) * faults.broker_cycles))
    checks: list[str] = []
    details: dict[str, Any] = {}
    try:
        started = time.monotonic()
        await cluster.start()
        details["cluster_start_s"] = round(time.monotonic() - started, 1)
        await _declare_on(cluster.urls[0])
        replicas, wrong = await _replication(cluster)
        checks += wrong
        details["members_per_queue"] = sorted(set(replicas.values()))
        leader = await cluster.leader_of(topology.WORK_QUEUE)
        followers = [i for i in range(len(cluster.nodes)) if i != leader]
        async with stand_in(latency=0.02) as api:
            db = env.sqlite()
            senv = stack_env(cluster.url, db, api, plan.managed, UPGRADE_API="instances")
            stack = Stack(senv, env.workdir)
            try:
                await stack.start_receiver({"RABBITMQ_URL": _starting_at(cluster, followers[0])})
                for first in (leader, followers[1]):
                    await stack.start_worker(overrides={"RABBITMQ_URL": _starting_at(cluster, first)})
                log = SendLog()
                deadline = _send_deadline(plan, faults.size, 120)
                sender = asyncio.create_task(send(stack.base, plan, rate, deadline=deadline, log=log))
                cycles: list[dict[str, Any]] = []
                for cycle in range(faults.broker_cycles):
                    enough = 5 * (cycle + 1)
                    await wait_until(partial(_accepted_at_least, log, enough), timeout=60, what="some 202s")
                    cycles.append(
                        await _lose_a_node(cluster, stack, log, sender, victim, cycle, faults, checks)
                    )
                log = await sender
                assert stack.receiver is not None
                summary = await _finish(name, stack, plan, log, api, cluster.urls[0], db, faults)
                summary.details["cycles"] = cycles
                summary.details["http_503"] = log.statuses.get("503", 0)
                summary.details["worker_reconnects"] = len(stack.worker_events("broker.connection_lost"))
                summary.details["receiver_connects"] = len(stack.receiver.events("broker.connected"))
                replicas, wrong = await _replication(cluster)
                checks += [f"after: {w}" for w in wrong]
            finally:
                await stack.close()
    finally:
        for node in (n for n in cluster.nodes if (n.dir / "log").is_dir()):
            # The nodes' own logs, next to the processes' (``--keep``).
            shutil.copytree(
                node.dir / "log", env.workdir / f"{node.node.split('@')[0]}-log", dirs_exist_ok=True
            )
        await cluster.cleanup()
    summary.details.update(details)
    summary.details["failed_checks"] = checks
    return summary


async def _seconds_until(check: Callable[[], Any], since: float, timeout: float) -> float | None:
    """Seconds from ``since`` until ``check`` holds, or None when it did not within ``timeout``."""
    try:
        await wait_until(check, timeout=timeout, interval=0.05, what="")
    except AssertionError:
        return None
    return round(time.monotonic() - since, 2)


async def _whole(cluster: OwnCluster) -> bool:
    """Every queue of ours has every node's member online again (a restarted node has
    rejoined and caught up: the cluster can lose a node once more)."""
    try:
        members = await cluster.queue_members()
    except AssertionError:
        return False
    everyone = {node.node for node in cluster.nodes}
    return all(set(members.get(name, {}).get("online", [])) == everyone for name in queue_names())


async def _lose_a_node(
    cluster: OwnCluster,
    stack: Stack,
    log: SendLog,
    sender: asyncio.Task[SendLog],
    victim: Callable[[OwnCluster, Stack], Awaitable[int]],
    cycle: int,
    faults: Faults,
    checks: list[str],
) -> dict[str, Any]:
    """One cycle: stop (even cycles) or SIGKILL (odd) the victim node; while it stays down,
    202s must go on and a stopped leader must be replaced; then start it again and wait
    until it has rejoined every queue."""
    index = await victim(cluster, stack)
    node = cluster.nodes[index]
    was_leader = await cluster.leader_of(topology.WORK_QUEUE) == index
    crash = cycle % 2 == 1
    stopped_at = time.monotonic()
    await (node.kill() if crash else node.stop())
    accepted, down_at = len(log.accepted), time.monotonic()
    # The node stays down while these are measured: 202s now come through the others.
    first_202, moved = await asyncio.gather(
        _seconds_until(lambda: len(log.accepted) > accepted or sender.done(), down_at, 60),
        _seconds_until(lambda: _leader_moved(cluster, index), stopped_at, 60) if was_leader else _none(),
    )
    if first_202 is None:
        checks.append(f"cycle {cycle}: no 202 for 60 s while node {index} was down")
    if was_leader and moved is None:
        checks.append(f"cycle {cycle}: the leader did not move off the stopped node in 60 s")
    await asyncio.sleep(faults.broker_outage)  # the rest of the outage
    restart_at = time.monotonic()
    await node.start()
    rejoined = await _seconds_until(lambda: _whole(cluster), restart_at, 120)
    if rejoined is None:
        checks.append(f"cycle {cycle}: node {index} did not rejoin every queue in 120 s")
    gap_end = max(log.accepted_at) if sender.done() else restart_at
    return {
        "stopped": f"node {index}" + (" (leader)" if was_leader else ""),
        "how": "kill" if crash else "stop",
        "stop_s": round(down_at - stopped_at, 2),
        "first_202_once_down_s": first_202,
        "longest_202_gap_s": _longest_gap(log.accepted_at, stopped_at, gap_end),
        "leader_moved_after_s": moved,
        "rejoined_after_s": rejoined,
        "receiver_on": _node_of(stack.receiver),
    }


async def _none() -> None:
    return None


def _longest_gap(times: list[float], start: float, end: float) -> float | None:
    """The longest stretch without a 202 between ``start`` and ``end`` (both counted as edges)."""
    if end <= start:
        return None  # every alarm was in before the stop: no load to measure
    inside = sorted(t for t in times if start < t < end)
    edges = [start, *inside, end]
    return round(max(b - a for a, b in zip(edges, edges[1:], strict=False)), 2)


async def _leader_moved(cluster: OwnCluster, old: int) -> bool:
    """The queue has a leader again, and not on node ``old`` (while electing, none is shown)."""
    try:
        return await cluster.leader_of(topology.WORK_QUEUE) != old
    except (KeyError, AssertionError):
        return False


async def _the_leader(cluster: OwnCluster, stack: Stack) -> int:
    return await cluster.leader_of(topology.WORK_QUEUE)


async def _the_receivers_node(cluster: OwnCluster, stack: Stack) -> int:
    assert stack.receiver is not None
    node = _node_of(stack.receiver)
    assert node is not None, "the receiver never said which node it is connected to"
    index = cluster.index_of(node)
    # The broker's side agrees: that node holds a connection from the receiver's local port.
    import psutil

    ours = {
        c.laddr.port
        for c in psutil.Process(stack.receiver.popen.pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == cluster.nodes[index].port
    }
    theirs = {int(c["peer_port"]) for c in await cluster.connections(index)}
    assert ours & theirs, f"node {index} holds no connection of the receiver ({ours} vs {theirs})"
    return index


async def cluster_leader_stop(env: Env, faults: Faults) -> Summary:
    """The node leading ``cloudamqp.alarms`` stopped under load: a follower takes over the
    queue, the worker connected to the stopped node reconnects to the next one, the other
    worker and the receiver (on followers) carry on."""
    return await _on_cluster(env, faults, "cluster-leader", "leader", _the_leader)


async def cluster_receiver_node_stop(env: Env, faults: Faults) -> Summary:
    """The node the receiver is connected to stopped under load: the receiver publishes
    through the next node in RABBITMQ_URL while that one is still down."""
    return await _on_cluster(env, faults, "cluster-receiver", "recvnode", _the_receivers_node)


SCENARIOS: dict[str, Callable[[Env, Faults], Awaitable[Summary]]] = {
    "worker-kill": worker_kill,
    "broker-restart": broker_restart,
    "broker-drop-call": broker_drop_mid_call,
    "api-503": api_unavailable,
    "api-hang": api_hang,
    "store-outage": store_unavailable,
    "store-outage-instances": store_unavailable_instances,
    "cluster-leader": cluster_leader_stop,
    "cluster-receiver": cluster_receiver_node_stop,
}

# Scenarios that reveal a known, not yet fixed bug: expected to fail (pytest: xfail strict)
# until it is fixed; then remove them from here. Both found so far are fixed: a connection
# drop no longer cancels an upgrade in flight (worker/consumer.py), and a store outage after
# a successful call is waited out instead of forgetting the call (worker/process.py).
KNOWN_BUGS: dict[str, str] = {}
