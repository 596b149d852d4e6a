"""The CloudAMQP customer API at the edge: HTTP in, our own errors out.

CloudAMQP's refusals are classified as its own Terraform provider classifies them
(``docs/cloudamqp-api.md``): 422 "Please wait for your cluster to be configured" and 423 Locked
mean *busy* (``BusyError``: wait for the instance to be ready, no attempt spent); 429, 5xx,
network errors, timeouts and a 400 with ``error_code`` 40001 or 40099 are ``RetryableError``
(``Retry-After`` honoured; a 429 without one waits at most 60 s); every other 4xx is
``PermanentError`` with CloudAMQP's own ``error`` / ``message`` text. Quick retries (a few,
short, jittered) happen here; longer waits are the worker's durable retries through RabbitMQ.
A change (a plan, the disk) whose request got no answer — a timeout, a connection dropped
once it was sent — is never asked again here: CloudAMQP may have made it, and only a read of
the instance can tell (``RetryableError.unanswered``; ``worker.upgrade_call``).

A disk resize always goes to the documented ``PUT /api/instances/{id}/disk`` (the blog knows
none). A plan change goes, by ``UPGRADE_API``, to the blog's ``POST …/actions/upgrade`` (Bearer),
to the documented ``PUT /api/instances/{id}`` (Basic, empty user, key as password), or
(``auto``) to the blog's endpoint once and, when that answers 401/403/404/405, to the
documented one from then on in this process.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from shared import metrics
from shared.disk import current_extra_disk
from shared.errors import BusyError, PermanentError, RetryableError
from shared.retrying import first_then
from shared.settings import Settings, UpgradeApi

log = structlog.get_logger("worker.api")

# A Retry-After longer than this is not waited for in-process: the message goes to a delay queue.
QUICK_RETRY_AFTER_CAP = 5.0
# Longest Retry-After honoured at all (a broken header must not park a message for a day).
RETRY_AFTER_CAP = 1800.0
# A 429 without Retry-After backs off to at most this (as CloudAMQP's own provider does).
RATE_LIMIT_MAX_DELAY = 60.0
# 400s whose error_code says "not yet": the firewall is still being configured, or CloudAMQP
# timed out talking to its backend.
RETRYABLE_ERROR_CODES = frozenset({40001, 40099})
# What the blog's endpoint answers where it does not exist or takes no Bearer key: nothing was
# done, so ``auto`` asks the documented API instead.
NOT_THIS_ENDPOINT = frozenset({401, 403, 404, 405})
KEY_REFUSED = "the CloudAMQP API key was refused"
_MAX_TEXT = 200


def parse_retry_after(raw: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _said(body: str) -> tuple[str, int | None]:
    """CloudAMQP's own words in an error body (``error`` and/or ``message``) and its
    ``error_code``; the body itself, squashed, when it is not such JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        words = [str(data[k]) for k in ("error", "message") if isinstance(data.get(k), str | int | float)]
        code = data.get("error_code")
        code = int(code) if isinstance(code, int) and not isinstance(code, bool) else None
        if words:
            return " ".join(" ".join(words).split())[:_MAX_TEXT], code
    return " ".join(body.split())[:_MAX_TEXT], None


def classify(status: int, body: str, retry_after: float | None) -> None:
    """Raise our error for a non-2xx status; return for 2xx."""
    if 200 <= status < 300:
        return
    text, code = _said(body)
    message = f"CloudAMQP API answered {status}" + (f" (error_code {code})" if code else "")
    message += f": {text}" if text else ""
    if status == 423 or (status == 422 and "configured" in text.lower()):
        raise BusyError(message, status=status, retry_after=retry_after)
    if status == 429:
        raise RetryableError(message, status=status, retry_after=retry_after, max_delay=RATE_LIMIT_MAX_DELAY)
    if status >= 500 or (status == 400 and code in RETRYABLE_ERROR_CODES):
        raise RetryableError(message, status=status, retry_after=retry_after)
    if status in (401, 403):
        raise PermanentError(f"{KEY_REFUSED} ({status})", status=status)
    raise PermanentError(message, status=status)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    jitter = wait_random_exponential(multiplier=0.2, max=2.0)(state)
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        return max(exc.retry_after, jitter)
    return jitter


def _quick_retry_allowed(exc: BaseException) -> bool:
    # Busy lasts minutes: a quick retry would only be refused again.
    if not isinstance(exc, RetryableError) or isinstance(exc, BusyError):
        return False
    return exc.retry_after is None or exc.retry_after <= QUICK_RETRY_AFTER_CAP


def _never(exc: BaseException) -> bool:
    return False


def _quick_change_retry_allowed(exc: BaseException) -> bool:
    """A change is asked again at once only where CloudAMQP answered that it did not make it."""
    return _quick_retry_allowed(exc) and not (isinstance(exc, RetryableError) and exc.unanswered)


@dataclass(frozen=True)
class InstanceState:
    """What ``GET /api/instances/{id}`` (and ``…/nodes``) says of an instance now."""

    plan: str
    ready: bool
    configured: bool | None = None  # every node configured (None: the nodes were not read)
    # The nodes' extra disk, ``additional_disk_size`` in GB (None: not read, or not reported).
    extra_disk: int | None = None

    @property
    def settled(self) -> bool:
        """No change is being applied: ready, and no node still configuring."""
        return self.ready and self.configured is not False


class CloudAmqpClient:
    """Reads instances and asks for plan changes, in the ``UPGRADE_API`` mode it is given."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        timeout: float,
        quick_retries: int,
        mode: UpgradeApi = UpgradeApi.AUTO,
    ):
        self._session = session
        self._base_url = base_url.rstrip("/")
        mode = UpgradeApi(mode)
        basic = base64.b64encode(f":{api_key}".encode()).decode()
        self._basic = {"Authorization": f"Basic {basic}"}
        self._bearer = {"Authorization": f"Bearer {api_key}"}
        # Whatever the API echoes back must not carry the key into our logs or errors.
        self._secrets = (api_key, basic)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._quick_retries = quick_retries
        # ``auto`` until the blog's endpoint has answered once: which API plan changes use.
        self._chosen: UpgradeApi | None = None if mode is UpgradeApi.AUTO else mode
        self._choosing = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, session: aiohttp.ClientSession, settings: Settings, api_key: str
    ) -> CloudAmqpClient:
        """The client ``settings`` describe (URL, timeout, quick retries, API mode)."""
        return cls(
            session,
            base_url=settings.cloudamqp_api_url,
            api_key=api_key,
            timeout=settings.api_timeout_seconds,
            quick_retries=settings.quick_retries,
            mode=settings.upgrade_api,
        )

    @property
    def api_in_use(self) -> str:
        """``actions``, ``instances``, or ``auto`` while no plan change has told yet."""
        return (self._chosen or UpgradeApi.AUTO).value

    async def _quickly(self, call: Callable[[], Awaitable[str]], *, change: bool = False) -> str:
        """``call()`` with quick retries (tenacity, its first try outside it): of a read, or
        (``change``) of a change CloudAMQP answered it did not make."""
        allowed = _quick_change_retry_allowed if change else _quick_retry_allowed

        def retrying() -> AsyncRetrying:
            return AsyncRetrying(
                stop=stop_after_attempt(self._quick_retries + 1),
                wait=_wait,
                retry=retry_if_exception(allowed),
                reraise=True,
            )

        return await first_then(call, retrying, allowed if self._quick_retries else _never)

    async def _get_json(self, path: str) -> Any:
        url = f"{self._base_url}{path}"
        body = await self._quickly(lambda: self._send("GET", url, headers=self._basic))
        try:
            return json.loads(body)
        except ValueError as exc:
            raise PermanentError(f"CloudAMQP API answered {path} with something not JSON") from exc

    async def list_instances(self) -> list[dict[str, Any]]:
        """``GET /api/instances``: every instance of the account (``id``, ``name``, ``providerid``…)."""
        listing = await self._get_json("/api/instances")
        if not isinstance(listing, list):
            raise PermanentError("CloudAMQP API answered /api/instances without a list")
        return [item for item in listing if isinstance(item, dict)]

    async def list_plans(self) -> list[dict[str, Any]]:
        """``GET /api/plans``: what CloudAMQP sells (``name``, ``price`` a month in USD,
        ``backend``, ``shared``)."""
        listing = await self._get_json("/api/plans")
        if not isinstance(listing, list):
            raise PermanentError("CloudAMQP API answered /api/plans without a list")
        return [item for item in listing if isinstance(item, dict)]

    async def read_instance(self, instance_id: str, *, nodes: bool = False) -> InstanceState:
        """``GET /api/instances/{id}`` → its plan and ``ready``; with ``nodes``, whether every
        node of ``…/nodes`` is ``configured`` (None where the nodes cannot be read)."""
        data = await self._get_json(f"/api/instances/{instance_id}")
        plan = data.get("plan") if isinstance(data, dict) else None
        if not isinstance(plan, str) or not plan:
            raise PermanentError("CloudAMQP API answered the instance read without a 'plan'")
        ready = data.get("ready") is not False  # an answer without it (older API) is taken as ready
        configured, extra_disk = await self._nodes(instance_id) if nodes and ready else (None, None)
        return InstanceState(plan, ready, configured, extra_disk)

    async def readable(self, instance_id: str, *, nodes: bool = False) -> InstanceState | None:
        """``read_instance``, or None where the instance cannot be read at all and the mode
        allows acting without it: the blog's world, whose API has no instance read for this
        key (401/403/404/405). In ``instances`` mode such an answer stays an error."""
        try:
            return await self.read_instance(instance_id, nodes=nodes)
        except PermanentError as exc:
            if self._chosen is UpgradeApi.INSTANCES or exc.status not in NOT_THIS_ENDPOINT:
                raise
            return None

    async def _nodes(self, instance_id: str) -> tuple[bool | None, int | None]:
        """Whether every node of ``…/nodes`` is ``configured``, and their extra disk (None
        where the nodes cannot be read, or do not say)."""
        try:
            nodes = await self._get_json(f"/api/instances/{instance_id}/nodes")
        except PermanentError:
            return None, None
        if not isinstance(nodes, list) or not nodes:
            return None, None
        configured = all(isinstance(n, dict) and n.get("configured") is not False for n in nodes)
        sizes = [
            int(size)
            for n in nodes
            if isinstance(n, dict)
            and isinstance(size := n.get("additional_disk_size"), int | float)
            and not isinstance(size, bool)
        ]
        return configured, current_extra_disk(sizes)

    async def upgrade(
        self, instance_id: str, plan: str, reason: str, on_request: Callable[[], Awaitable[None]]
    ) -> None:
        """Ask for ``plan`` (CloudAMQP starts the change and answers at once); ``on_request``
        runs before each try."""
        if self._chosen is None:
            async with self._choosing:
                # Plan changes that come meanwhile wait here: the blog's endpoint is asked once.
                if self._chosen is None and await self._blog_answers(instance_id, plan, reason, on_request):
                    return
        if self._chosen is UpgradeApi.ACTIONS:
            await self._blog(instance_id, plan, reason, on_request)
        else:
            await self._put(instance_id, plan, on_request)

    async def _blog_answers(
        self, instance_id: str, plan: str, reason: str, on_request: Callable[[], Awaitable[None]]
    ) -> bool:
        """``auto``'s first plan change: through the blog's endpoint, which stays in use if
        it takes it (True); when it answers that it is not there (nothing was done), the
        documented API is used from now on (False: the caller makes the change there)."""
        try:
            await self._blog(instance_id, plan, reason, on_request)
        except PermanentError as exc:
            if exc.status not in NOT_THIS_ENDPOINT:
                raise
            self._chosen = UpgradeApi.INSTANCES
            log.warning(
                "api.documented_in_use",
                detail=f"the blog's actions/upgrade endpoint answered {exc.status}; plan changes "
                "go to PUT /api/instances/{id} from now on",
            )
            return False
        self._chosen = UpgradeApi.ACTIONS
        log.info("api.blog_in_use", detail="the blog's actions/upgrade endpoint took the plan change")
        return True

    async def _blog(
        self, instance_id: str, plan: str, reason: str, on_request: Callable[[], Awaitable[None]]
    ) -> None:
        url = f"{self._base_url}/api/instances/{instance_id}/actions/upgrade"
        await self._change("POST", url, self._bearer, {"plan": plan, "reason": reason}, on_request)

    async def resize_disk(
        self,
        instance_id: str,
        extra_disk: int,
        allow_downtime: bool,
        on_request: Callable[[], Awaitable[None]],
    ) -> None:
        """Ask for ``extra_disk`` GB of extra disk (CloudAMQP starts the resize and answers at
        once); ``on_request`` runs before each try."""
        url = f"{self._base_url}/api/instances/{instance_id}/disk"
        body = {"extra_disk_size": extra_disk, "allow_downtime": allow_downtime}
        await self._change("PUT", url, self._basic, body, on_request)

    async def _put(self, instance_id: str, plan: str, on_request: Callable[[], Awaitable[None]]) -> None:
        url = f"{self._base_url}/api/instances/{instance_id}"
        await self._change("PUT", url, self._basic, {"plan": plan}, on_request)

    async def _change(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: dict[str, Any],
        on_request: Callable[[], Awaitable[None]],
    ) -> None:
        """Ask for a change, ``on_request`` before each try, quickly retried only where
        CloudAMQP answered that it did not make it."""

        async def send() -> str:
            await on_request()
            return await self._send(method, url, headers=headers, json=body)

        await self._quickly(send, change=True)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _send(self, method: str, url: str, **kwargs: Any) -> str:
        started = time.monotonic()
        try:
            async with self._session.request(method, url, timeout=self._timeout, **kwargs) as resp:
                body = self._redact(await resp.text(errors="replace"))
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                status = resp.status
        except TimeoutError as exc:
            metrics.API_RESPONSES.labels("timeout").inc()
            raise RetryableError(
                f"CloudAMQP API did not answer within {self._timeout.total:g}s", unanswered=True
            ) from exc
        except aiohttp.ClientError as exc:
            metrics.API_RESPONSES.labels("network").inc()
            # str() of aiohttp's connection errors names host and port, never headers. A
            # connection that was never made carried no request; any other error may have
            # come after the request was sent.
            raise RetryableError(
                f"CloudAMQP API unreachable: {type(exc).__name__}: {exc}",
                unanswered=not isinstance(exc, aiohttp.ClientConnectorError),
            ) from exc
        elapsed = time.monotonic() - started
        metrics.API_LATENCY.labels(method).observe(elapsed)
        metrics.API_RESPONSES.labels(str(status)).inc()
        log.info("api.response", method=method, status=status, latency_ms=round(elapsed * 1000, 1))
        classify(status, body, retry_after)
        return body
