"""One settings object, built from the environment at each entry point and passed down.

Nothing else in the project reads ``os.environ``. Every variable has a default that works on
a developer machine; a bad value raises :class:`ConfigError` whose message is one line that
names the variable, so the process can stop at start with exactly that line.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

from shared.brokers import parse_urls, redact_urls
from shared.notifications import parse_event_types, parse_webhook_secret
from shared.retention import DAY, Limits

T = TypeVar("T")


class UpgradeApi(StrEnum):
    """Which CloudAMQP API an upgrade goes through (``UPGRADE_API``)."""

    # The blog's endpoint first; once it answers 401/403/404/405, the documented API.
    AUTO = "auto"
    ACTIONS = "actions"  # POST /api/instances/{id}/actions/upgrade, Bearer key (the blog's)
    INSTANCES = "instances"  # GET/PUT /api/instances/{id}, Basic auth (the documented one)


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


@dataclass(frozen=True)
class Settings:
    # One node's URL, or a cluster's nodes comma-separated (shared.brokers fails over).
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/"
    receiver_host: str = "0.0.0.0"
    receiver_port: int = 8080
    webhook_token: str | None = field(default=None, repr=False)
    operator_token: str | None = field(default=None, repr=False)
    console_session_key: str | None = field(default=None, repr=False)
    cloudamqp_api_url: str = "https://customer.cloudamqp.com"
    cloudamqp_api_key: str | None = field(default=None, repr=False)
    instance_ids: tuple[str, ...] = ()
    upgrade_api: UpgradeApi = UpgradeApi.AUTO
    upgrade_plan: str = "bunny-2"
    memory_threshold: float = 80.0
    policy_file: str | None = None
    cooldown_seconds: float = 1800.0
    max_alarm_age_seconds: float = 3600.0
    retry_delays: tuple[float, ...] = (10.0, 60.0, 300.0, 1800.0)
    max_attempts: int = 5
    quick_retries: int = 2
    # A plan change runs at CloudAMQP for minutes to over an hour: read every poll, until this.
    upgrade_confirm_timeout_seconds: float = 10800.0
    upgrade_poll_seconds: float = 15.0
    api_timeout_seconds: float = 10.0
    database_url: str = "sqlite:///var/autopilot.db"
    claim_lease_seconds: float = 120.0
    worker_metrics_port: int | None = None
    worker_prefetch: int = 256
    # Alarms delivered together whose first steps share one transaction (1: one each).
    worker_batch: int = 64
    dry_run: bool = False
    # Behind a proxy that says where a request came in (Heroku's router, an ingress): its
    # X-Forwarded-Proto and X-Forwarded-Host are the request's scheme and host.
    forwarded_headers: bool = False
    fast_lane: bool = True  # the receiver sends upgrade-worthy first alarms ahead (receiver.lanes)
    log_format: str = "console"
    log_level: str = "info"
    # Outbound notifications (shared.notifications, worker.notify).
    notify_webhook_urls: tuple[str, ...] = field(default=(), repr=False)
    notify_webhook_secret: str | None = field(default=None, repr=False)
    notify_slack_url: str | None = field(default=None, repr=False)
    notify_pagerduty_routing_key: str | None = field(default=None, repr=False)
    notify_pagerduty_url: str = "https://events.pagerduty.com"
    notify_events: frozenset[str] | None = None  # None: every event
    notify_timeout_seconds: float = 10.0
    notify_retry_delays: tuple[float, ...] = (10.0, 60.0, 300.0, 1800.0)
    notify_max_attempts: int = 8
    public_url: str | None = None
    # The managed instances' own RabbitMQ management APIs (worker.management, shared.verify).
    instance_management: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # (id, url)
    management_timeout_seconds: float = 5.0
    watchdog_interval_seconds: float = 60.0  # 0: no watchdog
    watchdog_time_threshold_seconds: float = 600.0
    disk_free_margin: float = 2.0
    sample_history: int = 1440
    advice_quiet_window_seconds: float = 7 * 86400.0
    advice_fraction: float = 0.5
    plan_memory_step: float = 2.0
    # The forecast of a rule with ``forecast = true`` (worker.forecast): the samples it fits.
    forecast_window_seconds: float = 1800.0
    forecast_min_samples: int = 10
    # Spending caps (shared.pricing): the most a plan the autopilot asks for may cost a month
    # (a rule's max_monthly_price wins), and the most it may add to one instance's monthly
    # bill within 30 days. None: no cap.
    max_monthly_price: float | None = None
    max_monthly_increase: float | None = None
    # Flap detection (shared.flapping): a key that opened this often within the window is
    # flapping; its incident then resolves only after the quiet period. 0 openings: off.
    flap_openings: int = 4
    flap_window_seconds: float = 3600.0
    flap_quiet_seconds: float = 900.0
    # CloudAMQP resizes a disk without downtime once every 6 h on AWS (4 h on Google Cloud).
    disk_resize_interval_seconds: float = 21600.0
    # Retention (shared.retention): days each kind of record is kept (0: for ever), and how
    # often one worker among all prunes (0: this worker never does).
    retention_events_days: float = 30.0
    retention_notifications_days: float = 30.0
    retention_incidents_days: float = 365.0
    retention_audit_days: float = 730.0
    retention_interval_seconds: float = 3600.0

    def management_url(self, instance_id: str) -> str | None:
        """The management API URL (credentials included) of a managed instance, if given."""
        return dict(self.instance_management).get(instance_id)

    @property
    def delay_queues(self) -> tuple[float, ...]:
        """The alarms' delay queues: ``RETRY_DELAYS`` and the plan-change poll."""
        return tuple(sorted({*self.retry_delays, self.upgrade_poll_seconds}))

    @cached_property
    def managed(self) -> frozenset[str]:
        """``instance_ids`` as a set: a fleet's thousands of ids are looked up per alarm."""
        return frozenset(self.instance_ids)

    @property
    def retention(self) -> Limits:
        return Limits(
            events=self.retention_events_days,
            notifications=self.retention_notifications_days,
            incidents=self.retention_incidents_days,
            audit=self.retention_audit_days,
        )

    @property
    def effective_dry_run(self) -> bool:
        """Dry run when asked for, and always when there is no API key to call with."""
        return self.dry_run or not self.cloudamqp_api_key

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default: the process environment plus ``.env``)."""
        env = dict(read_dotenv(Path(".env"))) if environ is None else {}
        env.update(os.environ if environ is None else environ)
        return cls(**_parse(env))

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to log: secrets are reduced to whether they are set."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = "set" if value else "unset"
            elif f.name == "notify_webhook_urls":
                value = [_origin(url) for url in value]
            elif f.name == "instance_management":
                value = {instance: redact_url(url) for instance, url in value}
            elif f.name == "rabbitmq_url":
                value = redact_urls(value)
            elif f.name == "database_url":
                value = redact_url(value)
            out[f.name] = value
        return out


_SECRET_FIELDS = frozenset(
    {"webhook_token", "operator_token", "cloudamqp_api_key", "console_session_key", "notify_webhook_secret",
     "notify_slack_url", "notify_pagerduty_routing_key"}
)  # fmt: skip


def _origin(url: str) -> str:
    """``https://host/…``: where a URL goes, without the path or query that may carry a token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def read_dotenv(path: Path) -> dict[str, str]:
    """The variables of an optional ``.env`` file, read by python-dotenv: quotes, ``export``,
    inline comments, escapes and ``${VAR}`` as shells and docker compose read them (a key
    without ``=`` is left out). The process environment wins over them (``from_env``)."""
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


_SECRET_VARS = frozenset(
    {"WEBHOOK_TOKEN", "OPERATOR_TOKEN", "CLOUDAMQP_API_KEY", "CONSOLE_SESSION_KEY", "RABBITMQ_URL",
     "CLOUDAMQP_URL", "DATABASE_URL", "NOTIFY_WEBHOOK_URL", "NOTIFY_WEBHOOK_SECRET", "NOTIFY_SLACK_URL",
     "NOTIFY_PAGERDUTY_ROUTING_KEY", "CLOUDAMQP_INSTANCE_MANAGEMENT_URL"}
)  # fmt: skip
MIN_OPERATOR_TOKEN = 16  # characters: it lets its holder approve spending

# --- parsing helpers: each raises ConfigError naming the variable -------------------------


def _get(env: Mapping[str, str], name: str, parse: Callable[[str], T], default: T) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except (ValueError, TypeError) as exc:
        shown = "(hidden)" if name in _SECRET_VARS else repr(raw)
        raise ConfigError(f"{name}={shown} is invalid: {exc}") from None


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return value

    return parse


def _number(minimum: float, *, allow_equal: bool = True) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value) or value < minimum or (not allow_equal and value == minimum):
            op = ">=" if allow_equal else ">"
            raise ValueError(f"expected a number {op} {minimum:g}")
        return value

    return parse


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw.lower()

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        if not parts.netloc and parts.scheme not in {"sqlite"}:
            raise ValueError("the URL has no host")
        return raw

    return parse


def _delays(raw: str) -> tuple[float, ...]:
    parse = _number(0, allow_equal=False)
    values = tuple(parse(part.strip()) for part in raw.split(","))
    if not values:
        raise ValueError("expected comma-separated seconds")
    return values


def _ids(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _secret(raw: str) -> str:
    if any(ch.isspace() for ch in raw):
        raise ValueError("must not contain whitespace")
    return raw


def _operator_token(raw: str) -> str:
    token = _secret(raw)
    if len(token) < MIN_OPERATOR_TOKEN:
        raise ValueError(f"must be at least {MIN_OPERATOR_TOKEN} characters (it allows approving upgrades)")
    return token


def _fernet_key(raw: str) -> str:
    """A Fernet key, as the console's encrypted session cookie wants: 32 url-safe base64 bytes."""
    try:
        decoded = base64.b64decode(raw.encode("ascii"), altchars=b"-_", validate=True)
    except (binascii.Error, UnicodeEncodeError):
        decoded = b""
    if len(decoded) != 32:
        raise ValueError(
            "expected 32 url-safe base64-encoded bytes (make one with "
            "`python -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'`)"
        )
    return raw


def _url_no_slash(*schemes: str) -> Callable[[str], str]:
    check = _url(*schemes)
    return lambda raw: check(raw).rstrip("/")


def _urls(*schemes: str) -> Callable[[str], tuple[str, ...]]:
    check = _url(*schemes)
    return lambda raw: tuple(check(part.strip()) for part in raw.split(",") if part.strip())


def _management_urls(raw: str) -> tuple[tuple[str, str], ...]:
    """``id=https://user:pass@host,…``; a lone URL without ``id=`` is the first managed
    instance's (resolved in ``_parse``, which knows CLOUDAMQP_INSTANCE_ID) and marked ``""``."""
    check = _url_no_slash("http", "https")
    pairs: list[tuple[str, str]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        instance, sep, url = part.partition("=")
        if not sep or "://" in instance:
            instance, url = "", part
        instance = instance.strip()
        if any(seen == instance for seen, _ in pairs):
            raise ValueError(f"instance {instance or '(first)'} is named twice")
        pairs.append((instance, check(url.strip())))
    return tuple(pairs)


def _fraction(raw: str) -> float:
    value = _number(0, allow_equal=False)(raw)
    if value > 1:
        raise ValueError("expected a number > 0 and at most 1")
    return value


def _webhook_secret(raw: str) -> str:
    parse_webhook_secret(raw)
    return raw


def _event_types(raw: str) -> frozenset[str] | None:
    return parse_event_types(raw.split(","))


# (field, variable, parser): the one table of every variable the processes read.
_VARIABLES: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("rabbitmq_url", "RABBITMQ_URL", parse_urls),
    ("receiver_host", "RECEIVER_HOST", str),
    ("receiver_port", "RECEIVER_PORT", _int_range(1, 65535)),
    ("webhook_token", "WEBHOOK_TOKEN", _secret),
    ("operator_token", "OPERATOR_TOKEN", _operator_token),
    ("console_session_key", "CONSOLE_SESSION_KEY", _fernet_key),
    ("cloudamqp_api_url", "CLOUDAMQP_API_URL", _url_no_slash("http", "https")),
    ("cloudamqp_api_key", "CLOUDAMQP_API_KEY", _secret),
    ("instance_ids", "CLOUDAMQP_INSTANCE_ID", _ids),
    ("upgrade_api", "UPGRADE_API", lambda raw: UpgradeApi(_choice(*UpgradeApi)(raw))),
    ("upgrade_plan", "UPGRADE_PLAN", str),
    ("memory_threshold", "MEMORY_THRESHOLD", _number(0)),
    ("policy_file", "POLICY_FILE", str),
    ("cooldown_seconds", "COOLDOWN_SECONDS", _number(0)),
    ("max_alarm_age_seconds", "MAX_ALARM_AGE_SECONDS", _number(0, allow_equal=False)),
    ("retry_delays", "RETRY_DELAYS", _delays),
    ("max_attempts", "MAX_ATTEMPTS", _int_range(1, 1000)),
    ("quick_retries", "QUICK_RETRIES", _int_range(0, 10)),
    ("upgrade_confirm_timeout_seconds", "UPGRADE_CONFIRM_TIMEOUT_SECONDS", _number(0, allow_equal=False)),
    ("upgrade_poll_seconds", "UPGRADE_POLL_SECONDS", _number(0, allow_equal=False)),
    ("api_timeout_seconds", "CLOUDAMQP_API_TIMEOUT", _number(0, allow_equal=False)),
    ("database_url", "DATABASE_URL", _url("sqlite", "postgresql", "postgres")),
    ("claim_lease_seconds", "CLAIM_LEASE_SECONDS", _number(0, allow_equal=False)),
    ("worker_metrics_port", "WORKER_METRICS_PORT", _int_range(1, 65535)),
    ("worker_prefetch", "WORKER_PREFETCH", _int_range(1, 1000)),
    ("worker_batch", "WORKER_BATCH", _int_range(1, 1000)),
    ("dry_run", "DRY_RUN", _bool),
    ("fast_lane", "FAST_LANE", _bool),
    ("forwarded_headers", "FORWARDED_HEADERS", _bool),
    ("log_format", "LOG_FORMAT", _choice("console", "json")),
    ("log_level", "LOG_LEVEL", _choice("debug", "info", "warning", "error")),
    ("notify_webhook_urls", "NOTIFY_WEBHOOK_URL", _urls("http", "https")),
    ("notify_webhook_secret", "NOTIFY_WEBHOOK_SECRET", _webhook_secret),
    ("notify_slack_url", "NOTIFY_SLACK_URL", _url("http", "https")),
    ("notify_pagerduty_routing_key", "NOTIFY_PAGERDUTY_ROUTING_KEY", _secret),
    ("notify_pagerduty_url", "NOTIFY_PAGERDUTY_URL", _url_no_slash("http", "https")),
    ("notify_events", "NOTIFY_EVENTS", _event_types),
    ("notify_timeout_seconds", "NOTIFY_TIMEOUT", _number(0, allow_equal=False)),
    ("notify_retry_delays", "NOTIFY_RETRY_DELAYS", _delays),
    ("notify_max_attempts", "NOTIFY_MAX_ATTEMPTS", _int_range(1, 1000)),
    ("public_url", "PUBLIC_URL", _url_no_slash("http", "https")),
    ("instance_management", "CLOUDAMQP_INSTANCE_MANAGEMENT_URL", _management_urls),
    ("management_timeout_seconds", "MANAGEMENT_TIMEOUT", _number(0, allow_equal=False)),
    ("watchdog_interval_seconds", "WATCHDOG_INTERVAL_SECONDS", _number(0)),
    ("watchdog_time_threshold_seconds", "WATCHDOG_TIME_THRESHOLD_SECONDS", _number(0)),
    ("disk_free_margin", "DISK_FREE_MARGIN", _number(1)),
    ("sample_history", "SAMPLE_HISTORY", _int_range(1, 100000)),
    ("advice_quiet_window_seconds", "ADVICE_QUIET_WINDOW_SECONDS", _number(0, allow_equal=False)),
    ("advice_fraction", "ADVICE_FRACTION", _fraction),
    ("plan_memory_step", "PLAN_MEMORY_STEP", _number(1, allow_equal=False)),
    ("forecast_window_seconds", "FORECAST_WINDOW_SECONDS", _number(0, allow_equal=False)),
    ("forecast_min_samples", "FORECAST_MIN_SAMPLES", _int_range(3, 100000)),
    ("max_monthly_price", "MAX_MONTHLY_PRICE", _number(0)),
    ("max_monthly_increase", "MAX_MONTHLY_INCREASE", _number(0)),
    ("flap_openings", "FLAP_OPENINGS", _int_range(0, 1000)),
    ("flap_window_seconds", "FLAP_WINDOW_SECONDS", _number(0, allow_equal=False)),
    ("flap_quiet_seconds", "FLAP_QUIET_SECONDS", _number(0, allow_equal=False)),
    ("disk_resize_interval_seconds", "DISK_RESIZE_INTERVAL_SECONDS", _number(0)),
    ("retention_events_days", "RETENTION_EVENTS_DAYS", _number(0)),
    ("retention_notifications_days", "RETENTION_NOTIFICATIONS_DAYS", _number(0)),
    ("retention_incidents_days", "RETENTION_INCIDENTS_DAYS", _number(0)),
    ("retention_audit_days", "RETENTION_AUDIT_DAYS", _number(0)),
    ("retention_interval_seconds", "RETENTION_INTERVAL_SECONDS", _number(0)),
)

# What a platform sets when ours is unset: Heroku's CloudAMQP add-on sets CLOUDAMQP_URL and
# Heroku's router sets PORT (the port the web dyno must listen on). Ours wins when both are set,
# so an operator can always override what the platform provides.
FALLBACKS: dict[str, str] = {"RABBITMQ_URL": "CLOUDAMQP_URL", "RECEIVER_PORT": "PORT"}
# Every variable the processes read, the platforms' fallbacks included.
VARIABLES: frozenset[str] = frozenset(name for _, name, _ in _VARIABLES) | frozenset(FALLBACKS.values())


def _source(env: Mapping[str, str], name: str) -> str:
    """The variable actually read for ``name``: itself when set, else its platform fallback."""
    fallback = FALLBACKS.get(name)
    if fallback is None or env.get(name, "").strip() or not env.get(fallback, "").strip():
        return name
    return fallback


def _parse(env: Mapping[str, str]) -> dict[str, Any]:
    defaults = Settings()
    parsed = {
        field: _get(env, _source(env, name), parse, getattr(defaults, field))
        for field, name, parse in _VARIABLES
    }
    if not env.get("LOG_FORMAT", "").strip():
        parsed["log_format"] = "console" if sys.stderr.isatty() else "json"
    if parsed["operator_token"] and parsed["operator_token"] == parsed["webhook_token"]:
        # The webhook token sits in a URL configured at CloudAMQP: it must not approve upgrades.
        raise ConfigError("OPERATOR_TOKEN=(hidden) is invalid: it must differ from WEBHOOK_TOKEN")
    parsed["instance_management"] = _management_for(parsed["instance_management"], parsed["instance_ids"])
    _check_event_retention(parsed)
    if parsed["notify_webhook_urls"] and not parsed["notify_webhook_secret"]:
        raise ConfigError(
            "NOTIFY_WEBHOOK_SECRET is unset: NOTIFY_WEBHOOK_URL needs a whsec_… secret to sign with"
        )
    return parsed


def _check_event_retention(parsed: Mapping[str, Any]) -> None:
    """The watchdog's downgrade advice asks whether an instance had any alarm during the quiet
    window: the events must be kept at least that long while it runs."""
    days, window = parsed["retention_events_days"], parsed["advice_quiet_window_seconds"]
    watching = parsed["instance_management"] and parsed["watchdog_interval_seconds"] > 0
    if watching and 0 < days * DAY < window:
        raise ConfigError(
            f"RETENTION_EVENTS_DAYS={days:g} is invalid: the watchdog's downgrade advice looks "
            f"for alarms over ADVICE_QUIET_WINDOW_SECONDS ({window / DAY:g} days); keep events at "
            "least that long (or 0: for ever)"
        )


def _management_for(
    pairs: tuple[tuple[str, str], ...], instance_ids: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """Each management URL tied to a managed instance (a lone URL: the first one)."""
    resolved: list[tuple[str, str]] = []
    for instance, url in pairs:
        if not instance:
            if not instance_ids:
                raise ConfigError(
                    "CLOUDAMQP_INSTANCE_MANAGEMENT_URL=(hidden) is invalid: a URL without id= "
                    "needs CLOUDAMQP_INSTANCE_ID"
                )
            instance = instance_ids[0]
        if instance not in instance_ids:
            raise ConfigError(
                f"CLOUDAMQP_INSTANCE_MANAGEMENT_URL=(hidden) is invalid: instance {instance} "
                "is not in CLOUDAMQP_INSTANCE_ID"
            )
        if any(seen == instance for seen, _ in resolved):
            raise ConfigError(
                f"CLOUDAMQP_INSTANCE_MANAGEMENT_URL=(hidden) is invalid: instance {instance} is named twice"
            )
        resolved.append((instance, url))
    return tuple(resolved)
