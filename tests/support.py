"""Test helpers: process runners, condition waits, stand-in notification channels (the
CloudAMQP API's stand-in is ``tests.cloudamqp_stand_in``)."""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import itertools
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from shared.db import Row, Tx
from tests import forkserver

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass(frozen=True)
class Services:
    amqp_url: str
    management_url: str
    postgres_url: str


async def management_request(services: Services, method: str, path: str, body: Any = None) -> Any:
    """Call the RabbitMQ management HTTP API (what the UI shows)."""
    parts = urlsplit(services.management_url)
    token = base64.b64encode(f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.request(method, base + path, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        if resp.status >= 400 and not (method == "DELETE" and resp.status == 404):
            raise aiohttp.ClientResponseError(
                resp.request_info, (), status=resp.status, message=await resp.text()
            )
        text = await resp.text()
        return json.loads(text) if text else None


# Two signatures so that a coroutine function's result type is what the wait returns (a check
# whose result mentions Any, such as dict[str, Any], makes the choice ambiguous: Any).
@overload
async def wait_until(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


@overload
async def wait_until(
    check: Callable[[], T | None], *, timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...


async def wait_until(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: last={last!r}")
        await asyncio.sleep(interval)


async def queue_depth(amqp_url: str, queue: str) -> int:
    """Messages ready in ``queue`` (held by no consumer), straight from the broker."""
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)


async def publish_raw(amqp_url: str, body: bytes, event_id: str) -> None:
    """Publish an alarm envelope onto the work queue the way the receiver does (confirmed)."""
    import aio_pika

    from shared import envelope, topology

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(
            body,
            message_id=event_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={envelope.H_EVENT_ID: event_id},
        )
        await channel.default_exchange.publish(message, routing_key=topology.WORK_QUEUE)


# Ports for what a test starts (a receiver, a metrics endpoint, a proxy, a private broker
# node) come from below the kernel's ephemeral range (32768-60999), so no outgoing connection
# takes one between the handing out and the bind, and each pytest-xdist worker (gw0, gw1, …)
# has a block of its own, so no two workers running at once hand out the same port. Each is
# bound for a moment first: one in use (or in TIME_WAIT) is passed over.
PORT_BASE, PORT_BLOCK = 20_000, 500
_ports: Iterator[int] | None = None


def _port_block() -> Iterator[int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = PORT_BASE + PORT_BLOCK * ((int(worker) if worker.isdigit() else 0) % 25)
    start = random.randrange(PORT_BLOCK)  # two runs outside xdist rarely start at one port
    return itertools.cycle([first + (start + n) % PORT_BLOCK for n in range(PORT_BLOCK)])


def free_port() -> int:
    global _ports
    if _ports is None:
        _ports = _port_block()
    for _ in range(PORT_BLOCK):
        port = next(_ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port in this worker's block from {PORT_BASE} (size {PORT_BLOCK})")


# Every log file of a process the suite started, with the secrets that process was given:
# scanned once the session ends (tests/conftest.py), so that no token, key or password
# reaches a log line, whatever the test did.
PROCESS_LOGS: list[tuple[Path, tuple[str, ...]]] = []
SECRET_VARIABLES = ("WEBHOOK_TOKEN", "OPERATOR_TOKEN", "CLOUDAMQP_API_KEY", "CONSOLE_SESSION_KEY")


def secrets_in(env: dict[str, str]) -> tuple[str, ...]:
    """The secret values in a process's environment: tokens and keys, and the password of every
    URL (as ``:password@``: a user name alone is no secret)."""
    found = [env[name] for name in SECRET_VARIABLES if len(env.get(name) or "") >= 6]
    for value in env.values():
        if "://" in value and "@" in value:
            for url in value.split(","):
                password = urlsplit(url.strip()).password
                if password:
                    found.append(f":{password}@")
    return tuple(found)


def leaked_secrets() -> list[str]:
    """``path: secret`` for every secret found in a process log of this session."""
    leaks = []
    for path, secrets in PROCESS_LOGS:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        leaks += [f"{path}: {secret[:4]}…" for secret in secrets if secret in text]
    return leaks


def _parsed(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return {"event": "raw", "text": line}
    return entry if isinstance(entry, dict) else {"event": "raw", "text": line}


def inherited_env() -> dict[str, str]:
    """The environment a process the tests start inherits: this one's, less pytest's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}


class Proc:
    """One of our processes (``python -m receiver`` / ``worker``), logging JSON to a file."""

    def __init__(
        self,
        module: str,
        env: dict[str, str],
        log_path: Path,
        args: list[str] | None = None,
        *,
        cwd: Path = ROOT,
        fork: bool = True,
    ):
        """``cwd``: the checkout whose code runs (another one's, to compare it with this one).
        ``fork``: whether the fork server may start it (a test's service); ``False`` starts a
        new interpreter as an operator does, for what measures the start itself or the whole
        process (the benchmarks)."""
        self.module = module
        self.log_path = log_path
        full_env = inherited_env()
        full_env.update({"LOG_FORMAT": "json", "LOG_LEVEL": "info", "PYTHONUNBUFFERED": "1"})
        full_env.update(env)
        PROCESS_LOGS.append((log_path, secrets_in(full_env)))
        self._offset, self._partial = 0, b""
        self._parsed: list[dict[str, Any]] = []
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.popen: subprocess.Popen[bytes] | Forked
        if fork and forkable(module, cwd, full_env):
            self.popen = fork_server().start(module, args or [], full_env, cwd, [self._log.fileno()])
        else:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", module, *(args or [])],
                cwd=cwd,
                env=full_env,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[dict[str, Any]]:
        """Every line the process has logged so far, parsed (a line that is not JSON as
        ``{"event": "raw", "text": …}``)."""
        self._read()
        return self._parsed + self._tail()

    def events(self, name: str) -> list[dict[str, Any]]:
        self._read()
        return self._events.get(name, []) + [e for e in self._tail() if e.get("event") == name]

    def _read(self) -> None:
        """Parse the lines completed since the last read: a read picks up where the last one
        stopped, so waiting on a long run's log costs what it has written since, not all of it
        every poll (which on a busy log was seconds of CPU beside the process measured)."""
        with open(self.log_path, "rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        self._partial = chunk[end:]
        for raw in chunk[:end].decode(errors="replace").splitlines():
            entry = _parsed(raw)
            self._parsed.append(entry)
            self._events.setdefault(str(entry.get("event")), []).append(entry)

    def _tail(self) -> list[dict[str, Any]]:
        """The last line while it has no newline yet (a crash's last words): parsed, not kept."""
        text = self._partial.decode(errors="replace")
        return [_parsed(text)] if text else []

    async def wait_event(self, name: str, timeout: float = 20.0, count: int = 1) -> list[dict[str, Any]]:
        def seen() -> list[dict[str, Any]]:
            exited = self.popen.poll() is not None  # before the read: then it holds every line
            found = self.events(name)
            if len(found) >= count:
                return found
            if exited:
                raise AssertionError(
                    f"{self.module} exited ({self.popen.returncode}): {self.log_path.read_text()[-2000:]}"
                )
            return []

        return await wait_until(seen, timeout=timeout, what=f"{self.module} {name} x{count}")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    async def stop(self, timeout: float = 20.0) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait(10)

    async def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                self.popen.kill()
                raise AssertionError(f"{self.module} did not exit within {timeout}s")
            await asyncio.sleep(0.05)
        self._log.close()
        return code


class Forked:
    """A process the fork server started, answering what the tests ask of a ``Popen``: its
    pid, ``poll``, ``returncode``, ``send_signal`` and ``kill``. Signals go through a pidfd,
    so one can never reach another process that later took the same pid."""

    def __init__(self, conn: socket.socket):
        self._conn = conn
        self._reply = b""
        pid = self._line(None)
        assert pid is not None
        self.pid = int(pid)
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except ProcessLookupError:  # it has exited already (and been reaped): poll says how
            self._pidfd = None
        self.returncode: int | None = None

    def _line(self, timeout: float | None) -> str | None:
        """The next line the server sends: waiting up to ``timeout`` (forever: None; not at
        all: 0, then None when none has come)."""
        self._conn.settimeout(timeout)
        while b"\n" not in self._reply:
            try:
                chunk = self._conn.recv(64)
            except BlockingIOError:
                return None
            if not chunk:
                raise AssertionError("the fork server closed a child's connection without its exit code")
            self._reply += chunk
        line, self._reply = self._reply.split(b"\n", 1)
        return line.decode()

    def wait(self, timeout: float) -> int:
        """Block until the process has exited (``subprocess.TimeoutExpired`` after ``timeout``)."""
        if self.returncode is None:
            try:
                line = self._line(timeout)
            except TimeoutError:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout) from None
            assert line is not None
            self.returncode = int(line)
            self._closed()
        return self.returncode

    def _closed(self) -> None:
        self._conn.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None and (line := self._line(0)) is not None:
            self.returncode = int(line)
            self._closed()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None and self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):  # exited in between: poll has its code
                signal.pidfd_send_signal(self._pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """This test process's fork server (``tests.forkserver``), started at its first use."""

    def __init__(self, directory: Path):
        # The listening socket is made here and handed to the server: a start connects at once
        # and waits in the backlog while the server is still loading the modules.
        self.path = str(directory / "forkserver.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self._log = open(directory / "forkserver.log", "ab")  # noqa: SIM115 - the process's life
        with listener:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.forkserver", str(listener.fileno())],
                cwd=ROOT,
                env={**inherited_env(), "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
            )
        atexit.register(self.close, directory)

    def close(self, directory: Path) -> None:
        """At the test process's end: the server exits once its stdin closes."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)
        self._log.close()
        shutil.rmtree(directory, ignore_errors=True)

    def start(self, module: str, args: list[str], env: dict[str, str], cwd: Path, fds: list[int]) -> Forked:
        """``python -m module args`` with ``env`` in ``cwd``, writing to ``fds`` (stdout and
        stderr: one for both, or one each)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.path)
        request = {"module": module, "args": args, "env": env, "cwd": str(cwd)}
        socket.send_fds(conn, [json.dumps(request).encode()], fds)
        conn.shutdown(socket.SHUT_WR)  # the request is whole
        return Forked(conn)


_FORK_SERVER: list[ForkServer] = []
_FORK_SERVER_LOCK = threading.Lock()  # run_command runs in a thread


def fork_server() -> ForkServer:
    with _FORK_SERVER_LOCK:
        if not _FORK_SERVER or _FORK_SERVER[0].process.poll() is not None:
            directory = Path(tempfile.mkdtemp(prefix="autopilot-forkserver-"))
            _FORK_SERVER[:] = [ForkServer(directory)]
        return _FORK_SERVER[0]


def forkable(module: str, cwd: Path, env: dict[str, str]) -> bool:
    """Whether the fork server can start ``python -m module`` as it would start alone: one of
    its programs, from this checkout, and the variables Python reads only as it starts
    (``PYTHON*``, but for the buffering the server's children always have) the server's own."""

    def start_up(variables: Mapping[str, str]) -> dict[str, str]:
        return {k: v for k, v in variables.items() if k.startswith("PYTHON") and k != "PYTHONUNBUFFERED"}

    return module in forkserver.PROGRAMS and cwd == ROOT and start_up(env) == start_up(os.environ)


async def run_command(
    module: str, *args: str, env: dict[str, str], inherit: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` to its exit (an operator's command line), stdin not a terminal:
    its exit code and output. ``env`` is added to this process's environment (less pytest's
    own), or stands alone with ``inherit=False``. Through the fork server where it can."""
    full = inherited_env() if inherit else {}
    full.update(env)
    return await asyncio.to_thread(_run, module, list(args), full, timeout)


def _run(
    module: str, args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` with exactly ``env``, to its exit: stdin ``/dev/null``, stdout
    and stderr captured. Forked where it can be, else a new interpreter (killed after
    ``timeout``, either way)."""
    if forkable(module, ROOT, env):
        return _run_forked(module, args, env, timeout)
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, timeout=timeout,
    )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    return subprocess.CompletedProcess([module, *args], done.returncode, out, err)


def _run_forked(
    module: str, args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """``run_command`` through the fork server: stdout and stderr through pipes, read to their end."""
    deadline = time.monotonic() + timeout
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        child = fork_server().start(module, args, env, ROOT, [out_write, err_write])
    finally:
        os.close(out_write)
        os.close(err_write)
    read: dict[int, list[bytes]] = {out_read: [], err_read: []}
    with selectors.DefaultSelector() as selector:
        for fd in read:
            selector.register(fd, selectors.EVENT_READ)
        try:
            while selector.get_map():
                if (left := deadline - time.monotonic()) <= 0:
                    child.kill()
                    raise subprocess.TimeoutExpired([module, *args], timeout)
                for key, _ in selector.select(left):
                    if data := os.read(key.fd, 1 << 16):
                        read[key.fd].append(data)
                    else:
                        selector.unregister(key.fd)
        finally:
            for fd in read:
                os.close(fd)
    code = child.wait(max(deadline - time.monotonic(), 1.0))
    out, err = (b"".join(read[fd]).decode() for fd in (out_read, err_read))
    return subprocess.CompletedProcess([module, *args], code, out, err)


def run_to_exit(module: str, env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one of our modules to its exit (for start-up failures), through the fork server where
    it can (``tests/unit/test_forkserver.py`` holds that a start fails there as it does alone)."""
    return _run(module, [], inherited_env() | env, timeout)


class TcpProxy:
    """A loopback TCP proxy to the broker that a test can cut, restore or pause: a broker
    outage (or a lost ack) for the processes behind it, leaving the machine's broker alone."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    def pause_upstream(self) -> None:
        """Stop forwarding client → broker bytes (acks, publishes); the broker keeps talking."""
        self.flowing.clear()

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()
        self.flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, gated: bool) -> None:
            try:
                while data := await src.read(65536):
                    if gated:
                        await self.flowing.wait()
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))


class OneByOne:
    """The store's ``Unit`` operations, each in a transaction of its own: how the store tests
    exercise them one at a time (the worker groups them in ``Store.unit()``)."""

    def __init__(self, store: Any):
        self._store = store

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            async with self._store.unit() as unit:
                return await getattr(unit, name)(*args, **kwargs)

        return call


def prometheus_samples(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@dataclass
class Delivery:
    """One request a stand-in channel received, and what it answered."""

    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    status: int
    at: float  # time.monotonic() on arrival
    problem: str | None = None  # why the stand-in refused it (bad signature, bad event)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


def verify_standard_webhook(secret: str, headers: dict[str, str], raw: bytes, now: float) -> str | None:
    """Check a delivery the way the Standard Webhooks spec says, with our own code: the
    timestamp within 5 minutes, and one ``v1,`` signature equal to HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` under the base64 key after ``whsec_``. None when valid."""
    import hashlib
    import hmac

    msg_id, stamp, signatures = (
        headers.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (msg_id and stamp and signatures):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if abs(now - int(stamp)) > 300:
        return "timestamp too far from now"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + raw, hashlib.sha256).digest())
    for signature in signatures.split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return None
    return "no valid v1 signature"


@dataclass
class FakeChannel:
    """A loopback server standing in for a notification receiver: a Standard Webhooks
    consumer (``secret`` set: it verifies every delivery with our own HMAC code *and* with
    the ``standardwebhooks`` package, and refuses a bad one with 400), a Slack incoming
    webhook, or PagerDuty's Events API v2 (``pagerduty_key`` set: it checks the event).

    Scriptable: ``script`` lists answers to give in order (a status, a (status, headers)
    pair, or ``"hang"``), then ``default_status``; until ``failing_until`` (monotonic) every
    request gets ``failing_status``; ``hold`` keeps each answer waiting until it is set."""

    secret: str | None = None
    pagerduty_key: str | None = None
    script: list[Any] = field(default_factory=list)
    default_status: int = 200
    failing_until: float = 0.0
    failing_status: int = 500
    hold: asyncio.Event | None = None
    received: list[Delivery] = field(default_factory=list)
    # HEAD / OPTIONS (``autopilot check``'s reachability probes): answered ``probe_status``
    # (a POST-only endpoint's 405 by default) and kept apart from the deliveries.
    probe_status: int = 405
    probes: list[Delivery] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        app.router.add_route("HEAD", "/{tail:.*}", self._probe)
        app.router.add_route("OPTIONS", "/{tail:.*}", self._probe)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._release.set()
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def accepted(self) -> list[Delivery]:
        """The requests answered 2xx."""
        return [d for d in self.received if 200 <= d.status < 300]

    def of_type(self, event_type: str) -> list[Delivery]:
        return [d for d in self.accepted() if isinstance(d.body, dict) and d.body.get("type") == event_type]

    def _problem(self, request: web.Request, raw: bytes, body: Any) -> str | None:
        if self.secret is not None:
            import standardwebhooks

            headers = {k.lower(): v for k, v in request.headers.items()}
            own = verify_standard_webhook(self.secret, headers, raw, time.time())
            if own is not None:
                return own
            try:
                standardwebhooks.Webhook(self.secret).verify(raw, headers)
            except Exception as exc:
                return f"standardwebhooks refused it: {exc}"
            if not (isinstance(body, dict) and {"type", "timestamp", "data"} <= set(body)):
                return "body is not {type, timestamp, data}"
        if self.pagerduty_key is not None:
            return _pagerduty_problem(request.path, body, self.pagerduty_key)
        return None

    async def _probe(self, request: web.Request) -> web.StreamResponse:
        self.probes.append(
            Delivery(request.path, dict(request.headers), b"", None, self.probe_status, time.monotonic())
        )
        return web.Response(status=self.probe_status)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode(errors="replace")
        problem = self._problem(request, raw, body)
        step = self.script.pop(0) if self.script else self.default_status
        if time.monotonic() < self.failing_until:
            step = self.failing_status
        status, headers = step if isinstance(step, tuple) else (step, {})
        if problem is not None:
            status, headers = 400, {}
        record = Delivery(request.path, dict(request.headers), raw, body, 0, time.monotonic(), problem)
        self.received.append(record)
        if status == "hang":
            record.status = -1
            await self._release.wait()
            raise web.HTTPServiceUnavailable()
        if self.hold is not None:
            await self.hold.wait()
        record.status = int(status)
        return web.json_response({"status": status, "problem": problem}, status=int(status), headers=headers)


@asynccontextmanager
async def notification_channels(
    secret: str, routing_key: str, *, webhooks: int = 1
) -> AsyncIterator[dict[str, FakeChannel]]:
    """The three channels' stand-ins, started: ``webhook`` (and ``webhook2``, … for more)
    signing with ``secret``, ``slack``, and ``pagerduty`` answering 202 for ``routing_key``."""
    fakes = {f"webhook{n if n > 1 else ''}": FakeChannel(secret=secret) for n in range(1, webhooks + 1)}
    fakes |= {"slack": FakeChannel(), "pagerduty": FakeChannel(pagerduty_key=routing_key, default_status=202)}
    for fake in fakes.values():
        await fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            await fake.stop()


def _pagerduty_problem(path: str, body: Any, routing_key: str) -> str | None:
    """What PagerDuty's Events API v2 would refuse in this request, or None."""
    if not isinstance(body, dict) or body.get("routing_key") != routing_key:
        return "wrong routing_key"
    if path == "/v2/change/enqueue":
        payload = body.get("payload") or {}
        return (
            None
            if payload.get("summary") and payload.get("source")
            else "change event without summary/source"
        )
    if path != "/v2/enqueue":
        return f"unknown path {path}"
    action = body.get("event_action")
    if action not in {"trigger", "acknowledge", "resolve"}:
        return "bad event_action"
    if action != "trigger":
        return None if body.get("dedup_key") else "resolve without dedup_key"
    payload = body.get("payload") or {}
    if not (payload.get("summary") and payload.get("source")):
        return "trigger without summary/source"
    if payload.get("severity") not in {"critical", "error", "warning", "info"}:
        return "bad severity"
    return None


async def store_refuses(store: Any, table: str, operation: str, column: str, value: str) -> None:
    """Make the store itself refuse the rows of ``table`` whose ``column`` is ``value`` on
    ``operation`` (INSERT or UPDATE), as a real store refuses a value: a trigger, on SQLite and
    PostgreSQL alike."""
    async with store.db.transaction() as tx:
        if store.db.dialect == "sqlite":
            await tx.execute(
                f"""CREATE TRIGGER refuse BEFORE {operation} ON {table} WHEN NEW.{column} = '{value}'
                    BEGIN SELECT RAISE(ABORT, 'refused by the store'); END"""
            )
            return
        await tx.execute(
            f"""CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN
                  IF NEW.{column} = '{value}' THEN RAISE EXCEPTION 'refused by the store'; END IF;
                  RETURN NEW; END $$ LANGUAGE plpgsql"""
        )
        await tx.execute(
            f"CREATE TRIGGER refuse BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


class Recording:
    """A transaction that runs every statement as it is and keeps what it ran."""

    def __init__(self, tx: Tx):
        self.tx = tx
        self.dialect = tx.dialect
        self.ran: list[tuple[str, tuple[Any, ...]]] = []

    async def execute(self, sql: str, *args: Any) -> None:
        self.ran.append((sql, args))
        await self.tx.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        self.ran.append((sql, args))
        return await self.tx.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        self.ran.append((sql, args))
        return await self.tx.fetchrow(sql, *args)
