"""The ``autopilot`` operator CLI (``python -m worker.cli``) as an operator runs it: a process
with the deployment's environment, against the real store (both kinds) and broker."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from shared import topology
from shared.alarm import Alarm, event_key, new_id
from shared.policy import Policy, Rule
from shared.settings import Settings
from shared.store import Store
from tests.cloudamqp_stand_in import CloudAmqpStandIn
from tests.integration.conftest import API_KEY, SEED_INSTANCE, seed_alarm
from tests.support import queue_depth, run_command
from worker.cloudamqp import CloudAmqpClient
from worker.process import Processor


async def autopilot(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    done = await run_command("worker.cli", *args, env=env)
    return done.returncode, done.stdout, done.stderr


def cli_env(vhost: str, database_url: str) -> dict[str, str]:
    return {
        "RABBITMQ_URL": vhost,
        "DATABASE_URL": database_url,
        "CLOUDAMQP_INSTANCE_ID": SEED_INSTANCE,
        "LOG_FORMAT": "json",
    }


async def test_given_the_cli_then_pause_shows_in_pauses_and_the_audit_names_the_operator(
    vhost: str, database_url: str
) -> None:
    env = cli_env(vhost, database_url)

    code, out, err = await autopilot(
        env,
        "--json",
        "--operator",
        "bob",
        "pause",
        SEED_INSTANCE,
        "--for",
        "2h",
        "--reason",
        "upgrade window",
    )

    assert code == 0, err
    assert json.loads(out)["paused"] == SEED_INSTANCE
    code, out, _ = await autopilot(env, "pauses", "--json")  # the options go after the subcommand too
    [pause] = json.loads(out)
    assert (
        pause["scope"] == SEED_INSTANCE and pause["operator"] == "bob" and pause["reason"] == "upgrade window"
    )
    code, out, _ = await autopilot(env, "resume", SEED_INSTANCE)
    assert code == 0 and "was_paused: True" in out
    code, out, _ = await autopilot(env, "--json", "audit")
    assert [(e["actor"], e["act"]) for e in json.loads(out)] == [
        (f"cli:{_user()}", "resume"),
        ("bob", "pause"),
    ]


def _user() -> str:
    import getpass

    return getpass.getuser()


async def test_given_a_bad_cli_request_then_one_line_and_a_failing_exit(
    vhost: str, database_url: str
) -> None:
    env = cli_env(vhost, database_url)

    unknown = await autopilot(env, "approve", "0" * 32)
    not_ours = await autopilot(env, "pause", "someone-else", "--for", "1h")
    bad_duration = await autopilot(env, "pause", SEED_INSTANCE, "--for", "soon")

    assert unknown[0] == 1 and unknown[2].strip() == "autopilot: not_found: no action with this id"
    assert not_ours[0] == 1 and "unknown_instance" in not_ours[2]
    assert bad_duration[0] == 2 and "not a duration" in bad_duration[2]


async def test_given_an_upgrade_awaiting_approval_when_approved_from_the_cli_then_the_workers_are_nudged(
    vhost: str, database_url: str, fake_api: CloudAmqpStandIn
) -> None:
    env = {**cli_env(vhost, database_url), "CLOUDAMQP_API_URL": fake_api.url, "CLOUDAMQP_API_KEY": API_KEY}
    settings = Settings.from_env(env)
    store = await Store.open(database_url)
    try:
        async with aiohttp.ClientSession() as session:
            client = CloudAmqpClient(
                session, base_url=fake_api.url, api_key=API_KEY, timeout=5, quick_retries=0
            )
            policy = Policy((Rule("careful", "memory", plan="bunny-2", above=80, approve=True),))
            processor = Processor(settings, store, client, worker_id="w", policy=policy)
            body: dict[str, Any] = seed_alarm()
            alarm = Alarm(new_id(), time.time(), body, event_key(body))
            await processor.process(alarm)
        await _declare(vhost)

        code, out, err = await autopilot(env, "--json", "approve", alarm.event_id, "--reason", "ok")

        assert code == 0, err
        assert json.loads(out)["status"] == "approved"
        assert await queue_depth(vhost, topology.WORK_QUEUE) == 1  # the nudge for the workers
        again = await autopilot(env, "approve", alarm.event_id)
        assert again[0] == 1 and "already_approved" in again[2]
        assert fake_api.upgrade_requests() == []  # the CLI decides; a worker calls
    finally:
        await store.close()


async def _declare(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        await topology.declare_topology(await connection.channel(), (0.2, 0.5))


async def test_given_the_parking_lot_then_autopilot_parked_is_the_old_command_with_json(
    vhost: str, database_url: str
) -> None:
    env = cli_env(vhost, database_url)
    await _declare(vhost)

    code, out, err = await autopilot(env, "--json", "parked", "list")
    old_code, old_out, _ = await autopilot(env, "parked", "list")

    assert code == 0, err
    assert json.loads(out) == []
    assert old_code == 0 and "nothing is parked" in old_out
