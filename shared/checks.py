"""The set-up check's verdicts (``autopilot check``), as pure functions of what was read.

Each check is one ``Line``: ``ok``, ``warn`` or ``fail``, a sentence, and the fix where there
is one. ``worker.check`` reads what there is to read (the API, the management URLs, the
notification endpoints, the broker, the store) and hands it here; the verdicts, the report
and its exit code are decided here. No line ever carries a secret: instances, endpoints and
URLs are named by what is safe to show (an id, an origin, a URL with its password masked).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from shared.alarm import iso
from shared.catalogue import Catalogue
from shared.plans import parse_plan
from shared.policy import NEXT, Policy, Rule, plan_names, rule_budget
from shared.pricing import money
from shared.retention import DAY, Kind, cutoffs
from shared.settings import Settings
from shared.store.retention import Facts

STRONG_TOKEN = 24  # characters: a token in a URL should not be guessable
TOKEN_FIX = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Line:
    level: Level
    check: str  # what was checked: "api key", "instance 3555…", "notify slack-1a2b3c4d"
    text: str
    fix: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level.value, "check": self.check, "text": self.text, "fix": self.fix}


def ok(check: str, text: str) -> Line:
    return Line(Level.OK, check, text)


def warn(check: str, text: str, fix: str | None = None) -> Line:
    return Line(Level.WARN, check, text, fix)


def fail(check: str, text: str, fix: str | None = None) -> Line:
    return Line(Level.FAIL, check, text, fix)


@dataclass(frozen=True)
class Report:
    lines: tuple[Line, ...]
    at: float
    source: str = ""

    def count(self, level: Level) -> int:
        return sum(1 for line in self.lines if line.level is level)

    @property
    def exit_code(self) -> int:
        """0 when nothing fails (warnings allowed), 1 otherwise."""
        return 1 if self.count(Level.FAIL) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "at": iso(self.at),
            "source": self.source,
            "failed": self.count(Level.FAIL),
            "warned": self.count(Level.WARN),
            "lines": [line.as_dict() for line in self.lines],
        }

    def render(self) -> str:
        """One line per check (``ok   api key   the API key is accepted …``), the fix under
        each that has one, and a last line that sums up."""
        width = max((len(line.check) for line in self.lines), default=0)
        out = []
        for line in self.lines:
            out.append(f"{line.level.value:<4}  {line.check:<{width}}  {line.text}")
            if line.fix and line.level is not Level.OK:
                out.append(f"{'':<4}  {'':<{width}}  fix: {line.fix}")
        failed, warned = self.count(Level.FAIL), self.count(Level.WARN)
        out.append(f"{failed} failed, {warned} warning(s), {len(self.lines) - failed - warned} ok")
        return "\n".join(out)


def origin(url: str) -> str:
    """``https://hooks.slack.com/…``: where a URL goes, without the credentials, path or query
    that may be its secret."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}/…"


def password_of(url: str) -> str | None:
    return urlsplit(url).password


# --- tokens and the URL CloudAMQP posts to -----------------------------------------------------


def _weak(token: str) -> bool:
    return len(token) < STRONG_TOKEN or len(set(token)) < 8


def token_lines(settings: Settings) -> list[Line]:
    lines = []
    webhook = settings.webhook_token
    if not webhook:
        lines.append(
            warn(
                "WEBHOOK_TOKEN",
                "unset: anyone who can reach the receiver can post alarms",
                f"set WEBHOOK_TOKEN to a long random string ({TOKEN_FIX})",
            )
        )
    elif _weak(webhook):
        lines.append(
            warn(
                "WEBHOOK_TOKEN",
                f"set, but weak ({len(webhook)} characters, {len(set(webhook))} different)",
                f"use at least {STRONG_TOKEN} random characters ({TOKEN_FIX})",
            )
        )
    else:
        lines.append(ok("WEBHOOK_TOKEN", f"set ({len(webhook)} characters)"))
    operator = settings.operator_token
    if not operator:
        lines.append(
            warn(
                "OPERATOR_TOKEN",
                "unset: pause, resume, approve and deny answer 403 (only the CLI can approve)",
                f"set OPERATOR_TOKEN, different from WEBHOOK_TOKEN ({TOKEN_FIX})",
            )
        )
    elif _weak(operator):
        lines.append(
            warn(
                "OPERATOR_TOKEN",
                f"set, but weak ({len(operator)} characters, {len(set(operator))} different)",
                f"it approves spending: use at least {STRONG_TOKEN} random characters ({TOKEN_FIX})",
            )
        )
    else:
        lines.append(ok("OPERATOR_TOKEN", f"set ({len(operator)} characters), not the webhook token"))
    return lines


def webhook_url(settings: Settings) -> str:
    """The URL to give CloudAMQP as the alarm recipient, the token as a placeholder: under
    ``PUBLIC_URL``, else the receiver's own address (as ``make run`` prints it)."""
    if settings.public_url:
        base = settings.public_url
    else:
        host = settings.receiver_host
        host = "localhost" if host in {"0.0.0.0", "::", ""} else host
        host = f"[{host}]" if ":" in host else host
        base = f"http://{host}:{settings.receiver_port}"
    return f"{base}/cloudamqp/alarm" + ("/<WEBHOOK_TOKEN>" if settings.webhook_token else "")


def public_url_line(settings: Settings) -> Line:
    url = webhook_url(settings)
    if not settings.public_url:
        return warn(
            "webhook URL",
            f"PUBLIC_URL is unset: the receiver answers at {url}, which CloudAMQP cannot reach",
            "set PUBLIC_URL to the https address CloudAMQP reaches the receiver at",
        )
    if urlsplit(url).scheme != "https":
        return warn(
            "webhook URL",
            f"give CloudAMQP {url}: not https, so the token travels in clear",
            "put the receiver behind TLS and set PUBLIC_URL to its https address",
        )
    return ok("webhook URL", f"give CloudAMQP {url} (Alarms → Notification recipients → Webhook)")


# --- CloudAMQP: the instances, the plans, what each rule may cost ------------------------------


@dataclass(frozen=True)
class Listed:
    """One instance as ``GET /api/instances`` lists it (nothing secret)."""

    api_id: str
    name: str
    plan: str | None


def find_instance(ref: str, listing: Sequence[Mapping[str, Any]]) -> Listed | None:
    """The listed instance ``ref`` names: its API id, console UUID (``providerid``) or name."""
    for key in ("id", "providerid", "name"):
        for item in listing:
            value = item.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value) == ref:
                plan = item.get("plan")
                return Listed(
                    str(item.get("id")), str(item.get("name") or ""), plan if isinstance(plan, str) else None
                )
    return None


def instance_lines(
    settings: Settings, listing: Sequence[Mapping[str, Any]], catalogue: Catalogue | None
) -> list[Line]:
    if not settings.instance_ids:
        return [
            warn(
                "instances",
                "CLOUDAMQP_INSTANCE_ID is unset: alarms are recorded, no instance is ever upgraded",
                "set CLOUDAMQP_INSTANCE_ID to the instances to manage (API id, console UUID or name)",
            )
        ]
    lines = []
    names = sorted(str(item.get("name")) for item in listing if item.get("name"))
    for ref in settings.instance_ids:
        found = find_instance(ref, listing)
        if found is None:
            shown = ", ".join(names[:10]) + (", …" if len(names) > 10 else "") if names else "none"
            lines.append(
                fail(
                    f"instance {ref}",
                    "CloudAMQP lists no instance with this API id, console UUID or name",
                    f"fix CLOUDAMQP_INSTANCE_ID (the instances this key sees: {shown})",
                )
            )
            continue
        price = catalogue.price(found.plan) if catalogue is not None else None
        cost = f" ({money(price)} a month)" if price is not None else ""
        lines.append(
            ok(
                f"instance {ref}",
                f"{found.name or '?'}, API id {found.api_id}, on {found.plan or '?'}{cost}",
            )
        )
    return lines


def catalogue_line(catalogue: Catalogue | None, error: str | None, fresh: bool) -> Line:
    if catalogue is None:
        return warn(
            "plans",
            "CLOUDAMQP_API_KEY is unset: plan names and prices are not checked; the built-in ladder stands",
            "set CLOUDAMQP_API_KEY",
        )
    if not catalogue.known:
        return fail(
            "plans",
            f"GET /api/plans did not answer ({error}) and no copy is kept: prices are not known",
            "check the API (CLOUDAMQP_API_URL) and the key",
        )
    if not fresh:
        return warn(
            "plans",
            f"GET /api/plans did not answer ({error}); the copy kept from {iso(catalogue.read_at)} is used",
            "check the API (CLOUDAMQP_API_URL) and the key",
        )
    return ok("plans", f"CloudAMQP sells {len(catalogue.offers)} RabbitMQ plans (GET /api/plans)")


def plan_lines(policy: Policy, catalogue: Catalogue, *, from_settings: bool) -> list[Line]:
    """Every plan named anywhere (``UPGRADE_PLAN``, rules' plans, ``max_plan``, ladders):
    sold, or a ``fail`` naming the closest plans CloudAMQP does sell."""
    if not catalogue.known:
        return []
    lines = []
    named = plan_names(policy, from_settings=from_settings)
    for where, name in named:
        family = parse_plan(name)
        if where.endswith(": ladder") and family is not None:
            if any(catalogue.sells(f"{family.family}-{n}") for n in (1, 3, 5)):
                continue
            text = (
                f"ladder family {family.family!r} is not sold (closest: {', '.join(catalogue.closest(name))})"
            )
        elif catalogue.sells(name):
            continue
        else:
            text = catalogue.unsold(name)
        line = fail(where, text, "name a plan CloudAMQP sells (GET /api/plans lists them)")
        if line not in lines:
            lines.append(line)
    if not lines:
        lines.append(ok("plan names", f"every plan the policy names is sold ({len({n for _, n in named})})"))
    return lines


def worst_case(rule: Rule, catalogue: Catalogue, nodes: Iterable[int]) -> tuple[str, float] | None:
    """The dearest plan ``rule`` can ask for, and its price: its fixed plan, or for ``next``
    the dearest sold plan of its ladder up to ``max_plan`` at the node counts given."""
    if rule.plan != NEXT:
        price = catalogue.price(rule.plan)
        return (rule.plan, price) if price is not None else None
    top = rule.ladder.families
    if rule.max_plan is not None and rule.max_plan.family in top:
        top = top[: top.index(rule.max_plan.family) + 1]
    priced = [
        (price, name)
        for family in top
        for n in sorted(set(nodes)) or [1]
        if (price := catalogue.price(name := f"{family}-{n}")) is not None
    ]
    if not priced:
        return None
    price, name = max(priced)
    return name, price


def cost_lines(policy: Policy, settings: Settings, catalogue: Catalogue, nodes: Iterable[int]) -> list[Line]:
    """What each upgrading rule may cost at worst, and whether a cap holds it."""
    if not catalogue.known:
        return []
    lines = []
    counts = list(nodes)
    for number, rule in enumerate(policy.rules, start=1):
        if rule.action != "upgrade":
            continue
        check = f"rule {number} ({rule.name})"
        worst = worst_case(rule, catalogue, counts)
        if worst is None:
            continue
        plan, price = worst
        cap, cap_name = rule_budget(rule, settings)
        if cap is None:
            lines.append(
                warn(
                    check,
                    f"worst case {plan} at {money(price)} a month, and no spending cap",
                    "set MAX_MONTHLY_PRICE, or max_monthly_price on the rule",
                )
            )
        elif price > cap:
            held = "asks for approval" if rule.approve or rule.over_budget == "ask" else "is skipped"
            lines.append(
                ok(
                    check,
                    f"worst case {plan} at {money(price)} a month; over {cap_name} {money(cap)} it {held}",
                )
            )
        else:
            lines.append(
                ok(check, f"worst case {plan} at {money(price)} a month, within {cap_name} {money(cap)}")
            )
    return lines


def listed_nodes(settings: Settings, listing: Sequence[Mapping[str, Any]]) -> list[int]:
    """The node counts of the managed instances' plans (``hare-3`` → 3)."""
    counts = []
    for ref in settings.instance_ids:
        found = find_instance(ref, listing)
        plan = parse_plan(found.plan) if found is not None and found.plan else None
        if plan is not None:
            counts.append(plan.nodes)
    return counts


# --- the store --------------------------------------------------------------------------------


def _size(n: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _days(seconds: float) -> str:
    days = seconds / DAY
    return f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.0f} h"


def store_lines(settings: Settings, facts: Facts, now: float) -> list[Line]:
    """The store's size, and the oldest row of each kind against how long it is kept: a
    warning where old rows can only grow (pruning off, or an SQLite file that cannot shrink)."""
    lines: list[Line] = []
    if facts.size is not None:
        if facts.free is None:
            lines.append(ok("store size", f"{_size(facts.size)} (the PostgreSQL database)"))
        elif facts.incremental is False and facts.free:
            lines.append(
                warn(
                    "store size",
                    f"{_size(facts.size)}, of which {_size(facts.free)} free pages the file never hands back "
                    "(it predates incremental vacuum)",
                    "stop the workers and run `autopilot vacuum` once",
                )
            )
        else:
            lines.append(
                ok("store size", f"{_size(facts.size)} (the SQLite file; {_size(facts.free or 0)} free)")
            )
    limits, off = cutoffs(settings.retention, now), settings.retention_interval_seconds <= 0
    said, past = [], []
    for kind in Kind:
        oldest = facts.oldest.get(kind)
        kept = settings.retention.days(kind)
        limit = f"kept {kept:g} days" if kept > 0 else "kept for ever"
        age = _days(now - oldest) if oldest is not None else None
        said.append(f"{kind.value} {age} old ({limit})" if age is not None else f"{kind.value}: none")
        if oldest is not None and kind in limits and oldest < limits[kind]:
            past.append(kind.value)
    text = "oldest rows: " + ", ".join(said)
    if off and past:
        fix = (
            "set RETENTION_INTERVAL_SECONDS (3600 by default), or RETENTION_*_DAYS=0 to keep a kind for ever"
        )
        lines.append(warn("retention", f"{text}; pruning is off (RETENTION_INTERVAL_SECONDS=0)", fix))
    else:
        lines.append(ok("retention", text))
    return lines
