"""The suite's fork server (``tests.forkserver``): a receiver or worker it starts behaves as one
``python -m`` starts — the same exit codes and words for a bad start, its own arguments,
environment and pid, and signals handled by the program itself. No broker is needed: the
worker here is pointed at a closed port and retries until it is told to stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import (
    ROOT,
    Forked,
    Proc,
    fork_server,
    forkable,
    free_port,
    inherited_env,
    run_command,
    run_to_exit,
)


async def test_a_bad_start_exits_and_says_what_python_m_does(tmp_path: Path) -> None:
    env = {"RECEIVER_PORT": "not-a-port", "LOG_FORMAT": "json"}
    full_env = inherited_env() | env
    alone = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "receiver"], cwd=ROOT, env=full_env, capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    forked = Proc("receiver", env, tmp_path / "receiver.log")
    assert isinstance(forked.popen, Forked)
    assert await forked.wait() == alone.returncode == 2
    said = forked.log_path.read_text()
    assert said == alone.stdout + alone.stderr
    assert "RECEIVER_PORT='not-a-port' is invalid" in said
    run = await asyncio.to_thread(run_to_exit, "receiver", env)  # through the server too, piped
    assert (run.returncode, run.stdout, run.stderr) == (alone.returncode, alone.stdout, alone.stderr)


async def test_a_forked_program_reads_its_own_arguments(tmp_path: Path) -> None:
    forked = Proc("worker", {}, tmp_path / "worker.log", args=["--bogus"])
    assert await forked.wait() == 2
    assert "python -m worker: error: unrecognized arguments: --bogus" in forked.log_path.read_text()


async def test_a_forked_worker_has_its_own_pid_and_environment_and_handles_sigterm(tmp_path: Path) -> None:
    env = {
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "RECEIVER_PORT": "7107",
    }
    first = Proc("worker", env, tmp_path / "first.log")
    second = Proc("worker", {**env, "RECEIVER_PORT": "7108"}, tmp_path / "second.log")
    try:
        for proc in (first, second):
            assert isinstance(proc.popen, Forked)
            await proc.wait_event("broker.unavailable")
        server = fork_server().process.pid
        assert len({first.popen.pid, second.popen.pid, server}) == 3
        assert psutil.Process(first.popen.pid).ppid() == server
        for proc, port in ((first, 7107), (second, 7108)):
            (starting,) = proc.events("worker.starting")
            assert starting["worker_id"].endswith(f":{proc.popen.pid}")
            assert starting["settings"]["receiver_port"] == port

        first.signal(signal.SIGTERM)
        assert await first.wait() == 0
        assert [e["signal"] for e in first.events("worker.signal")] == ["SIGTERM"]
        assert second.popen.poll() is None  # the other child runs on

        await second.kill()
        assert second.popen.poll() == -signal.SIGKILL
        second.signal(signal.SIGTERM)  # an exited child: nothing to signal, and no error
    finally:  # whatever failed above, no worker is left retrying
        for proc in (first, second):
            await proc.kill()


@pytest.mark.parametrize(
    "args", [("--help",), ("bogus",), ("--json", "pauses")], ids=["help", "bad", "no-store"]
)
async def test_a_command_line_through_the_fork_server_prints_and_exits_as_python_m(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    python = {k: v for k, v in os.environ.items() if k.startswith("PYTHON")}  # what the server has
    env = {**python, "PATH": os.environ["PATH"], "DATABASE_URL": "oracle://x", "LOG_FORMAT": "json"}
    assert forkable("worker.cli", ROOT, env)
    forked = await run_command("worker.cli", *args, env=env, inherit=False)
    alone = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=30,
    )  # fmt: skip
    assert (forked.returncode, forked.stdout, forked.stderr) == (alone.returncode, alone.stdout, alone.stderr)
    assert forked.stdout or forked.stderr


async def test_a_benchmark_starts_a_new_interpreter_never_a_forked_child(tmp_path: Path) -> None:
    """Benchmark 4 times a start and reads a process's memory, and the others compare our
    programs with baselines and other checkouts: each must be ``python -m`` as an operator
    runs it, never a child of the server that has the modules loaded already."""
    from bench.harness import Processes

    env = {
        "RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
    }
    procs = Processes(tmp_path)
    tests: list[Proc] = []
    try:
        worker = procs.spawn("worker", env)
        assert isinstance(worker.popen, subprocess.Popen)
        started = psutil.Process(worker.popen.pid)
        assert started.ppid() == os.getpid()
        assert started.cmdline() == [sys.executable, "-m", "worker"]
        await worker.wait_event("broker.unavailable")
        tests.append(Proc("worker", env, tmp_path / "test.log"))
        assert isinstance(tests[0].popen, Forked)  # a test's own service may fork
    finally:
        for proc in [*procs.procs, *tests]:
            await proc.kill()
