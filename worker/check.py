"""``autopilot check``: the set-up checked before the first alarm, the way the worker reads it.

Reads what there is to read — the policy and notification configuration, RabbitMQ, the store,
CloudAMQP's API (the key, the instances, the plans), each instance's management API, each
notification endpoint — and hands it to the pure verdicts of ``shared.checks``. The worker
runs the same checks at start (``start_checks``: failures become warnings, it starts anyway)
and keeps the result in the store, where the console's overview shows it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import structlog

from shared import brokers, checks
from shared.alarm import new_id
from shared.catalogue import Catalogue
from shared.checks import Line, Report, fail, ok, warn
from shared.errors import PermanentError, RetryableError, StoreError
from shared.notifications import ChannelKind, Endpoint, body
from shared.policy import Policy
from shared.policy_file import PolicyError, load_policy
from shared.settings import Settings, redact_url
from shared.store import Store
from shared.store.checks import save_check_run
from shared.store.prices import kept_catalogue
from shared.store.retention import facts as retention_facts
from worker import channels, notify_config
from worker.cloudamqp import KEY_REFUSED, CloudAmqpClient
from worker.management import ManagementApi, ManagementUnavailable

log = structlog.get_logger("worker.check")

TIMEOUT = 10.0  # seconds for any one probe
KEY_FIX = "make a key in the CloudAMQP console (your profile → API Access) and set CLOUDAMQP_API_KEY"


class Checker:
    """One run of the checks (``run``) against the configuration ``settings`` describe."""

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        *,
        store: Store | None = None,
        send_test: bool = False,
        source: str = "",
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.session = session
        self.store = store
        self.send_test = send_test
        self.source = source
        self.clock = clock
        self._opened: Store | None = None

    async def run(self) -> Report:
        lines: list[Line] = []
        policy = self._policy(lines)
        endpoints = self._endpoints(lines)
        lines.append(await self._broker())
        lines += await self._store()
        listing, client = await self._api(lines)
        catalogue = await self._catalogue(lines, client)
        settings = self.settings
        if listing is not None:
            lines += checks.instance_lines(settings, listing, catalogue)
        elif settings.cloudamqp_api_key and settings.instance_ids:
            lines.append(
                warn(
                    "instances", "not checked: CloudAMQP's instance list could not be read (see the API key)"
                )
            )
        if policy is not None and catalogue is not None and catalogue.known:
            from_settings = not settings.policy_file
            lines += checks.plan_lines(policy, catalogue, from_settings=from_settings)
            nodes = checks.listed_nodes(settings, listing or [])
            lines += checks.cost_lines(policy, settings, catalogue, nodes)
        lines += await self._management()
        lines += [await self._endpoint(e) for e in endpoints] or [
            ok("notifications", "no channel configured (NOTIFY_* or [[notify]]; optional)")
        ]
        lines += checks.token_lines(settings)
        lines.append(checks.public_url_line(settings))
        return Report(tuple(lines), self.clock(), self.source)

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.close()

    # --- configuration ----------------------------------------------------------------------

    def _policy(self, lines: list[Line]) -> Policy | None:
        settings = self.settings
        if not settings.policy_file:
            rule = Policy.default(settings).rules[0]
            lines.append(
                ok("policy", f"the default rule: memory above {rule.above:g}% → UPGRADE_PLAN {rule.plan}")
            )
            return Policy.default(settings)
        try:
            policy = load_policy(settings.policy_file)
        except PolicyError as exc:
            lines.append(
                fail("policy", str(exc), "fix the line named (policy.example.toml documents every key)")
            )
            return None
        mapped = f"; [fields] maps {', '.join(f'{k} ← {v}' for k, v in policy.fields.describe().items())}"
        said = f"{settings.policy_file}: {len(policy.rules)} rule(s)" + (
            mapped if policy.fields.paths else ""
        )
        lines.append(ok("policy", said))
        return policy

    def _endpoints(self, lines: list[Line]) -> list[Endpoint]:
        try:
            return notify_config.endpoints(self.settings)
        except PolicyError as exc:
            lines.append(fail("notifications", str(exc), "fix the [[notify]] table named"))
            return []

    # --- RabbitMQ and the store -----------------------------------------------------------------

    async def _broker(self) -> Line:
        where = brokers.redact_urls(self.settings.rabbitmq_url)
        try:
            connection = await brokers.connect(self.settings.rabbitmq_url, node_timeout=TIMEOUT)
        except Exception as exc:
            why = _scrub(f"{type(exc).__name__}: {exc}", self.settings.rabbitmq_url)
            return fail(
                "RabbitMQ",
                f"does not answer at {where}: {why[:300]}",
                "start RabbitMQ, or fix RABBITMQ_URL (host, port, user, password, vhost)",
            )
        await connection.close()
        return ok("RabbitMQ", f"answers at {where}")

    async def _store(self) -> list[Line]:
        """Whether the store answers; then its size and oldest rows (``checks.store_lines``)."""
        where = redact_url(self.settings.database_url)
        try:
            if self.store is None:
                self.store = self._opened = await Store.open(self.settings.database_url)
            await self.store.ping()
            found = await retention_facts(self.store.db)
        except (StoreError, OSError) as exc:
            self.store = None
            why = _scrub(str(exc), self.settings.database_url)
            return [
                fail(
                    "store",
                    f"does not answer at {where}: {why[:300]}",
                    "fix DATABASE_URL, or start the database",
                )
            ]
        return [ok("store", f"answers at {where}"), *checks.store_lines(self.settings, found, self.clock())]

    # --- CloudAMQP --------------------------------------------------------------------------------

    async def _api(self, lines: list[Line]) -> tuple[list[dict[str, Any]] | None, CloudAmqpClient | None]:
        settings = self.settings
        key = settings.cloudamqp_api_key
        if not key:
            lines.append(
                warn("API key", "CLOUDAMQP_API_KEY is unset: dry run, nothing is ever called", KEY_FIX)
            )
            return None, None
        client = CloudAmqpClient(
            self.session,
            base_url=settings.cloudamqp_api_url,
            api_key=key,
            timeout=min(settings.api_timeout_seconds, TIMEOUT),
            quick_retries=0,
            mode=settings.upgrade_api,
        )
        where = redact_url(settings.cloudamqp_api_url)
        try:
            listing = await client.list_instances()
        except PermanentError as exc:
            refused = str(exc).startswith(KEY_REFUSED)
            lines.append(
                fail("API key", f"{where}: {exc}", KEY_FIX if refused else "check CLOUDAMQP_API_URL")
            )
            return None, None
        except RetryableError as exc:
            lines.append(fail("API key", f"{where}: {exc}", "check CLOUDAMQP_API_URL and the network"))
            return None, None
        dry = " (DRY_RUN is set: nothing is called)" if settings.dry_run else ""
        lines.append(ok("API key", f"accepted by {where} (GET /api/instances lists {len(listing)}){dry}"))
        return listing, client

    async def _catalogue(self, lines: list[Line], client: CloudAmqpClient | None) -> Catalogue | None:
        """What CloudAMQP sells, as the worker would know it: read now, else the copy kept."""
        if not self.settings.cloudamqp_api_key:
            lines.append(checks.catalogue_line(None, None, False))
            return None
        error = "the API key check failed"
        if client is not None:
            try:
                catalogue = Catalogue.from_listing(await client.list_plans(), self.clock())
            except (RetryableError, PermanentError, ValueError) as exc:
                error = str(exc)
            else:
                lines.append(checks.catalogue_line(catalogue, None, True))
                return catalogue
        kept = None
        if self.store is not None:
            try:
                kept = await kept_catalogue(self.store.db)
            except (StoreError, OSError):
                kept = None
        lines.append(checks.catalogue_line(kept or Catalogue(), error, False))
        return kept

    # --- the instances' management APIs --------------------------------------------------------

    async def _management(self) -> list[Line]:
        settings = self.settings
        if not settings.instance_management:
            return [
                ok(
                    "management",
                    "CLOUDAMQP_INSTANCE_MANAGEMENT_URL is unset: upgrades are not verified against the "
                    "instance's nodes, and there is no watchdog (optional)",
                )
            ]
        api = ManagementApi(self.session, dict(settings.instance_management), timeout=TIMEOUT)
        lines = []
        for instance, url in settings.instance_management:
            try:
                nodes = await api.nodes(instance)
            except ManagementUnavailable as exc:
                lines.append(
                    fail(
                        f"management {instance}",
                        str(exc),
                        f"fix its URL in CLOUDAMQP_INSTANCE_MANAGEMENT_URL: the management URL and a user "
                        f"(monitoring is enough) from the instance's CloudAMQP page ({redact_url(url)})",
                    )
                )
                continue
            lines.append(ok(f"management {instance}", f"GET /api/nodes answers: {len(nodes)} node(s)"))
        return lines

    # --- notification endpoints ----------------------------------------------------------------

    async def _endpoint(self, endpoint: Endpoint) -> Line:
        check = f"notify {endpoint.id}"
        where = checks.origin(endpoint.url)
        target = f"{endpoint.url}/v2/enqueue" if endpoint.kind is ChannelKind.PAGERDUTY else endpoint.url
        if self.send_test:
            return await self._send_test(endpoint, check, where)
        try:
            async with self.session.head(
                target, timeout=aiohttp.ClientTimeout(total=TIMEOUT), allow_redirects=False
            ) as resp:
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return fail(
                check,
                f"{endpoint.kind.value} at {where} does not answer: {type(exc).__name__}",
                _fix(endpoint),
            )
        if status in (404, 410):
            return fail(
                check, f"{endpoint.kind.value} at {where} answers {status}: no endpoint there", _fix(endpoint)
            )
        if status >= 500:
            return warn(
                check, f"{endpoint.kind.value} at {where} answers {status}", "try again with --send-test"
            )
        return ok(check, f"{endpoint.kind.value} at {where} answers (HEAD: {status}); --send-test sends one")

    async def _send_test(self, endpoint: Endpoint, check: str, where: str) -> Line:
        now = self.clock()
        payload = body(
            channels.TEST_EVENT,
            now,
            {"test": True, "message": channels.TEST_TEXT, "source": self.source or "autopilot check"},
        )
        request = channels.build(endpoint, f"msg_test_{new_id()}", payload, now, self.settings.public_url)
        try:
            answer = await channels.send(self.session, request, TIMEOUT)
        except RetryableError as exc:
            return fail(
                check,
                f"{endpoint.kind.value} at {where}: the test notification failed: {exc}",
                _fix(endpoint),
            )
        if channels.verdict(answer.status) is channels.Verdict.DELIVERED:
            return ok(check, f"{endpoint.kind.value} at {where} took the test notification ({answer.status})")
        return fail(
            check,
            f"{endpoint.kind.value} at {where} refused the test notification ({answer.status})",
            _fix(endpoint),
        )


def _fix(endpoint: Endpoint) -> str:
    variable = {
        ChannelKind.WEBHOOK: "NOTIFY_WEBHOOK_URL",
        ChannelKind.SLACK: "NOTIFY_SLACK_URL",
        ChannelKind.PAGERDUTY: "NOTIFY_PAGERDUTY_URL / NOTIFY_PAGERDUTY_ROUTING_KEY",
    }[endpoint.kind]
    return f"check the URL ({variable}, or its [[notify]] table): the endpoint may have been removed"


def _scrub(text: str, *urls: str) -> str:
    """``text`` without the passwords of ``urls`` (an error that repeats a URL)."""
    for configured in urls:
        for url in brokers.split_urls(configured) if "://" in configured else ():
            password = checks.password_of(url)
            if password:
                text = text.replace(password, "***")
    return text


async def keep(store: Store, report: Report) -> None:
    """Keep a result for the console's overview."""
    await save_check_run(
        store.db,
        new_id(),
        report.at,
        report.source,
        report.count(checks.Level.FAIL),
        report.count(checks.Level.WARN),
        report.as_dict(),
    )


async def start_checks(
    settings: Settings, session: aiohttp.ClientSession, store: Store, source: str, stop: asyncio.Event
) -> None:
    """The worker's own run at start, beside its work: each failure a warning (the worker
    runs on), the result kept for the console. Nothing here may stop the worker, nor hold up
    its stop (a probe waiting out its time-out is left)."""
    run = asyncio.ensure_future(_start_checks(settings, session, store, source))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({run, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (run, stopped):
            task.cancel()
        results = await asyncio.gather(run, stopped, return_exceptions=True)
    failure = results[0]
    if isinstance(failure, Exception):
        log.warning("check.crashed", error=f"{type(failure).__name__}: {failure}"[:300])


async def _start_checks(
    settings: Settings, session: aiohttp.ClientSession, store: Store, source: str
) -> Report:
    checker = Checker(settings, session, store=store, source=source)
    report = await checker.run()
    for line in report.lines:
        if line.level is checks.Level.FAIL:
            log.warning("check.failed", check=line.check, detail=line.text, fix=line.fix)
    log.info("check.done", failed=report.count(checks.Level.FAIL), warned=report.count(checks.Level.WARN))
    try:
        await keep(store, report)
    except (StoreError, OSError) as exc:
        log.warning("check.not_kept", error=str(exc))
    return report


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)
