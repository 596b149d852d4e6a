"""``RABBITMQ_URL`` as a list of nodes, and connecting with failover between them.

CloudAMQP's multi-node plans expose each node of the cluster; ``RABBITMQ_URL`` may name them
all, comma-separated. A client talks to one node at a time (aio-pika connects to one URL and
its robust connection only ever retries that one), so failover is ours: each connect walks the
nodes starting with the one *after* the node last used, so a lost node is tried last rather
than first, and the first node that answers wins. With one URL this is a plain connect.

Passwords stay out of logs and errors: nodes are named by ``host:port`` (``node_name``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection

log = structlog.get_logger("broker")

SCHEMES = ("amqp", "amqps")


def split_urls(configured: str) -> tuple[str, ...]:
    """The node URLs of a ``RABBITMQ_URL`` value, in order (blank entries left out)."""
    return tuple(part.strip() for part in configured.split(",") if part.strip())


def check_url(url: str) -> str:
    """``url`` when it is an AMQP URL with a host, else ``ValueError`` saying why."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in SCHEMES)}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    try:
        _ = parts.port  # raises on a port that is not a number or is out of range
    except ValueError:
        raise ValueError("the URL's port is not a number from 1 to 65535") from None
    return url


def parse_urls(configured: str) -> str:
    """The ``RABBITMQ_URL`` value normalised (``a,b,c``), every node checked; the error says
    which entry is wrong without repeating it (it may carry a password)."""
    urls = split_urls(configured)
    if not urls:
        raise ValueError("expected one or more comma-separated amqp:// URLs")
    for number, url in enumerate(urls, 1):
        try:
            check_url(url)
        except ValueError as exc:
            where = f"URL {number} of {len(urls)}: " if len(urls) > 1 else ""
            raise ValueError(f"{where}{exc}") from None
    return ",".join(urls)


def node_name(url: str) -> str:
    """``host:port`` of a node URL: enough to tell nodes apart in a log, never a secret."""
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default
    except ValueError:
        port = default
    return f"{parts.hostname or '?'}:{port}"


def redact_urls(configured: str) -> str:
    """The configured value with every password replaced by ``***``."""
    out = []
    for url in split_urls(configured):
        parts = urlsplit(url)
        if parts.password is not None:
            url = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
        out.append(url)
    return ",".join(out)


def failover_order(count: int, last: int | None) -> list[int]:
    """Indices of the nodes to try, in order: from the one after ``last`` (the node last
    connected to, or last tried), round the list; from the first when there is none yet."""
    start = 0 if last is None else (last + 1) % count
    return [(start + k) % count for k in range(count)]


class NoNodeAnswered(ConnectionError):
    """Every node was tried and none answered; the message names each with its reason."""


class Nodes:
    """The nodes of one client (one per connection that fails over) and which it used last."""

    def __init__(self, configured: str | tuple[str, ...]):
        self.urls = split_urls(configured) if isinstance(configured, str) else configured
        if not self.urls:
            raise ValueError("no broker URL")
        self.last: int | None = None

    @property
    def current(self) -> str:
        """``host:port`` of the node last connected to (or to be tried first)."""
        return node_name(self.urls[self.last if self.last is not None else 0])

    async def connect(self, node_timeout: float, **kwargs: Any) -> AbstractConnection:
        """A connection to the first node that answers, in ``failover_order``; each node gets
        ``node_timeout`` seconds. Raises ``NoNodeAnswered`` when none does (the only error for one node
        is then that node's, so its message reads as before)."""
        errors: list[str] = []
        for index in failover_order(len(self.urls), self.last):
            self.last = index
            url = self.urls[index]
            try:
                connection: AbstractConnection = await aio_pika.connect(url, timeout=node_timeout, **kwargs)
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                errors.append(why if len(self.urls) == 1 else f"{node_name(url)}: {why}")
                if len(self.urls) > 1:
                    log.warning("broker.node_unavailable", node=node_name(url), error=why)
                continue
            return connection
        raise NoNodeAnswered("; ".join(errors))


async def connect(configured: str, node_timeout: float, **kwargs: Any) -> AbstractConnection:
    """One-off connection (CLI tools): the first node of ``RABBITMQ_URL`` that answers."""
    return await Nodes(configured).connect(node_timeout, **kwargs)
