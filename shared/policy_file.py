"""Reading and validating ``POLICY_FILE`` (TOML) into a ``Policy``.

Every mistake is one ``PolicyError`` line naming the file, the rule number and the key, so
the worker can stop at start with exactly that line. See ``policy.example.toml``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shared.disk import EXTRA_DISK_SIZES, NEXT_SIZE, DiskTarget
from shared.fields import FIELDS, FieldMap, parse_path
from shared.plans import DEFAULT_LADDER, Ladder, Plan, parse_plan
from shared.policy import (
    ALARM_TYPES,
    DEFAULT_APPROVE_TIMEOUT,
    NEXT,
    OVER_BUDGET_ASK,
    OVER_BUDGET_SKIP,
    REMEDIES,
    RESIZE_DISK,
    Policy,
    Rule,
)

# [[notify]]: worker.notify_config; [fields]: where an alarm's fields are read from.
TOP_KEYS = frozenset({"ladder", "max_plan", "rules", "notify", "fields"})
RULE_KEYS = frozenset(
    {"name", "alarm_type", "above", "below", "instances", "action", "plan", "max_plan", "ladder",
     "cooldown_seconds", "approve", "approve_timeout", "time_threshold", "forecast", "lead_time",
     "max_monthly_price", "over_budget",
     "extra_disk", "max_extra_disk", "allow_downtime"}
)  # fmt: skip
# A ``resize_disk`` rule's own keys, and the plan keys it has no use for.
DISK_KEYS = ("extra_disk", "max_extra_disk", "allow_downtime")
PLAN_KEYS = ("plan", "max_plan", "ladder")


MAX_APPROVE_TIMEOUT = 7 * 86400.0  # an upgrade nobody answers within a week is not wanted
# CloudAMQP's own provider waits up to three hours for a plan change; a day ahead is no forecast.
MAX_LEAD_TIME = 86400.0


class PolicyError(Exception):
    """A policy file mistake; the message is one line naming file, rule and key."""


def read_policy_file(path: str) -> dict[str, Any]:
    """``POLICY_FILE`` as TOML; ``PolicyError`` (one line) when it cannot be read."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"POLICY_FILE {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"POLICY_FILE {path}: not valid TOML: {exc}") from None


def load_policy(path: str) -> Policy:
    """The policy in ``path``."""
    return parse_policy(read_policy_file(path), path)


def parse_policy(data: dict[str, Any], path: str = "<policy>") -> Policy:
    """Validate parsed TOML; pure, so every mistake has a table test."""

    def fail(where: str, message: str) -> PolicyError:
        return PolicyError(f"POLICY_FILE {path}: {where}: {message}")

    for key in data:
        if key not in TOP_KEYS:
            raise fail(f"key {key!r}", f"unknown key (known: {', '.join(sorted(TOP_KEYS))})")
    try:
        ladder = _ladder(data.get("ladder", list(DEFAULT_LADDER)))
    except ValueError as exc:
        raise fail("key 'ladder'", str(exc)) from None
    default_max = data.get("max_plan")
    rules_data = data.get("rules")
    if not isinstance(rules_data, list) or not rules_data:
        raise fail("key 'rules'", "expected at least one [[rules]] table")
    rules: list[Rule] = []
    for number, raw in enumerate(rules_data, start=1):
        where = f"rule {number}"
        if not isinstance(raw, dict):
            raise fail(where, "expected a [[rules]] table")
        try:
            rule = _rule(raw, number, ladder, default_max)
        except _KeyProblem as exc:
            raise fail(f"{where}: key {exc.key!r}", exc.message) from None
        rules.append(rule)
    try:
        fields = parse_fields(data.get("fields", {}))
    except _KeyProblem as exc:
        raise fail(f"[fields] key {exc.key!r}", exc.message) from None
    return Policy(tuple(rules), fields)


def parse_fields(raw: Any) -> FieldMap:
    """``[fields]``: our field name → the key or dotted path of the payload it is read from
    (``alarm_type = "type"``, ``instance_id = "metadata.instance"``)."""
    if not isinstance(raw, dict):
        raise _KeyProblem("fields", 'expected a table: [fields] with alarm_type = "type"-style lines')
    paths = []
    for name, value in raw.items():
        if name not in FIELDS:
            raise _KeyProblem(name, f"not a field the autopilot reads (known: {', '.join(FIELDS)})")
        if not isinstance(value, str):
            raise _KeyProblem(name, "expected the payload's key or dotted path, as a string")
        try:
            paths.append((name, parse_path(value)))
        except ValueError as exc:
            raise _KeyProblem(name, str(exc)) from None
    return FieldMap(tuple(paths))


class _KeyProblem(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def _ladder(raw: Any) -> Ladder:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError("expected a list of plan names")
    return Ladder.of(tuple(raw))


def _number(raw: dict[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _KeyProblem(key, "expected a number")
    return float(value)


def _max_plan(value: Any, ladder: Ladder) -> Plan | None:
    if value is None:
        return None
    plan = parse_plan(value) if isinstance(value, str) else None
    if plan is None:
        raise _KeyProblem("max_plan", f"{value!r} is not a plan name (like panda-1)")
    if ladder.position(plan) is None:
        raise _KeyProblem("max_plan", f"{value!r} is not on the ladder")
    return plan


def _thresholds(raw: dict[str, Any]) -> tuple[float | None, float | None]:
    above, below = _number(raw, "above"), _number(raw, "below")
    if above is not None and below is not None and below <= above:
        raise _KeyProblem(
            "below", f"below ({below:g}) must be greater than above ({above:g}): the rule never matches"
        )
    return above, below


def _instances(raw: dict[str, Any]) -> tuple[str, ...]:
    instances = raw.get("instances", [])
    if not isinstance(instances, list) or not all(isinstance(i, str) and i for i in instances):
        raise _KeyProblem("instances", "expected a list of instance ids")
    return tuple(instances)


def _approval(raw: dict[str, Any], action: str) -> tuple[bool, float]:
    approve = raw.get("approve", False)
    if not isinstance(approve, bool):
        raise _KeyProblem("approve", "expected true or false")
    if approve and action not in REMEDIES:
        raise _KeyProblem("approve", "only an 'upgrade' or 'resize_disk' rule can ask for approval")
    timeout = _number(raw, "approve_timeout")
    if timeout is not None and not approve:
        raise _KeyProblem("approve_timeout", "only means something with approve = true")
    if timeout is not None and not 0 < timeout <= MAX_APPROVE_TIMEOUT:
        raise _KeyProblem(
            "approve_timeout", f"expected seconds > 0 and at most {MAX_APPROVE_TIMEOUT:g} (7 days)"
        )
    return approve, DEFAULT_APPROVE_TIMEOUT if timeout is None else timeout


def _forecast(
    raw: dict[str, Any], alarm_type: str, action: str, above: float | None, below: float | None
) -> tuple[bool, float | None]:
    forecast = raw.get("forecast", False)
    if not isinstance(forecast, bool):
        raise _KeyProblem("forecast", "expected true or false")
    if forecast and action != "upgrade":
        raise _KeyProblem("forecast", "only an 'upgrade' rule can act on a forecast")
    # What the watchdog can project from /api/nodes: memory percent against ``above``, or disk
    # headroom (a disk rule's thresholds are CloudAMQP's percent of disk used, never sampled).
    if forecast and not (
        (alarm_type == "memory" and above is not None)
        or (alarm_type == "disk" and above is None and below is None)
    ):
        raise _KeyProblem("forecast", "needs a memory rule with 'above', or a disk rule without thresholds")
    lead_time = _number(raw, "lead_time")
    if lead_time is not None and not forecast:
        raise _KeyProblem("lead_time", "only means something with forecast = true")
    if lead_time is not None and not 0 < lead_time <= MAX_LEAD_TIME:
        raise _KeyProblem("lead_time", f"expected seconds > 0 and at most {MAX_LEAD_TIME:g} (a day)")
    return forecast, lead_time


def _budget(raw: dict[str, Any], action: str) -> tuple[float | None, str]:
    cap = _number(raw, "max_monthly_price")
    if cap is not None and action != "upgrade":
        raise _KeyProblem("max_monthly_price", "only an 'upgrade' rule spends money")
    if cap is not None and cap < 0:
        raise _KeyProblem("max_monthly_price", "expected US dollars a month, >= 0")
    mode = raw.get("over_budget", OVER_BUDGET_SKIP)
    if mode not in (OVER_BUDGET_SKIP, OVER_BUDGET_ASK):
        raise _KeyProblem("over_budget", f"expected {OVER_BUDGET_SKIP!r} or {OVER_BUDGET_ASK!r}")
    if mode == OVER_BUDGET_ASK and action != "upgrade":
        raise _KeyProblem("over_budget", "only an 'upgrade' rule can ask for approval")
    return cap, mode


def _size(value: Any, key: str) -> int:
    """An extra disk size (GB) CloudAMQP sells, above none."""
    sizes = EXTRA_DISK_SIZES[1:]
    if isinstance(value, bool) or not isinstance(value, int) or value not in sizes:
        wanted = "'next' or " if key == "extra_disk" else ""
        listed = ", ".join(str(size) for size in sizes)
        raise _KeyProblem(key, f"{value!r} is not an extra disk size: expected {wanted}one of {listed} (GB)")
    return value


def _disk(raw: dict[str, Any], action: str, alarm_type: str, approve: bool) -> DiskTarget | None:
    """A ``resize_disk`` rule's target: ``extra_disk`` ("next" or a size), ``max_extra_disk``,
    ``allow_downtime`` (only with a person's approval: a resize with downtime stops the broker)."""
    if action != RESIZE_DISK:
        for key in DISK_KEYS:
            if key in raw:
                raise _KeyProblem(key, "only means something with action = 'resize_disk'")
        return None
    if alarm_type != "disk":
        raise _KeyProblem("action", f"'resize_disk' answers disk alarms only, not {alarm_type!r}")
    for key in PLAN_KEYS:
        if key in raw:
            raise _KeyProblem(key, "a 'resize_disk' rule resizes the disk and never changes the plan")
    extra = raw.get("extra_disk", NEXT_SIZE)
    extra_disk = None if extra == NEXT_SIZE else _size(extra, "extra_disk")
    ceiling = _size(raw["max_extra_disk"], "max_extra_disk") if "max_extra_disk" in raw else None
    if extra_disk is not None and ceiling is not None and extra_disk > ceiling:
        raise _KeyProblem("max_extra_disk", f"{ceiling} GB is below extra_disk ({extra_disk} GB)")
    downtime = raw.get("allow_downtime", False)
    if not isinstance(downtime, bool):
        raise _KeyProblem("allow_downtime", "expected true or false")
    if downtime and not approve:
        raise _KeyProblem(
            "allow_downtime", "true needs approve = true: a person approves each resize with downtime"
        )
    return DiskTarget(extra_disk, ceiling, downtime)


def _rule(raw: dict[str, Any], number: int, top_ladder: Ladder, default_max: Any) -> Rule:
    for key in raw:
        if key not in RULE_KEYS:
            raise _KeyProblem(key, f"unknown key (known: {', '.join(sorted(RULE_KEYS))})")
    alarm_type = raw.get("alarm_type")
    if not isinstance(alarm_type, str) or alarm_type not in ALARM_TYPES:
        raise _KeyProblem("alarm_type", f"{alarm_type!r} is not one of {', '.join(sorted(ALARM_TYPES))}")
    above, below = _thresholds(raw)
    action = raw.get("action", "upgrade")
    if not isinstance(action, str) or action not in REMEDIES | {"none"}:
        raise _KeyProblem("action", "expected 'upgrade', 'resize_disk' or 'none'")
    plan = raw.get("plan", NEXT)
    if not isinstance(plan, str) or not plan.strip():
        raise _KeyProblem("plan", "expected a plan name or 'next'")
    try:
        ladder = _ladder(raw["ladder"]) if "ladder" in raw else top_ladder
    except ValueError as exc:
        raise _KeyProblem("ladder", str(exc)) from None
    cooldown = _number(raw, "cooldown_seconds")
    if cooldown is not None and cooldown < 0:
        raise _KeyProblem("cooldown_seconds", "expected a number >= 0")
    approve, approve_timeout = _approval(raw, action)
    time_threshold = _number(raw, "time_threshold")
    if time_threshold is not None and time_threshold < 0:
        raise _KeyProblem("time_threshold", "expected seconds >= 0")
    forecast, lead_time = _forecast(raw, alarm_type, action, above, below)
    max_monthly_price, over_budget = _budget(raw, action)
    disk = _disk(raw, action, alarm_type, approve)
    name = raw.get("name", f"rule-{number}")
    if not isinstance(name, str) or not name:
        raise _KeyProblem("name", "expected a non-empty string")
    return Rule(
        name=name,
        alarm_type=alarm_type,
        action=action,
        plan=plan.strip(),
        above=above,
        below=below,
        instances=_instances(raw),
        max_plan=_max_plan(raw.get("max_plan", default_max), ladder) if disk is None else None,
        ladder=ladder,
        cooldown_seconds=cooldown,
        approve=approve,
        approve_timeout=approve_timeout,
        time_threshold=time_threshold,
        forecast=forecast,
        lead_time=lead_time,
        max_monthly_price=max_monthly_price,
        over_budget=over_budget,
        disk=disk,
    )
