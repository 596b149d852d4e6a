"""The endpoints notifications go to: from the environment (the simple case) and from the
policy file's ``[[notify]]`` tables (routing by event type and instance).

Every mistake is one ``PolicyError`` line naming the file, the table and the key — never the
secret itself — so the worker stops at start with exactly that line.
"""

from __future__ import annotations

from typing import Any

from shared.notifications import ChannelKind, Endpoint, endpoint_id, parse_event_types, parse_webhook_secret
from shared.policy_file import PolicyError, read_policy_file
from shared.settings import Settings

NOTIFY_KEYS = frozenset({"channel", "url", "secret", "routing_key", "events", "instances"})
PAGERDUTY_URL = "https://events.pagerduty.com"


def env_endpoints(settings: Settings) -> list[Endpoint]:
    """``NOTIFY_WEBHOOK_URL`` (each URL), ``NOTIFY_SLACK_URL``, ``NOTIFY_PAGERDUTY_ROUTING_KEY``,
    each receiving ``NOTIFY_EVENTS`` (default: every event)."""
    events = settings.notify_events
    out = [
        Endpoint(
            endpoint_id(ChannelKind.WEBHOOK, url),
            ChannelKind.WEBHOOK,
            url,
            settings.notify_webhook_secret,
            events,
        )
        for url in settings.notify_webhook_urls
    ]
    if settings.notify_slack_url:
        url = settings.notify_slack_url
        out.append(Endpoint(endpoint_id(ChannelKind.SLACK, url), ChannelKind.SLACK, url, None, events))
    if settings.notify_pagerduty_routing_key:
        key, url = settings.notify_pagerduty_routing_key, settings.notify_pagerduty_url
        out.append(
            Endpoint(endpoint_id(ChannelKind.PAGERDUTY, url, key), ChannelKind.PAGERDUTY, url, key, events)
        )
    return out


def endpoints(settings: Settings) -> list[Endpoint]:
    """Every endpoint: the environment's, then the policy file's ``[[notify]]`` tables."""
    found = env_endpoints(settings)
    if settings.policy_file:
        found += load_notify(settings.policy_file, settings.notify_pagerduty_url)
    seen: set[str] = set()
    unique = []
    for endpoint in found:
        if endpoint.id not in seen:
            seen.add(endpoint.id)
            unique.append(endpoint)
    return unique


def load_notify(path: str, pagerduty_url: str = PAGERDUTY_URL) -> list[Endpoint]:
    data = read_policy_file(path)
    return parse_notify(data.get("notify", []), path, pagerduty_url)


class _KeyProblem(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def parse_notify(tables: Any, path: str = "<policy>", pagerduty_url: str = PAGERDUTY_URL) -> list[Endpoint]:
    """Validate the ``[[notify]]`` tables; pure, so every mistake has a table test."""
    if not isinstance(tables, list):
        raise PolicyError(f"POLICY_FILE {path}: key 'notify': expected [[notify]] tables")
    out = []
    for number, raw in enumerate(tables, start=1):
        if not isinstance(raw, dict):
            raise PolicyError(f"POLICY_FILE {path}: notify {number}: expected a [[notify]] table")
        try:
            out.append(_endpoint(raw, pagerduty_url))
        except _KeyProblem as exc:
            raise PolicyError(
                f"POLICY_FILE {path}: notify {number}: key {exc.key!r}: {exc.message}"
            ) from None
    return out


def _strings(raw: dict[str, Any], key: str) -> list[str] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _KeyProblem(key, "expected a list of strings")
    return list(value)


def _url(raw: dict[str, Any], default: str | None = None) -> str:
    url: Any = raw.get("url", default)
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise _KeyProblem("url", "expected an http:// or https:// URL")
    return url.rstrip("/")


def _endpoint(raw: dict[str, Any], pagerduty_url: str) -> Endpoint:
    for key in raw:
        if key not in NOTIFY_KEYS:
            raise _KeyProblem(key, f"unknown key (known: {', '.join(sorted(NOTIFY_KEYS))})")
    try:
        kind = ChannelKind(str(raw.get("channel")))
    except ValueError:
        raise _KeyProblem("channel", f"expected one of {', '.join(k.value for k in ChannelKind)}") from None
    try:
        names = _strings(raw, "events")
        events = parse_event_types(names) if names is not None else None
    except ValueError as exc:
        raise _KeyProblem("events", str(exc)) from None
    instances = _strings(raw, "instances")
    scope = frozenset(instances) if instances is not None else None
    if kind is ChannelKind.PAGERDUTY:
        routing_key: Any = raw.get("routing_key")
        if not isinstance(routing_key, str) or not routing_key.strip():
            raise _KeyProblem("routing_key", "expected the integration's routing key")
        url = _url(raw, pagerduty_url)
        return Endpoint(endpoint_id(kind, url, routing_key), kind, url, routing_key, events, scope)
    url = _url(raw)
    secret: Any = None
    if kind is ChannelKind.WEBHOOK:
        secret = raw.get("secret")
        try:
            parse_webhook_secret(secret if isinstance(secret, str) else "")
        except ValueError as exc:
            raise _KeyProblem("secret", str(exc)) from None
    return Endpoint(endpoint_id(kind, url), kind, url, secret, events, scope)
