"""The one stand-in for the CloudAMQP customer API, shared by the tests, the chaos suite and
the benchmarks. It answers as CloudAMQP's own clients have recorded it answering
(``../shared/CLOUDAMQP-API.md``; ``docs/cloudamqp-api.md`` says which fact comes from where):

- HTTP Basic auth, empty user, the key as password; anything else ``401 {"error":"Not authorized"}``;
- instances with integer ``id``, ``name`` and ``providerid`` (the console's UUID);
  ``GET /api/instances``, ``GET /api/instances/{id}`` (with ``ready``, and the ``url`` and
  ``apikey`` secrets a client must never log), ``GET /api/instances/{id}/nodes`` (``configured``);
- ``PUT /api/instances/{id}`` with ``plan`` as a form or as JSON: 200, then ``ready: false``
  for ``reconfigure_seconds``, then the new plan and ``ready: true``; while not ready, 422
  "Please wait for your cluster to be configured…"; shared ↔ dedicated: 422;
- ``PUT /api/instances/{id}/disk`` with ``{"extra_disk_size", "allow_downtime"}``: 200 "Disk
  resize started.", then every node ``configured: false`` for ``reconfigure_seconds``, then the
  nodes' ``additional_disk_size`` is the new size; a size not in 0/25/…/2000 is 400 (error_code
  40007); a shared plan, a shrink without downtime, or a second resize without downtime within
  the region's limit (6 h on AWS, 4 h on Google Cloud, by ``clock``) are refused with 400 (their
  wording is the stand-in's own: no public source records it);
- ``GET /api/plans`` with the prices recorded in November 2025 (``plans_status``: answer it with
  that status instead, as an API that does not answer it);
- the blog's ``POST /api/instances/{id}/actions/upgrade`` (Bearer key) as a switch: ``blog``
  ``"answers"`` (200, and the change happens as a PUT's would) or ``"absent"`` (404, as the
  documented service, which has no such endpoint) or ``"refuses"`` (401).

Scriptable: ``script`` lists answers for the coming changes — plan changes and disk resizes
alike — (a status, ``(status, headers)``, ``(status, headers, body)``, ``"hang"`` (never
answered, nothing done) or ``"lost"`` (carried out, then never answered: a response lost on
its way back)), then
``default_status`` when set; ``latency``; ``hold`` (each change waits for the event);
``fail_until`` / ``hang_until`` (monotonic) answer every API request 503, or never. A request
that arrived is carried out even when its client hung up (aiohttp's
``handler_cancellation=False``), as a real API does.

Each instance's own RabbitMQ management API answers too, at ``management_url(instance)``
(``/management/{id}``, the instance's user and password as in its ``url``): ``GET
/api/nodes`` with one node per ``nodes``, RabbitMQ's figures — ``mem_used`` (``mem_used``, or
``load(clock())`` where a load curve is given), ``mem_limit`` (the plan's, ``mem_limit_of``:
it grows when a plan change is done), ``disk_free`` and ``disk_free_limit``. Its reads are
counted (``management_reads``), not recorded among the API's requests.

Time: ``clock`` (default ``time.time``) dates plan changes (``Instance.changes_made``); with a
clock of its own (a test's or a benchmark's accelerated one) a change is done once that clock
passes ``reconfigure_seconds`` after it was accepted, seen at the next request or ``settle()``.

In its own process (benchmarks): ``python -m tests.cloudamqp_stand_in --port P --latency 0.05
--key K --instances a,b,c``; ``GET /_stand_in/requests`` lists ``[[epoch, method, path,
status], …]``, ``DELETE`` clears them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

DEFAULT_KEY = "test-api-key-5f1c9a"

# ``GET /api/plans`` as recorded in November 2025 (name: monthly USD); lemur and tiger are shared.
PRICES: dict[str, int] = {
    "lemur": 0, "tiger": 19, "squirrel-1": 50, "bunny-1": 99, "hare-1": 199, "bunny-3": 297,
    "rabbit-1": 299, "panda-1": 499, "hare-3": 597, "rabbit-3": 897, "ape-1": 999, "rabbit-5": 1495,
    "panda-3": 1497, "hippo-1": 1999, "panda-5": 2495, "ape-3": 2997, "lion-1": 3499, "ape-5": 4995,
    "rhino-1": 5499, "hippo-3": 5997, "hippo-5": 9995, "lion-3": 10497, "rhino-3": 16497,
    "lion-5": 17495, "rhino-5": 27495,
}  # fmt: skip
SHARED_PLANS = frozenset({"lemur", "tiger"})
# A node's ``mem_limit`` per plan family: each family has twice the memory of the one below it
# (the autopilot's PLAN_MEMORY_STEP default assumes as much; the prices above are recorded,
# these figures are not), bunny's 1 GB.
FAMILIES = ("squirrel", "bunny", "hare", "rabbit", "panda", "ape", "hippo", "lion", "rhino")
BUNNY_MEM_LIMIT = 1_000_000_000
GB = 1_000_000_000


def mem_limit_of(plan: str) -> int:
    """The ``mem_limit`` of a node on ``plan`` (a shared or unknown plan: squirrel's)."""
    family = plan.rsplit("-", 1)[0]
    rung = FAMILIES.index(family) if family in FAMILIES else 0
    return int(BUNNY_MEM_LIMIT * 2.0 ** (rung - 1))


NOT_AUTHORIZED = {"error": "Not authorized"}
RECONFIGURING = {
    "message": "Your cluster is being reconfigured, this can take up to 10 minutes to complete. "
}
WAIT_FOR_CONFIGURED = {"error": "Please wait for your cluster to be configured before trying to update it"}
NO_SHARED_MOVE = {
    "error": "Sorry, you can't move to a shared plan automatically. Please create a new instance."
}
# The disk: extra sizes CloudAMQP sells (GB), and how often it resizes without downtime, by
# the region's provider (Azure: no limit).
EXTRA_DISK_SIZES = (0, 25, 50, 100, 250, 500, 1000, 2000)
RESIZE_INTERVALS = {"amazon-web-services": 6 * 3600.0, "google-compute-engine": 4 * 3600.0}
DISK_RESIZE_STARTED = {"message": "Disk resize started."}
INVALID_DISK_SIZE = {"error": "Invalid disk size", "error_code": 40007}
# The refusals below are documented facts (dedicated plans only, shrinking needs downtime, the
# interval) in words of the stand-in's own: no public source records CloudAMQP's.
DISK_NOT_ON_SHARED = {"error": "Disk resize is only available on dedicated plans"}
DISK_SHRINK_NEEDS_DOWNTIME = {"error": "Shrinking the disk requires downtime"}
# What a scripted refusal says when the script gives no body (the documented shapes).
DEFAULT_BODIES: dict[int, dict[str, Any]] = {
    400: {"error": "Bad request", "error_code": 40002},
    401: NOT_AUTHORIZED,
    403: {"error": "Forbidden"},
    404: {"error": "Not found"},
    405: {"error": "Method not allowed"},
    422: WAIT_FOR_CONFIGURED,
    423: {"error": "Locked"},
    429: {"error": "Too many requests"},
    500: {"error": "Internal server error"},
    503: {"error": "Service unavailable"},
}


@dataclass
class Change:
    """A plan change CloudAMQP accepted, dated by the stand-in's clock."""

    plan_from: str
    plan_to: str
    accepted_at: float
    ready_at: float | None = None  # when it was done (None: still reconfiguring)


@dataclass
class Instance:
    """One instance as CloudAMQP keeps it."""

    id: int
    name: str
    plan: str
    providerid: str = field(default_factory=lambda: str(uuid.uuid4()))
    nodes: int = 1
    ready: bool = True
    extra_disk: int = 0
    region: str = "amazon-web-services::us-east-1"
    changes: int = 0  # plan changes applied
    target: str | None = None  # the plan a change under way is moving to
    ready_at: float | None = None  # when the last change was done (time.time(), or the clock's)
    due_at: float | None = None  # when the change under way is done, by the stand-in's clock
    changes_made: list[Change] = field(default_factory=list)
    disk_target: int | None = None  # the extra disk a resize under way is moving to (GB)
    disk_resized_at: float | None = None  # the stand-in's clock when the last resize started
    resizes: int = 0  # disk resizes applied
    # What its RabbitMQ nodes report (``GET /api/nodes`` of its management API).
    mem_limit: int = 0  # 0: the plan's (``mem_limit_of``)
    mem_used: int = 0
    load: Callable[[float], float] | None = None  # mem_used at a time of the clock, when given
    disk_free: int = 40 * GB
    disk_free_limit: int = 50_000_000

    def __post_init__(self) -> None:
        self.mem_limit = self.mem_limit or mem_limit_of(self.plan)

    @property
    def configured(self) -> bool:
        """What every node's ``configured`` says: no change under way."""
        return self.ready and self.disk_target is None

    def finish(self, at: float | None = None) -> None:
        """CloudAMQP is done reconfiguring: the new plan (and its memory) or disk, ready again."""
        if self.target is not None:
            self.plan, self.target, self.ready = self.target, None, True
            self.mem_limit = mem_limit_of(self.plan)
            self.changes += 1
            self.ready_at = time.time() if at is None else at
            self.due_at = None
            if self.changes_made and self.changes_made[-1].ready_at is None:
                self.changes_made[-1].ready_at = self.ready_at
        if self.disk_target is not None:
            self.extra_disk, self.disk_target = self.disk_target, None
            self.resizes += 1
            self.ready_at = time.time() if at is None else at

    def rabbitmq_nodes(self, now: float) -> list[dict[str, Any]]:
        """``GET /api/nodes`` of its management API at ``now``, as RabbitMQ shapes it."""
        used = round(self.load(now)) if self.load is not None else self.mem_used
        return [
            {
                "name": f"rabbit@{self.name}-0{n}",
                "type": "disc",
                "running": True,
                "mem_used": used,
                "mem_limit": self.mem_limit,
                "mem_alarm": used >= self.mem_limit,
                "disk_free": self.disk_free,
                "disk_free_limit": self.disk_free_limit,
                "disk_free_alarm": self.disk_free <= self.disk_free_limit,
                "fd_used": 40,
                "sockets_used": 0,
            }
            for n in range(1, self.nodes + 1)
        ]

    def listing(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "plan": self.plan,
            "region": self.region,
            "tags": [],
            "providerid": self.providerid,
            "vpc_id": None,
        }

    def detail(self) -> dict[str, Any]:
        host = f"{self.name}.rmq.cloudamqp.test"
        return {
            **self.listing(),
            "ready": self.ready,
            "nodes": self.nodes,
            "backend": "rabbitmq",
            "rmq_version": "3.13.7",
            "hostname_external": host,
            "hostname_internal": host,
            # Secrets a client must never log, record or show.
            "url": f"amqps://{self.name}:instance-password-{self.id}@{host}/{self.name}",
            "apikey": f"instance-apikey-{self.id}",
        }

    def node_list(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f"{self.name}-0{n}",
                "hostname": f"{self.name}-0{n}.rmq.cloudamqp.test",
                "running": True,
                "configured": self.configured,
                "rabbitmq_version": "3.13.7",
                "erlang_version": "26.2.5",
                "disk_size": 20,
                "additional_disk_size": self.extra_disk,
                "availability_zone": "us-east-1a",
            }
            for n in range(1, self.nodes + 1)
        ]


@dataclass
class Recorded:
    """One request the stand-in received, and what it answered (``"hang"``: nothing)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | str = 0
    at: float = 0.0  # time.monotonic() on arrival
    wall: float = 0.0  # time.time() on arrival
    answered_at: float = 0.0  # time.monotonic() when answered

    @property
    def instance(self) -> str:
        return self.path.removeprefix("/api/instances/").split("/")[0]

    @property
    def plan_change(self) -> bool:
        return (self.method == "PUT" and self.path.count("/") == 3) or self.path.endswith("/actions/upgrade")

    @property
    def disk_change(self) -> bool:
        return self.method == "PUT" and self.path.count("/") == 4 and self.path.endswith("/disk")


@dataclass
class CloudAmqpStandIn:
    """A local aiohttp server answering as CloudAMQP's customer API (see the module doc)."""

    api_key: str = DEFAULT_KEY
    blog: str = "answers"  # the blog's POST …/actions/upgrade: "answers" | "absent" | "refuses"
    reconfigure_seconds: float = 0.0
    script: list[Any] = field(default_factory=list)
    default_status: int | None = None
    latency: float = 0.0
    hold: asyncio.Event | None = None
    fail_until: float = 0.0
    hang_until: float = 0.0
    echo_headers: bool = False  # a careless API that repeats the credentials in its errors
    plans_status: int | None = None  # GET /api/plans answers this instead (503: the API is down)
    clock: Callable[[], float] = time.time  # dates plan changes and counts the disk resize interval
    management_reads: Counter[str] = field(default_factory=Counter)  # per instance name
    instances: dict[int, Instance] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _next_id: int = 359559

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- set-up --------------------------------------------------------------------------

    def add_instance(
        self, name: str, plan: str = "bunny-1", *, id: int | None = None, providerid: str | None = None,
        nodes: int = 1,
    ) -> Instance:  # fmt: skip
        """An instance of the account (integer id from 359559 on, unless given)."""
        if id is None:
            id = max([self._next_id - 1, *self.instances]) + 1
        self._next_id = max(self._next_id, id + 1)
        instance = Instance(id, name, plan, nodes=nodes)
        if providerid is not None:
            instance.providerid = providerid
        self.instances[id] = instance
        return instance

    def find(self, ref: str) -> Instance | None:
        """The instance ``ref`` names: its id, or (the blog's world) its UUID or name."""
        for instance in self.instances.values():
            if ref in (str(instance.id), instance.providerid, instance.name):
                return instance
        return None

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/_stand_in/requests", self._requests_view)
        app.router.add_get("/management/{id}/api/nodes", self._rabbitmq_nodes)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self._released.set()
        if self.hold is not None:
            self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def management_url(self, instance: Instance) -> str:
        """The instance's RabbitMQ management API, with its user and password (as in its ``url``)."""
        user = f"{instance.name}:instance-password-{instance.id}"
        return f"http://{user}@127.0.0.1:{self.port}/management/{instance.id}"

    def settle(self) -> None:
        """Finish every plan change whose reconfiguration is over by the stand-in's clock."""
        now = self.clock()
        for instance in self.instances.values():
            if instance.target is not None and instance.due_at is not None and instance.due_at <= now:
                instance.finish(instance.due_at)

    # --- what the tests read -------------------------------------------------------------

    def upgrade_requests(self) -> list[Recorded]:
        """Plan changes asked for (``PUT /api/instances/{id}`` or the blog's POST), answered or not."""
        return [r for r in self.requests if r.plan_change]

    def disk_requests(self) -> list[Recorded]:
        """Disk resizes asked for (``PUT /api/instances/{id}/disk``), answered or not."""
        return [r for r in self.requests if r.disk_change]

    def reads(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "GET"]

    def successes(self) -> Counter[str]:
        """Plan changes answered 2xx, per instance name (as the path named it, if unknown)."""
        return Counter(
            self._name(r.instance)
            for r in self.upgrade_requests()
            if isinstance(r.status, int) and 200 <= r.status < 300
        )

    def outcomes(self) -> Counter[str]:
        """``"PUT 200"``, ``"POST hang"``…: every request by method and answer."""
        return Counter(f"{r.method} {r.status}" for r in self.requests)

    def in_flight(self) -> int:
        """Plan changes that arrived and are not answered yet."""
        return sum(1 for r in self.upgrade_requests() if r.status == 0)

    def _name(self, ref: str) -> str:
        found = self.find(ref)
        return found.name if found is not None else ref

    @property
    def arrived(self) -> int:
        return len(self.upgrade_requests())

    # --- the API -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()  # all of it arrived, whatever follows
        self.settle()
        record = Recorded(
            request.method, request.path, dict(request.headers), _body(raw, request.content_type),
            at=time.monotonic(), wall=time.time(),
        )  # fmt: skip
        self.requests.append(record)
        response = await self._answer(request, record)
        record.status = response.status if response is not None else "hang"
        record.answered_at = time.monotonic()
        if response is None:
            await self._released.wait()  # the caller gives up (its timeout) long before
            raise web.HTTPGatewayTimeout()
        return response

    async def _answer(self, request: web.Request, record: Recorded) -> web.Response | None:
        now = time.monotonic()
        if now < self.hang_until:
            return None
        if now < self.fail_until:
            return web.json_response(DEFAULT_BODIES[503], status=503)
        if self.latency:
            await asyncio.sleep(self.latency)
        parts = request.path.strip("/").split("/")
        if record.plan_change or record.disk_change:
            if self.hold is not None:
                await self.hold.wait()
            scripted = self._scripted()
            if scripted == "hang":
                return None
            if scripted == "lost":
                done = self._answer_change(request, record, parts)
                return None if 200 <= done.status < 300 else done
            if scripted is not None and not 200 <= scripted[0] < 300:
                return self._refusal(request, *scripted)
        return self._answer_change(request, record, parts)

    def _answer_change(self, request: web.Request, record: Recorded, parts: list[str]) -> web.Response:
        if parts[-2:] == ["actions", "upgrade"] and request.method == "POST":
            return self._blog_upgrade(request, record, parts[2])
        if not self._basic_ok(request):
            return self._refusal(request, 401, {}, None)
        return self._documented(request, record, parts)

    def _scripted(self) -> Any:
        """The next scripted answer to a change (a plan or the disk): None (none), "hang", "lost", or
        (status, headers, body)."""
        step = self.script.pop(0) if self.script else self.default_status
        if step is None or step in ("hang", "lost"):
            return step
        if isinstance(step, int):
            return step, {}, None
        status, headers, *rest = step
        return int(status), dict(headers), rest[0] if rest else None

    def _refusal(self, request: web.Request, status: int, headers: dict[str, str], body: Any) -> web.Response:
        answer = dict(body if body is not None else DEFAULT_BODIES.get(status, {"error": f"status {status}"}))
        if self.echo_headers:
            answer["error"] = f"{answer.get('error')} (you sent {dict(request.headers)})"
        return web.json_response(answer, status=status, headers=headers)

    def _basic_ok(self, request: web.Request) -> bool:
        expected = "Basic " + base64.b64encode(f":{self.api_key}".encode()).decode()
        return request.headers.get("Authorization") == expected

    def _blog_upgrade(self, request: web.Request, record: Recorded, ref: str) -> web.Response:
        if self.blog == "absent":
            return self._refusal(request, 404, {}, None)
        if self.blog == "refuses" or request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._refusal(request, 401, {}, None)
        instance = self.find(ref)
        plan = record.body.get("plan") if isinstance(record.body, dict) else None
        if instance is not None and isinstance(plan, str):
            refused = self._change_plan(request, instance, plan)
            if refused is not None:
                return refused
        return web.json_response({"status": "upgrade started"})

    def _documented(self, request: web.Request, record: Recorded, parts: list[str]) -> web.Response:
        method = request.method
        if parts == ["api", "plans"] and method == "GET":
            return self._plans(request)
        if parts == ["api", "instances"] and method == "GET":
            return web.json_response([i.listing() for i in self.instances.values()])
        if len(parts) < 3 or parts[:2] != ["api", "instances"]:
            return self._refusal(request, 404, {}, None)
        instance = self.instances.get(int(parts[2])) if parts[2].isdigit() else None
        if instance is None:
            return self._refusal(request, 404, {}, None)
        rest = parts[3:]
        if rest == [] and method == "GET":
            return web.json_response(instance.detail())
        if rest == ["nodes"] and method == "GET":
            return web.json_response(instance.node_list())
        if rest == [] and method == "PUT":
            plan = record.body.get("plan") if isinstance(record.body, dict) else None
            if not isinstance(plan, str) or not plan:
                return self._refusal(request, 400, {}, {"error": "plan is missing"})
            refused = self._change_plan(request, instance, plan)
            return refused or web.json_response(RECONFIGURING)
        if rest == ["disk"] and method == "PUT":
            return self._resize_disk(request, instance, record.body)
        return self._refusal(request, 404, {}, None)

    def _plans(self, request: web.Request) -> web.Response:
        """``GET /api/plans``: the catalogue, or ``plans_status`` (an API that does not answer it)."""
        if self.plans_status is not None:
            return self._refusal(request, self.plans_status, {}, None)
        return web.json_response(
            [
                {"name": name, "price": price, "backend": "rabbitmq", "shared": name in SHARED_PLANS}
                for name, price in PRICES.items()
            ]
        )

    def _resize_disk(self, request: web.Request, instance: Instance, body: Any) -> web.Response:
        """Start a disk resize (asynchronous: every node ``configured: false`` meanwhile), or
        refuse it."""
        size = body.get("extra_disk_size") if isinstance(body, dict) else None
        downtime = body.get("allow_downtime", False) if isinstance(body, dict) else False
        if isinstance(size, bool) or size not in EXTRA_DISK_SIZES or not isinstance(downtime, bool):
            return self._refusal(request, 400, {}, INVALID_DISK_SIZE)
        if not instance.configured:
            return self._refusal(request, 422, {}, WAIT_FOR_CONFIGURED)
        if instance.plan in SHARED_PLANS:
            return self._refusal(request, 400, {}, DISK_NOT_ON_SHARED)
        if size < instance.extra_disk and not downtime:
            return self._refusal(request, 400, {}, DISK_SHRINK_NEEDS_DOWNTIME)
        now = self.clock()
        interval = RESIZE_INTERVALS.get(instance.region.split("::")[0], 0.0)
        last = instance.disk_resized_at
        if not downtime and last is not None and now - last < interval:
            hours = f"{interval / 3600:g}"
            refusal = {"error": f"Disk resize without downtime is allowed once every {hours} hours"}
            return self._refusal(request, 400, {}, refusal)
        instance.disk_target, instance.disk_resized_at = int(size), now
        if self.reconfigure_seconds > 0:
            asyncio.get_running_loop().call_later(self.reconfigure_seconds, instance.finish)
        else:
            instance.finish()
        return web.json_response(DISK_RESIZE_STARTED)

    def _change_plan(self, request: web.Request, instance: Instance, plan: str) -> web.Response | None:
        """Start a plan change (asynchronous: ``ready: false`` meanwhile), or refuse it."""
        if not instance.configured:
            return self._refusal(request, 422, {}, WAIT_FOR_CONFIGURED)
        if (plan in SHARED_PLANS) != (instance.plan in SHARED_PLANS):
            return self._refusal(request, 422, {}, NO_SHARED_MOVE)
        now = self.clock()
        instance.ready, instance.target = False, plan
        instance.changes_made.append(Change(instance.plan, plan, now))
        if self.reconfigure_seconds <= 0:
            instance.finish(now)
            return None
        instance.due_at = now + self.reconfigure_seconds
        if self.clock is time.time:  # done on time even when nobody asks
            asyncio.get_running_loop().call_later(self.reconfigure_seconds, instance.finish)
        return None

    async def _rabbitmq_nodes(self, request: web.Request) -> web.Response:
        """An instance's own RabbitMQ management API: ``GET /api/nodes``."""
        ref = request.match_info["id"]
        instance = self.instances.get(int(ref)) if ref.isdigit() else None
        if instance is None:
            return web.json_response({"error": "Object Not Found", "reason": "Not Found"}, status=404)
        expected = base64.b64encode(f"{instance.name}:instance-password-{instance.id}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return web.json_response({"error": "not_authorized", "reason": "Login failed"}, status=401)
        self.settle()
        self.management_reads[instance.name] += 1
        return web.json_response(instance.rabbitmq_nodes(self.clock()))

    async def _requests_view(self, request: web.Request) -> web.Response:
        if request.method == "DELETE":
            self.requests.clear()
        return web.json_response([[r.wall, r.method, r.path, r.status] for r in self.requests])


def _body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    text = raw.decode(errors="replace")
    if content_type == "application/x-www-form-urlencoded":
        return {key: values[-1] for key, values in parse_qs(text).items()}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--key", default=DEFAULT_KEY)
    parser.add_argument("--blog", default="answers", choices=["answers", "absent", "refuses"])
    parser.add_argument("--reconfigure-seconds", type=float, default=0.0)
    parser.add_argument("--instances", default="", help="comma-separated names, each on bunny-1")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        api = CloudAmqpStandIn(
            api_key=args.key, blog=args.blog, latency=args.latency,
            reconfigure_seconds=args.reconfigure_seconds,
        )  # fmt: skip
        for name in filter(None, args.instances.split(",")):
            api.add_instance(name)
        await api.start(args.port)
        print("stand_in.ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
