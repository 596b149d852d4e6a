"""Where remediation is decided: pure functions of (alarm, state, policy, now, catalogue).

No I/O here. The worker gathers the state, calls ``decide`` and carries the decision out;
every ``Skip`` has a reason that ends up in the log, in ``GET /actions`` and in metrics.
Where the plan asked for is known (a fixed plan, or ``next`` from the plan the store last
saw), ``decide`` prices it against CloudAMQP's catalogue and the spending caps
(``shared.pricing``): a plan not sold, a shared ↔ dedicated move or a plan over budget is a
skip before anything is claimed — or, over budget with ``approve`` / ``over_budget = "ask"``,
a request for a person's approval. After the worker has read the instance's current plan,
``resolve_plan`` turns the decided target into the plan to ask for, and ``price_check``
prices it again against what was read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from shared.alarm import Alarm
from shared.catalogue import Catalogue
from shared.controls import Pause
from shared.disk import DiskTarget, hours, interval_limit, next_size
from shared.fields import NO_FIELDS, FieldMap
from shared.plans import DEFAULT_LADDER, Ladder, Plan, parse_plan
from shared.pricing import Caps, PlanChange, Refusal, assess_plan_change
from shared.records import Asked
from shared.settings import Settings
from shared.statuses import ActionKind
from shared.verify import CHECKABLE, Condition

ALARM_TYPES = frozenset(
    {"cpu", "memory", "disk", "queue", "connection", "flow", "consumer", "netsplit",
     "server_unreachable", "notice"}
)  # fmt: skip
NEXT = "next"
# What a rule does with an upgrade over its budget (``over_budget``): skip it, or ask a person.
OVER_BUDGET_SKIP, OVER_BUDGET_ASK = "skip", "ask"
FORECAST = "forecast"  # the ``source`` of the watchdog's forecast alarms
RESIZE_DISK = ActionKind.RESIZE_DISK.value  # the action of a rule that grows a disk alarm's disk
REMEDIES = frozenset({"upgrade", RESIZE_DISK})  # the actions that call the CloudAMQP API


class SkipReason(StrEnum):
    METADATA_RESOLVED = "metadata_resolved"
    RESOLVED = "resolved"
    DUPLICATE = "duplicate"
    NO_INSTANCE = "no_instance"
    NOT_MANAGED = "not_managed"
    INVALID_TRIGGERED_AT = "invalid_triggered_at"
    STALE = "stale"
    NO_RULE = "no_rule"
    NO_ACTION = "no_action"
    VALUE_NOT_NUMERIC = "value_not_numeric"
    BELOW_THRESHOLD = "below_threshold"
    COOLING_DOWN = "cooling_down"
    AT_CEILING = "at_ceiling"
    PLAN_NOT_ON_LADDER = "plan_not_on_ladder"
    PLAN_UNKNOWN = "plan_unknown"
    ALREADY_AT_OR_ABOVE_TARGET = "already_at_or_above_target"
    PAUSED = "paused"
    AWAITING_APPROVAL = "awaiting_approval"
    CONDITION_CLEARED = "condition_cleared"  # the instance's nodes no longer show the alarm
    RECONFIGURING = "reconfiguring"  # CloudAMQP is still applying a plan change of ours
    UNKNOWN_PLAN = Refusal.UNKNOWN_PLAN.value  # CloudAMQP does not sell the plan asked for
    NOT_IN_PLACE = Refusal.NOT_IN_PLACE.value  # shared <-> dedicated: CloudAMQP refuses it
    OVER_BUDGET = Refusal.OVER_BUDGET.value  # over max_monthly_price / MAX_MONTHLY_INCREASE
    NOT_SUPPORTED = "not_supported"  # a disk resize of a shared plan (no disk of its own)
    RESIZE_INTERVAL = "resize_interval"  # CloudAMQP resizes a disk once per DISK_RESIZE_INTERVAL_SECONDS
    DISK_UNKNOWN = "disk_unknown"  # the nodes' extra disk could not be read


DEFAULT_APPROVE_TIMEOUT = 3600.0  # seconds an upgrade waits for a person before it expires


@dataclass(frozen=True)
class Rule:
    """One rule of the policy: which alarms it matches and what it does about them."""

    name: str
    alarm_type: str
    action: str = "upgrade"  # or "none"
    plan: str = NEXT
    above: float | None = None
    below: float | None = None
    instances: tuple[str, ...] = ()
    max_plan: Plan | None = None
    ladder: Ladder = field(default_factory=lambda: Ladder.of(DEFAULT_LADDER))
    cooldown_seconds: float | None = None
    approve: bool = False  # a person approves each upgrade first (POST /actions/{id}/approve)
    approve_timeout: float = DEFAULT_APPROVE_TIMEOUT
    # How long the watchdog sees the condition hold before raising an alarm itself (None:
    # WATCHDOG_TIME_THRESHOLD_SECONDS).
    time_threshold: float | None = None
    # The watchdog forecasts the condition from the instance's samples and raises a
    # ``forecast`` alarm ahead of it (``worker.forecast``); ``lead_time``: how far ahead (None:
    # the median of past plan changes).
    forecast: bool = False
    lead_time: float | None = None
    # The most a plan this rule asks for may cost a month (None: MAX_MONTHLY_PRICE), and what
    # to do with an upgrade over it: skip it, or ask a person (``approve = true`` asks anyway).
    max_monthly_price: float | None = None
    over_budget: str = OVER_BUDGET_SKIP
    disk: DiskTarget | None = None  # what a ``resize_disk`` rule asks for

    @property
    def has_threshold(self) -> bool:
        return self.above is not None or self.below is not None

    def condition(self, settings: Settings) -> Condition | None:
        """What the instance's nodes must show for this rule's alarm to still be true; None
        for alarm types the nodes' figures do not show."""
        if self.action not in REMEDIES or self.alarm_type not in CHECKABLE:
            return None
        found = Condition(self.alarm_type, self.above, settings.disk_free_margin)
        return found if found.checkable else None


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    fields: FieldMap = NO_FIELDS  # where an alarm's fields are read from (``[fields]``)

    @classmethod
    def default(cls, settings: Settings) -> Policy:
        """The seed's rule: memory strictly above MEMORY_THRESHOLD → UPGRADE_PLAN."""
        return cls((Rule("default", "memory", plan=settings.upgrade_plan, above=settings.memory_threshold),))


def off_ladder_warnings(policy: Policy, catalogue: Catalogue | None = None) -> list[str]:
    """Fixed target plans that are not on their rule's ladder: passed through as given, but
    worth a warning at start (a plan the catalogue says is not sold has its own warning,
    ``unsold_plan_warnings``)."""
    warnings = []
    for number, rule in enumerate(policy.rules, start=1):
        if rule.action != "upgrade" or rule.plan == NEXT:
            continue
        if catalogue is not None and catalogue.known and not catalogue.sells(rule.plan):
            continue
        plan = parse_plan(rule.plan)
        if plan is None or rule.ladder.position(plan) is None:
            warnings.append(
                f"rule {number} ({rule.name}): plan {rule.plan!r} is not on the ladder; "
                "it is passed to CloudAMQP as given"
            )
    return warnings


def plan_names(policy: Policy, *, from_settings: bool = False) -> list[tuple[str, str]]:
    """Every plan name the policy asks for or stops at, with where it is named: each rule's
    fixed plan (``UPGRADE_PLAN`` for the default rule), ``max_plan``, and each ladder family
    (as its single-node plan)."""
    named: list[tuple[str, str]] = []
    for number, rule in enumerate(policy.rules, start=1):
        if rule.action != "upgrade":
            continue
        where = "UPGRADE_PLAN" if from_settings else f"rule {number} ({rule.name})"
        if rule.plan != NEXT:
            named.append((where if from_settings else f"{where}: plan", rule.plan))
        if rule.max_plan is not None:
            named.append((f"{where}: max_plan", str(rule.max_plan)))
        for family in rule.ladder.families:
            named.append((f"{where}: ladder", f"{family}-1"))
    return named


def unsold_plan_warnings(policy: Policy, catalogue: Catalogue, *, from_settings: bool = False) -> list[str]:
    """One line per plan name the policy uses that CloudAMQP does not sell, naming the
    closest plans it does (``UPGRADE_PLAN 'bunny-2' is not a plan CloudAMQP sells (closest:
    bunny-1, bunny-3)``); none when the catalogue was never read."""
    if not catalogue.known:
        return []
    lines: list[str] = []
    for where, name in plan_names(policy, from_settings=from_settings):
        family = parse_plan(name)
        if where.endswith(": ladder") and family is not None:
            variants = [f"{family.family}-{n}" for n in (1, 3, 5)]
            if any(catalogue.sells(v) for v in variants):
                continue
        elif catalogue.sells(name):
            continue
        line = f"{where} {catalogue.unsold(name)}"
        if line not in lines:
            lines.append(line)
    return lines


@dataclass(frozen=True)
class DecisionState:
    """What the store knows that matters to the decision."""

    duplicate: bool = False
    pause: Pause | None = None  # the pause holding the instance now, if any
    current_plan: str | None = None  # the instance's plan as last read (None: not known)
    increased: float = 0.0  # what the autopilot added to its monthly bill within 30 days


@dataclass(frozen=True)
class Skip:
    reason: SkipReason
    detail: str
    change: PlanChange | None = None  # the plan change refused, priced (a price skip)


@dataclass(frozen=True)
class Upgrade:
    instance_id: str
    plan: str  # a plan name, or "next"
    reason: str
    scope: str
    cooldown_seconds: float
    rule: str = "default"
    ladder: Ladder = field(default_factory=lambda: Ladder.of(DEFAULT_LADDER))
    max_plan: Plan | None = None
    approve: bool = False
    approve_timeout: float = DEFAULT_APPROVE_TIMEOUT
    condition: Condition | None = None  # what the broker check verifies before the call
    max_monthly_price: float | None = None  # the rule's, else MAX_MONTHLY_PRICE
    price_cap_name: str = "MAX_MONTHLY_PRICE"
    over_budget: str = OVER_BUDGET_SKIP
    change: PlanChange | None = None  # priced when decided, where the target was known
    budget_note: str | None = None  # why a person must approve it: over budget
    disk: DiskTarget | None = None  # a disk resize (``resize_disk``) rather than a plan change

    @property
    def kind(self) -> str:
        """The remedy: ``upgrade`` (a plan change) or ``resize_disk``."""
        return RESIZE_DISK if self.disk is not None else ActionKind.UPGRADE.value


Decision = Skip | Upgrade


def target_instance(alarm: Alarm, settings: Settings) -> str | None:
    """The instance an alarm is about: its own ``instance_id``, else the first managed one."""
    if alarm.instance_id is not None:
        return alarm.instance_id
    return settings.instance_ids[0] if settings.instance_ids else None


def upgrade_scope(instance_id: str, alarm_type: str | None) -> str:
    """The cooldown claim's scope: one per instance and alarm type, so that a disk rule and
    a memory rule act independently."""
    return f"{instance_id}/{alarm_type}"


def _format_value(value: float) -> str:
    return f"{value:g}"


def decide(
    alarm: Alarm,
    state: DecisionState,
    settings: Settings,
    now: float,
    policy: Policy | None = None,
    catalogue: Catalogue | None = None,
) -> Decision:
    """Decide what to do about one alarm: first whether it may be acted on at all, then
    which rule fires (first match wins), then — with a ``catalogue`` (an API key is set) —
    whether the plan it asks for is sold, in place and within budget."""
    instance = target_instance(alarm, settings)
    blocked = _not_actionable(alarm, state, settings, instance, now)
    if blocked is not None:
        return blocked
    assert instance is not None
    decision = _apply_rules(alarm, policy or Policy.default(settings), settings, instance)
    if isinstance(decision, Upgrade) and state.pause is not None:
        # Recorded like any other alarm; only the upgrade waits for the pause to end.
        return Skip(SkipReason.PAUSED, state.pause.describe())
    if isinstance(decision, Upgrade) and decision.disk is None and catalogue is not None:
        return _priced(decision, state, settings, catalogue)  # a plan change: priced
    return decision


def upgrade_caps(upgrade: Upgrade, settings: Settings, increased: float) -> Caps:
    """The spending caps one upgrade is held to."""
    return Caps(upgrade.max_monthly_price, upgrade.price_cap_name, settings.max_monthly_increase, increased)


def price_check(
    upgrade: Upgrade,
    current: str | None,
    target: str,
    catalogue: Catalogue | None,
    settings: Settings,
    increased: float,
    *,
    approved_price: float | None = None,
) -> PlanChange | Skip:
    """``current`` → ``target`` priced, or the skip that refuses it (``unknown_plan``,
    ``not_in_place``, ``over_budget``). A person who approved the upgrade at a price shown to
    them (``approved_price``) approved that much: over budget at no more than it stands (a
    plan not sold, or not in place, never does)."""
    verdict = assess_plan_change(catalogue, current, target, upgrade_caps(upgrade, settings, increased))
    if isinstance(verdict, PlanChange):
        return verdict
    shown = verdict.change.to_price
    if (
        verdict.reason is Refusal.OVER_BUDGET
        and approved_price is not None
        and shown is not None
        and shown <= approved_price
    ):
        return verdict.change
    return Skip(SkipReason(verdict.reason.value), verdict.detail, verdict.change)


def _priced(upgrade: Upgrade, state: DecisionState, settings: Settings, catalogue: Catalogue) -> Decision:
    """The decided upgrade with its price, where the plan it would ask for is known now (a
    fixed plan; ``next`` from the plan last read); else as it was, priced after the instance
    is read. Over budget, a rule that asks (``approve``, ``over_budget = "ask"``) asks."""
    target = resolve_plan(upgrade, state.current_plan)
    if isinstance(target, Skip):
        return upgrade  # the read before the call says (the plan last read may be old)
    found = price_check(upgrade, state.current_plan, target, catalogue, settings, state.increased)
    if isinstance(found, PlanChange):
        return replace(upgrade, change=found)
    asks = upgrade.approve or upgrade.over_budget == OVER_BUDGET_ASK
    if found.reason is SkipReason.OVER_BUDGET and asks:
        assert found.change is not None
        return replace(upgrade, change=found.change, approve=True, budget_note=f"over budget: {found.detail}")
    return found


def _not_actionable(
    alarm: Alarm, state: DecisionState, settings: Settings, instance: str | None, now: float
) -> Skip | None:
    if alarm.metadata_resolved:
        return Skip(SkipReason.METADATA_RESOLVED, "metadata.resolved is true: never remediate")
    if alarm.resolved:
        return Skip(SkipReason.RESOLVED, "resolved alarms never trigger remediation")
    if state.duplicate:
        return Skip(SkipReason.DUPLICATE, "an identical alarm was already decided")
    if instance is None:
        return Skip(SkipReason.NO_INSTANCE, "no instance_id and CLOUDAMQP_INSTANCE_ID is unset")
    if instance not in settings.managed:
        return Skip(SkipReason.NOT_MANAGED, f"instance {instance} is not in CLOUDAMQP_INSTANCE_ID")
    try:
        triggered = alarm.triggered_at
    except ValueError:
        return Skip(SkipReason.INVALID_TRIGGERED_AT, "triggered_at is not an ISO 8601 time")
    age = now - (triggered if triggered is not None else alarm.received_at)
    if age > settings.max_alarm_age_seconds:
        return Skip(
            SkipReason.STALE,
            f"alarm is {age:.0f}s old, older than MAX_ALARM_AGE_SECONDS={settings.max_alarm_age_seconds:g}",
        )
    return None


def forecast_of(alarm: Alarm) -> Mapping[str, Any] | None:
    """A forecast alarm's projection (``worker.forecast.evidence``); None for any other alarm."""
    if alarm.body.get("source") != FORECAST:
        return None
    found = alarm.body.get("forecast")
    return found if isinstance(found, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _rule_misses(rule: Rule, alarm: Alarm, instance: str) -> Skip | None:
    """None when ``rule`` matches; otherwise why not (None-like misses are NO_RULE)."""
    if rule.alarm_type != alarm.alarm_type or (rule.instances and instance not in rule.instances):
        return Skip(SkipReason.NO_RULE, f"no rule for alarm_type {alarm.alarm_type!r}")
    forecast = forecast_of(alarm)
    if forecast is not None and not rule.forecast:
        # Only a rule that asked for forecasts acts ahead of its own threshold.
        return Skip(SkipReason.NO_RULE, f"no rule with forecast = true for alarm_type {alarm.alarm_type!r}")
    if not rule.has_threshold:
        return None
    # A forecast is compared by where its trend will be once a plan change started now is done.
    value = alarm.value if forecast is None else _number(forecast.get("projected_value"))
    if value is None:
        return Skip(SkipReason.VALUE_NOT_NUMERIC, f"value {alarm.raw('value')!r} is not a number")
    if rule.above is not None and value <= rule.above:
        return Skip(
            SkipReason.BELOW_THRESHOLD,
            f"{alarm.alarm_type} {_format_value(value)}% is not above {_format_value(rule.above)}%",
        )
    if rule.below is not None and value >= rule.below:
        return Skip(
            SkipReason.BELOW_THRESHOLD,
            f"{alarm.alarm_type} {_format_value(value)}% is not below {_format_value(rule.below)}%",
        )
    return None


def _apply_rules(alarm: Alarm, policy: Policy, settings: Settings, instance: str) -> Decision:
    closest: Skip | None = None
    for rule in policy.rules:
        miss = _rule_misses(rule, alarm, instance)
        if miss is None:
            return _act(rule, alarm, settings, instance)
        if miss.reason is not SkipReason.NO_RULE and closest is None:
            closest = miss  # the most telling reason: a rule for this alarm type did not fire
    if closest is not None:
        return closest
    wanted = "no rule with forecast = true" if forecast_of(alarm) is not None else "no rule"
    return Skip(SkipReason.NO_RULE, f"{wanted} for alarm_type {alarm.alarm_type!r}")


def _act(rule: Rule, alarm: Alarm, settings: Settings, instance: str) -> Decision:
    if rule.action == "none":
        return Skip(SkipReason.NO_ACTION, f"rule {rule.name!r} records the alarm and does nothing")
    if rule.disk is not None:
        return _resize(rule, alarm, settings, instance)
    value = alarm.value
    shown = f" ({_format_value(value)}%)" if value is not None else ""
    reason = f"Automatic upgrade triggered by {alarm.alarm_type} alarm{shown}"
    forecast = forecast_of(alarm)
    if forecast is not None:
        said = forecast.get("explanation")
        reason = f"Automatic upgrade ahead of a {alarm.alarm_type} forecast" + (
            f": {said}" if isinstance(said, str) and said else ""
        )
    cap, cap_name = rule_budget(rule, settings)
    return Upgrade(
        instance_id=instance,
        plan=rule.plan,
        reason=reason,
        scope=upgrade_scope(instance, alarm.alarm_type),
        cooldown_seconds=settings.cooldown_seconds
        if rule.cooldown_seconds is None
        else rule.cooldown_seconds,
        rule=rule.name,
        ladder=rule.ladder,
        max_plan=rule.max_plan,
        approve=rule.approve,
        approve_timeout=rule.approve_timeout,
        # A forecast acts before the nodes show the condition: checking that they show it
        # would always find it cleared. The forecast was made from the nodes' figures.
        condition=rule.condition(settings) if forecast is None else None,
        max_monthly_price=cap,
        price_cap_name=cap_name,
        over_budget=rule.over_budget,
    )


def rule_budget(rule: Rule, settings: Settings) -> tuple[float | None, str]:
    """The most a plan ``rule`` asks for may cost a month, and the name of that cap: the
    rule's own ``max_monthly_price``, else ``MAX_MONTHLY_PRICE`` (None: no cap)."""
    if rule.max_monthly_price is not None:
        return rule.max_monthly_price, f"max_monthly_price of rule {rule.name!r}"
    return settings.max_monthly_price, "MAX_MONTHLY_PRICE"


def needs_current_plan(upgrade: Upgrade) -> bool:
    """``next`` can only be resolved from the instance's current plan."""
    return upgrade.plan == NEXT


def resolve_plan(upgrade: Upgrade, current: str | None) -> str | Skip:
    """The plan to ask for, given the current plan (None when it could not be read)."""
    current_plan = parse_plan(current) if current else None
    if upgrade.plan != NEXT:
        target = parse_plan(upgrade.plan)
        if (
            current_plan is not None
            and target is not None
            and upgrade.ladder.at_or_above(current_plan, target)
        ):
            return Skip(
                SkipReason.ALREADY_AT_OR_ABOVE_TARGET, f"instance is on {current}, target {upgrade.plan}"
            )
        return upgrade.plan
    if current is None:
        return Skip(SkipReason.PLAN_UNKNOWN, "the current plan could not be read, so 'next' is unknown")
    if current_plan is None or upgrade.ladder.position(current_plan) is None:
        return Skip(SkipReason.PLAN_NOT_ON_LADDER, f"current plan {current!r} is not on the ladder")
    step = upgrade.ladder.next_step(current_plan)
    if step is None:
        return Skip(SkipReason.AT_CEILING, f"{current} is the top of the ladder")
    if upgrade.max_plan is not None and upgrade.ladder.above(step, upgrade.max_plan):
        return Skip(SkipReason.AT_CEILING, f"{step} would pass max_plan {upgrade.max_plan}")
    return str(step)


# --- the disk resize (``action = "resize_disk"``) ---------------------------------------------


def _resize(rule: Rule, alarm: Alarm, settings: Settings, instance: str) -> Upgrade:
    """A disk resize: its cooldown never shorter than CloudAMQP's interval between resizes."""
    assert rule.disk is not None
    value = alarm.value
    shown = f" ({_format_value(value)}%)" if value is not None else ""
    cooldown = settings.cooldown_seconds if rule.cooldown_seconds is None else rule.cooldown_seconds
    return Upgrade(
        instance_id=instance,
        plan=f"extra disk {rule.disk.describe()}",
        reason=f"Automatic disk resize triggered by {alarm.alarm_type} alarm{shown}",
        scope=upgrade_scope(instance, alarm.alarm_type),
        cooldown_seconds=max(cooldown, settings.disk_resize_interval_seconds),
        rule=rule.name,
        approve=rule.approve,
        approve_timeout=rule.approve_timeout,
        condition=rule.condition(settings),
        disk=rule.disk,
    )


def resolve_disk(upgrade: Upgrade, current: int) -> int | Skip:
    """The extra disk (GB) to ask for, given the nodes' current one — or a skip."""
    target = upgrade.disk
    assert target is not None
    ceiling = target.max_extra_disk
    if target.extra_disk is not None:
        if current >= target.extra_disk:
            return Skip(
                SkipReason.ALREADY_AT_OR_ABOVE_TARGET,
                f"the extra disk is {current} GB, target {target.extra_disk} GB",
            )
        return target.extra_disk
    if ceiling is not None and current >= ceiling:
        return Skip(SkipReason.AT_CEILING, f"the extra disk is {current} GB, at max_extra_disk {ceiling} GB")
    step = next_size(current)
    if step is None:
        return Skip(SkipReason.AT_CEILING, f"{current} GB is the largest extra disk CloudAMQP sells")
    if ceiling is not None and step > ceiling:
        return Skip(SkipReason.AT_CEILING, f"{step} GB would pass max_extra_disk {ceiling} GB")
    return step


def made_already(upgrade: Upgrade, asked: Asked, plan: str | None, extra_disk: int | None) -> bool:
    """Does the instance, as just read (its plan; a disk resize: its extra disk), show the
    change ``asked`` for — or more — whose answer never came? Then CloudAMQP made it: it is
    this alarm's change, and nothing is asked again."""
    if upgrade.disk is not None:
        return (
            asked.extra_disk_to is not None and extra_disk is not None and extra_disk >= asked.extra_disk_to
        )
    current, target = (parse_plan(p) if p else None for p in (plan, asked.plan))
    if current is None or target is None:
        return plan is not None and plan == asked.plan
    return upgrade.ladder.at_or_above(current, target)


def cooling_down(
    upgrade: Upgrade, claimed_at: float, cooldown_until: float, now: float, interval: float
) -> Skip:
    """The skip of an alarm whose claim (taken at ``claimed_at``) cools down until
    ``cooldown_until``. A disk resize's cooldown is CloudAMQP's interval between resizes unless
    its rule's is longer: then the skip names that limit (``resize_interval``)."""
    left = cooldown_until - now
    if upgrade.disk is not None and upgrade.cooldown_seconds <= interval:
        return Skip(
            SkipReason.RESIZE_INTERVAL,
            f"the last change for its {upgrade.scope.rsplit('/', 1)[-1]} alarms started "
            f"{hours(now - claimed_at)} ago; {interval_limit(interval)}: next resize in {hours(left)}",
        )
    return Skip(SkipReason.COOLING_DOWN, f"upgraded recently; cooldown ends in {left:.0f}s")


def resize_cooldown_warnings(policy: Policy, settings: Settings) -> list[str]:
    """``resize_disk`` rules whose cooldown is shorter than CloudAMQP's interval between two
    resizes: their resizes wait for the interval instead (said at start)."""
    interval = settings.disk_resize_interval_seconds
    warnings = []
    for number, rule in enumerate(policy.rules, start=1):
        if rule.disk is None:
            continue
        own = rule.cooldown_seconds is not None
        cooldown = rule.cooldown_seconds if rule.cooldown_seconds is not None else settings.cooldown_seconds
        if cooldown < interval:
            warnings.append(
                f"rule {number} ({rule.name}): {'cooldown_seconds' if own else 'COOLDOWN_SECONDS'} "
                f"{cooldown:g} is shorter than DISK_RESIZE_INTERVAL_SECONDS={interval:g}; "
                f"{interval_limit(interval)}, so its resizes of an instance are {hours(interval)} apart"
            )
    return warnings
