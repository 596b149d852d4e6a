"""A managed instance's own RabbitMQ management API at the edge: ``GET /api/nodes`` in,
``NodeReading``s or ``ManagementUnavailable`` out.

The URL's credentials become a Basic ``Authorization`` header and never appear in an error,
a log line or a record: errors name the instance and the host only.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog

from shared.verify import NodeReading, parse_nodes

log = structlog.get_logger("worker.management")


class ManagementUnavailable(Exception):
    """The management API could not be read (unreachable, refused, timed out, or garbled);
    the message is safe to record."""


class ManagementApi:
    """The management APIs of the managed instances that have one (``instance id → URL``)."""

    def __init__(self, session: aiohttp.ClientSession, urls: dict[str, str], *, timeout: float):
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._targets: dict[str, tuple[str, str, dict[str, str]]] = {}
        for instance, url in urls.items():
            parts = urlsplit(url)
            headers = {"Accept": "application/json"}
            if parts.username is not None:
                headers["Authorization"] = aiohttp.encode_basic_auth(
                    unquote(parts.username), unquote(parts.password or "")
                )
            host = parts.hostname or ""
            shown = f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
            base = parts._replace(netloc=shown.split("://", 1)[1]).geturl().rstrip("/")
            self._targets[instance] = (base, shown, headers)

    @property
    def instances(self) -> list[str]:
        return list(self._targets)

    def covers(self, instance_id: str) -> bool:
        return instance_id in self._targets

    async def nodes(self, instance_id: str) -> list[NodeReading]:
        """The instance's nodes as they are now."""
        base, shown, headers = self._targets[instance_id]
        where = f"management API of {instance_id} ({shown})"
        try:
            async with self._session.get(
                f"{base}/api/nodes", headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise ManagementUnavailable(f"{where} answered {resp.status}")
                payload = json.loads(await resp.read())
        except (aiohttp.ClientError, OSError) as exc:
            # The request's URL carries no credentials (they travel in a header), so the
            # client's message is safe to keep.
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ManagementUnavailable(f"{where}: {detail[:300]}") from None
        except TimeoutError:
            raise ManagementUnavailable(f"{where}: no answer within {self._timeout.total:g}s") from None
        except (ValueError, UnicodeDecodeError):
            raise ManagementUnavailable(f"{where}: the answer is not JSON") from None
        try:
            return parse_nodes(payload)
        except ValueError as exc:
            raise ManagementUnavailable(f"{where}: {exc}") from None


async def read_nodes(api: ManagementApi, instance_id: str) -> list[NodeReading] | str:
    """The readings, or why there are none (for callers that go on either way)."""
    try:
        return await api.nodes(instance_id)
    except ManagementUnavailable as exc:
        return str(exc)
