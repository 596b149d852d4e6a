"""The confirmation sweep: an accepted upgrade whose chain of check messages was lost (a
delay queue holding them after a cluster node's loss does the same) is still confirmed,
because the store knows it awaits confirmation and one worker sends it a fresh check."""

from __future__ import annotations

from urllib.parse import quote

from shared import topology
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.conftest import vhost_name
from tests.integration.conftest import MakeStack, Stack, seed_alarm, seed_instance
from tests.support import Services, management_request, wait_until

DELAYS = (0.2, 0.5)


async def purge_every_queue(services: Services, amqp_url: str) -> None:
    vhost = quote(vhost_name(amqp_url), safe="")
    # A delay queue dead-letters into the work queue when its message's TTL ends: emptied
    # first (all_queues lists the parking lot, the work queues, then the delay queues), so a
    # check that moves on while we purge lands in a queue not yet purged, never one already
    # purged (where it would survive and be confirmed with no sweep).
    for name, _ in reversed(topology.all_queues(DELAYS)):
        await management_request(services, "DELETE", f"/api/queues/{vhost}/{quote(name, safe='')}/contents")


async def test_given_an_accepted_upgrade_whose_checks_were_lost_then_the_sweep_confirms_it(
    make_stack: MakeStack, fake_api: CloudAmqpStandIn, services: Services
) -> None:
    seed = seed_instance(fake_api, "bunny-1")
    fake_api.reconfigure_seconds = 3600  # CloudAMQP still upgrading: the check chain keeps going
    stack: Stack = make_stack(UPGRADE_API="instances", RETRY_DELAYS=",".join(map(str, DELAYS)))
    await stack.start_receiver()
    first = await stack.start_worker()
    status, accepted = await stack.post(seed_alarm())
    assert status == 202
    await first.wait_event("upgrade.waiting", timeout=30)

    # The chain is lost: its worker stops (settling its check into a delay queue), and every
    # queue is emptied. Then CloudAMQP finishes the upgrade.
    await first.stop()
    await purge_every_queue(services, stack.env["RABBITMQ_URL"])
    seed.finish()
    second = await stack.start_worker()

    async def confirmed() -> bool:
        rows = [a for a in await stack.actions() if a["event_id"] == accepted["id"]]
        return bool(rows) and rows[0]["status"] == "succeeded"

    await wait_until(confirmed, timeout=30, what="the upgrade confirmed")
    # (The sweep logs after its publish and its write; the check may be quicker.)
    assert len(await second.wait_event("upgrade.check_resent")) == 1
    assert len(fake_api.upgrade_requests()) == 1
