"""RABBITMQ_URL with several nodes: the receiver and the worker fail over between them.

The "nodes" are TCP proxies in front of the test's vhost on the shared broker, plus a closed
port: a node that refuses at start, and one that goes away for good while both processes are
connected through it. (The 3-node cluster with real node stops is ``make chaos``:
tests/chaos/scenarios.py, ``cluster-*``.)
"""

from __future__ import annotations

from urllib.parse import quote

from shared.publisher import NACKS_BEFORE_RECONNECT
from tests.conftest import vhost_name
from tests.integration.conftest import MakeStack, seed_alarm
from tests.support import Services, TcpProxy, free_port, management_request, wait_until


def _via(vhost: str, port: int) -> str:
    return vhost.replace(":5672/", f":{port}/")


async def test_given_several_nodes_when_the_one_in_use_goes_away_then_both_processes_go_on_through_the_next(
    make_stack: MakeStack, vhost: str
) -> None:
    node_a, node_b = TcpProxy(5672), TcpProxy(5672)
    await node_a.start()
    await node_b.start()
    refusing = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    stack = make_stack(RABBITMQ_URL=f"{refusing},{_via(vhost, node_a.port)},{_via(vhost, node_b.port)}")
    try:
        receiver = await stack.start_receiver()
        worker = await stack.start_worker()
        # The first node refused: both went on to node A, the next in the list.
        assert (await stack.post(seed_alarm()))[0] == 202
        [upgrade] = await stack.wait_actions(1)
        assert upgrade["status"] == "succeeded"
        # (The worker has two connections: the alarm consumer's and the notifier's.)
        node_a_name, node_b_name = f"127.0.0.1:{node_a.port}", f"127.0.0.1:{node_b.port}"
        before = {proc: len(proc.events("broker.connected")) for proc in (receiver, worker)}
        for proc in (receiver, worker):
            assert {e["node"] for e in proc.events("broker.connected")} == {node_a_name}
        assert node_a.writers and not node_b.writers

        await node_a.cut()  # and it stays away

        async def accepted() -> bool:
            return (await stack.post(seed_alarm(value=50)))[0] == 202

        await wait_until(accepted, timeout=10, interval=0.2, what="a 202 through node B")
        await worker.wait_event("worker.ready", count=2, timeout=15)
        actions = await stack.wait_actions(2, timeout=15)
        assert sorted((a["status"], a["reason"]) for a in actions)[0] == ("skipped", "below_threshold")
        assert (await stack.get("/readyz"))[0] == 200
        # After A (lost), B is next: the refusing first node is not where either went.
        for proc in (receiver, worker):
            assert {e["node"] for e in proc.events("broker.connected")[before[proc] :]} == {node_b_name}
            assert ":guest@" not in proc.log_path.read_text(), "a node password in the log"
    finally:
        await node_a.cut()
        await node_b.cut()


async def test_given_the_node_in_use_nacking_every_publish_then_the_receiver_moves_to_the_next_node(
    make_stack: MakeStack, vhost: str, services: Services
) -> None:
    # Two "nodes" in front of one broker; a policy caps the work queue at no message, and its
    # overflow is reject-publish, so every publish is nacked whichever node it comes through.
    node_a, node_b = TcpProxy(5672), TcpProxy(5672)
    await node_a.start()
    await node_b.start()
    stack = make_stack(RABBITMQ_URL=f"{_via(vhost, node_a.port)},{_via(vhost, node_b.port)}")
    policy = f"/api/policies/{quote(vhost_name(vhost), safe='')}/nack-everything"
    try:
        receiver = await stack.start_receiver()
        assert (await stack.post(seed_alarm()))[0] == 202
        await management_request(
            services,
            "PUT",
            policy,
            {"pattern": r"^cloudamqp\.alarms$", "definition": {"max-length": 0}, "apply-to": "queues"},
        )

        async def refused() -> bool:
            return (await stack.post(seed_alarm()))[0] == 503

        for _ in range(NACKS_BEFORE_RECONNECT):
            await wait_until(refused, timeout=10, interval=0.1, what="a nacked alarm answered 503")
        await management_request(services, "DELETE", policy)

        async def accepted() -> bool:
            return (await stack.post(seed_alarm()))[0] == 202

        await wait_until(accepted, timeout=10, interval=0.2, what="a 202 once the broker takes alarms")
        nodes = [e["node"] for e in receiver.events("broker.connected")]
        assert nodes == [f"127.0.0.1:{node_a.port}", f"127.0.0.1:{node_b.port}"], nodes
        assert len(receiver.events("broker.not_confirmed")) >= NACKS_BEFORE_RECONNECT
    finally:
        await node_a.cut()
        await node_b.cut()
