"""The CloudAMQP API at the edge: HTTP in, our own errors out.

Network errors, timeouts, 429 and 5xx become ``RetryableError`` (with ``Retry-After`` when the
server sent one); other 4xx become ``PermanentError``. Quick retries (a few, short, jittered)
happen here; longer waits are the worker's durable retries through RabbitMQ.
"""

from __future__ import annotations

import base64
import email.utils
import json
import time
from collections.abc import Awaitable, Callable
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
from shared.errors import PermanentError, RetryableError
from shared.settings import Settings, UpgradeApi

log = structlog.get_logger("worker.api")

# A Retry-After longer than this is not waited for in-process: the message goes to a delay queue.
QUICK_RETRY_AFTER_CAP = 5.0
# Longest Retry-After honoured at all (a broken header must not park a message for a day).
RETRY_AFTER_CAP = 1800.0


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
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def classify(status: int, body: str, retry_after: float | None) -> None:
    """Raise our error for a non-2xx status; return for 2xx."""
    if 200 <= status < 300:
        return
    snippet = " ".join(body.split())[:200]
    message = f"CloudAMQP API answered {status}" + (f": {snippet}" if snippet else "")
    if status == 429 or status >= 500:
        raise RetryableError(message, status=status, retry_after=retry_after)
    raise PermanentError(message, status=status)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    jitter = wait_random_exponential(multiplier=0.2, max=2.0)(state)
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        return max(exc.retry_after, jitter)
    return jitter


def _quick_retry_allowed(exc: BaseException) -> bool:
    if not isinstance(exc, RetryableError):
        return False
    return exc.retry_after is None or exc.retry_after <= QUICK_RETRY_AFTER_CAP


class CloudAmqpClient:
    """Reads an instance's plan and asks for an upgrade, in either API mode.

    ``actions``: ``POST /api/instances/{id}/actions/upgrade`` with a Bearer key (the
    CloudAMQP blog's endpoint). ``instances``: the documented customer API —
    ``GET``/``PUT /api/instances/{id}`` with HTTP Basic auth, empty user, key as password.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        timeout: float,
        quick_retries: int,
        mode: UpgradeApi = UpgradeApi.ACTIONS,
    ):
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._mode = mode
        token = base64.b64encode(f":{api_key}".encode()).decode()
        self._auth = {
            "Authorization": f"Basic {token}" if mode is UpgradeApi.INSTANCES else f"Bearer {api_key}"
        }
        # Whatever the API echoes back must not carry the key into our logs or errors.
        self._secrets = (api_key, token)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._quick_retries = quick_retries

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

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_after_attempt(self._quick_retries + 1),
            wait=_wait,
            retry=retry_if_exception(_quick_retry_allowed),
            reraise=True,
        )

    async def current_plan(self, instance_id: str) -> str:
        """``GET /api/instances/{id}`` → its ``plan``."""
        url = f"{self._base_url}/api/instances/{instance_id}"
        async for attempt in self._retrying():
            with attempt:
                body = await self._send("GET", url, headers=self._auth)
        try:
            plan = json.loads(body).get("plan")
        except (ValueError, AttributeError):
            plan = None
        if not isinstance(plan, str) or not plan:
            raise PermanentError("CloudAMQP API answered the instance read without a 'plan'")
        return plan

    async def upgrade(
        self, instance_id: str, plan: str, reason: str, on_request: Callable[[], Awaitable[None]]
    ) -> None:
        """Ask for ``plan``; ``on_request`` runs before each try."""
        if self._mode is UpgradeApi.INSTANCES:
            method, url = "PUT", f"{self._base_url}/api/instances/{instance_id}"
            payload: dict[str, str] = {"plan": plan}
        else:
            method, url = "POST", f"{self._base_url}/api/instances/{instance_id}/actions/upgrade"
            payload = {"plan": plan, "reason": reason}
        async for attempt in self._retrying():
            with attempt:
                await on_request()
                await self._send(method, url, headers=self._auth, json=payload)

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
            raise RetryableError(f"CloudAMQP API did not answer within {self._timeout.total:g}s") from exc
        except aiohttp.ClientError as exc:
            metrics.API_RESPONSES.labels("network").inc()
            # str() of aiohttp's connection errors names host and port, never headers.
            raise RetryableError(f"CloudAMQP API unreachable: {type(exc).__name__}: {exc}") from exc
        elapsed = time.monotonic() - started
        metrics.API_LATENCY.labels(method).observe(elapsed)
        metrics.API_RESPONSES.labels(str(status)).inc()
        log.info(
            "api.response",
            method=method,
            status=status,
            latency_ms=round(elapsed * 1000, 1),
        )
        classify(status, body, retry_after)
        return body
