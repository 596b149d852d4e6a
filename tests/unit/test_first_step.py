"""The first step's pure fold (``worker.first_step.plan_batch``), with no database: a table of
cases, and the property that a batch folds to what its alarms do one at a time.

``StoreModel`` holds what the store would hold and answers ``load`` / ``apply`` as ``Unit``
does (``shared/store/``); the integration tests show the real store on both engines doing the
same (``tests/integration/test_set_based.py``, ``test_incidents.py``, ``test_group_commit.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.alarm import Alarm, event_key
from shared.catalogue import Catalogue
from shared.claims import ClaimRow, ClaimStatus
from shared.controls import Pause
from shared.flapping import OFF, FlapMark, FlapRule
from shared.incidents import plan_incident
from shared.notifications import Notice
from shared.policy import Policy, Rule
from shared.settings import Settings
from shared.snapshot import Arrival, EventState, KeyRow, KeyState, Snapshot, Writes, settle_due
from shared.store import HANDED_OFF, RECONFIGURING, ActionStatus, is_decided
from tests.cloudamqp_stand_in import PRICES, SHARED_PLANS
from worker.first_step import (
    AlreadyDone,
    AwaitingApproval,
    Claimed,
    Context,
    Deferred,
    DryRun,
    Skipped,
    Step,
    plan_batch,
)

NOW = 1_000_000.0
SETTINGS = Settings(instance_ids=("a", "b", "c"), cooldown_seconds=600.0, claim_lease_seconds=60.0)
CATALOGUE = Catalogue.from_listing(
    [{"name": n, "price": p, "backend": "rabbitmq", "shared": n in SHARED_PLANS} for n, p in PRICES.items()],
    NOW,
)


def alarm(event_id: str, instance: str = "a", value: Any = 85, **more: Any) -> Alarm:
    body = {"alarm_type": "memory", "value": value, "instance_id": instance, **more}
    return Alarm(event_id, NOW, body, event_key(body))


def arrival(a: Alarm) -> Arrival:
    return Arrival(a, a.instance_id, plan_incident(a, a.instance_id))


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{next(counter):032x}"


def context(
    *,
    dry_run: bool = False,
    approve: bool = False,
    fresh: Callable[[], str] | None = None,
    flap: FlapRule = OFF,
) -> Context:
    policy = Policy((Rule("memory", "memory", plan="hare-1", above=80, approve=approve),))
    settings = replace(
        SETTINGS, flap_openings=flap.openings, flap_window_seconds=flap.window, flap_quiet_seconds=flap.quiet
    )
    return Context(settings, policy, dry_run, "w", fresh or ids())


@dataclass
class Incident:
    """An incident row, as far as the fold reads and writes it."""

    key: str
    status: str
    count: int
    instance_id: str | None = None
    alarm_type: str | None = None
    resolved_at: float | None = None
    mark: FlapMark | None = None
    resolves_at: float | None = None

    def state(self, incident_id: str) -> KeyState:
        return KeyState(
            incident_id, self.status == "open", self.instance_id, self.alarm_type, self.mark, self.resolves_at
        )


@dataclass
class StoreModel:
    """What the store holds, as ``Unit.load`` reads it and ``Unit.apply`` writes it (and
    ``Unit.settle_quiet`` sweeps it)."""

    events: dict[str, EventState] = field(default_factory=dict)
    event_keys: dict[str, str] = field(default_factory=dict)
    incidents: dict[str, Incident] = field(default_factory=dict)
    keys: dict[str, KeyRow] = field(default_factory=dict)  # incident_keys
    claims: dict[str, ClaimRow] = field(default_factory=dict)
    pauses: list[Pause] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # the outbox
    fresh: Callable[[], str] = field(default_factory=ids)  # the fresh ids of the runs against it

    def load(self, arrivals: Sequence[Arrival], scopes: set[str], flap: FlapRule = OFF) -> Snapshot:
        snap = Snapshot(scopes=set(scopes), pauses=list(self.pauses), flap=flap)
        for a in arrivals:
            if a.alarm.event_id not in self.events and a.alarm.event_id not in snap.new:
                snap.new.add(a.alarm.event_id)
        for a in arrivals:
            state = self.events.get(a.alarm.event_id)
            if state is not None:
                snap.events[a.alarm.event_id] = replace(state)
        snap.keys = self.key_states({a.plan.key for a in arrivals if a.plan.key is not None}, flap)
        for event_id, state in self.events.items():
            if state.status is not None and is_decided(ActionStatus(state.status), state.reason):
                snap.decided.setdefault(self.event_keys[event_id], set()).add(event_id)
        snap.claims = {s: c for s, c in self.claims.items() if s in scopes}
        snap.reconfiguring = {}
        return snap

    def key_states(self, keys: set[str], flap: FlapRule) -> dict[str, KeyState]:
        states = {
            i.key: i.state(iid) for iid, i in self.incidents.items() if i.status == "open" and i.key in keys
        }
        for key in keys & set(self.keys) if flap.on else set():
            row = self.keys[key]
            state = states.get(key) or self.incidents[row.incident_id].state(row.incident_id)
            state.transitions = list(row.transitions)
            states[key] = state
        return states

    def apply(self, arrivals: Sequence[Arrival], writes: Writes, now: float = NOW) -> list[bool]:
        for a in arrivals:
            if a.alarm.event_id not in self.events:
                self.events[a.alarm.event_id] = EventState()
                self.event_keys[a.alarm.event_id] = a.alarm.event_key
        self.apply_incidents(writes, now)
        for event_id, incident_id, change in writes.event_incidents:
            self.events[event_id].incident_id, self.events[event_id].incident_change = incident_id, change
        written = []
        for record in writes.actions:
            state = self.events[record.alarm.event_id]
            settled = state.status is not None and (
                state.status in {s.value for s in HANDED_OFF}
                or state.status in {"succeeded", "skipped", "dry_run", "failed", "unconfirmed"}
                or state.reason == RECONFIGURING
            )
            if settled and not record.alarm.replayed:
                written.append(False)
                continue
            state.status, state.reason, state.plan = record.status.value, record.reason, record.plan
            written.append(True)
        for request in writes.approvals:
            self.events[request.action_id].approval_deadline = request.deadline
        self.claims.update(writes.claims)
        return written

    def apply_incidents(self, writes: Writes, now: float) -> None:
        for iid, g in writes.grouped.items():
            self.incidents[iid].count += g.count
        for iid in writes.resolved:
            self.incidents[iid].status, self.incidents[iid].resolved_at = "resolved", now
        for n in writes.new_incidents.values():
            status = "resolved" if n.resolved else "open"
            self.incidents[n.incident_id] = Incident(
                n.key, status, n.count, n.instance_id, n.alarm_type, now if n.resolved else None
            )
        for iid, flap in writes.flaps.items():
            incident = self.incidents[iid]
            incident.status, incident.resolved_at = flap.status.value, flap.resolved_at
            incident.mark, incident.resolves_at = flap.mark, flap.resolves_at
        self.keys.update(writes.keys)
        self.notices += [n for n in writes.notices if n.id not in {m.id for m in self.notices}]
        opened = [i.key for i in self.incidents.values() if i.status == "open"]
        assert len(opened) == len(set(opened)), "two open incidents of one key"

    def sweep(self, now: float) -> list[str]:
        """``Unit.settle_quiet``: the flapping incidents whose quiet period passed, resolved."""
        due = {i.key for i in self.incidents.values() if i.resolves_at is not None and i.resolves_at <= now}
        writes = Writes()
        settled = settle_due(Snapshot(keys=self.key_states(due, OFF)), writes, now)
        self.apply_incidents(writes, now)
        return settled


def run(
    model: StoreModel, batches: Sequence[Sequence[Alarm]], ctx: Context, now: float = NOW
) -> list[tuple[Any, ...]]:
    """Each batch's first step against the model; what each alarm's step said."""
    out = []
    flap = FlapRule.of(ctx.settings)
    for batch in batches:
        arrivals = [arrival(a) for a in batch]
        scopes = {s for a in arrivals if (s := ctx.scope_of(a)) is not None}
        steps, writes = plan_batch(model.load(arrivals, scopes, flap), arrivals, now, ctx)
        written = model.apply(arrivals, writes, now)
        out += [_said(step, step.action is None or written[step.action]) for step in steps]
    return out


def _said(step: Step, written: bool) -> tuple[Any, ...]:
    detail = step.skip.reason.value if isinstance(step, Skipped) else None
    return (step.alarm.event_id, type(step).__name__, detail, step.change, written)


# --- a table of cases ----------------------------------------------------------------------------


def test_one_batch_opens_groups_resolves_and_opens_again_in_delivery_order() -> None:
    batch = [
        alarm("e1", message="A"),
        alarm("e2", message="A", value=90),
        alarm("e3", message="A", resolved=True),
        alarm("e4", message="A", value=95),
    ]
    model = StoreModel()
    said = run(model, [batch], context())
    assert [s[3] for s in said] == ["opened", "grouped", "resolved", "opened"]
    assert sorted((i.status, i.count) for i in model.incidents.values()) == [
        ("open", 1),
        ("resolved", 2),
    ]


def test_the_first_upgrade_takes_the_claim_and_the_rest_of_the_batch_meets_it() -> None:
    said = run(StoreModel(), [[alarm("e1"), alarm("e2", value=90), alarm("e3", "b")]], context())
    assert [s[1:3] for s in said] == [("Claimed", None), ("Deferred", None), ("Claimed", None)]


def test_a_dry_run_cools_down_the_rest_of_the_batch_and_identical_content_is_a_duplicate() -> None:
    said = run(StoreModel(), [[alarm("e1"), alarm("e2"), alarm("e3", value=91)]], context(dry_run=True))
    assert [s[1:3] for s in said] == [("DryRun", None), ("Skipped", "duplicate"), ("Skipped", "cooling_down")]


def test_a_redelivery_in_the_same_batch_finds_what_the_first_delivery_decided() -> None:
    said = run(StoreModel(), [[alarm("e1", value=50), alarm("e1", value=50)]], context())
    assert [s[1:4] for s in said] == [("Skipped", "below_threshold", "opened"), ("AlreadyDone", None, None)]


def test_a_paused_instance_is_skipped_and_others_are_not() -> None:
    model = StoreModel(pauses=[Pause("a", NOW + 60, "ops", None, NOW)])
    said = run(model, [[alarm("e1"), alarm("e2", "b")]], context())
    assert [s[1:3] for s in said] == [("Skipped", "paused"), ("Claimed", None)]


def test_an_approval_holds_the_claim_for_the_rest_of_the_batch() -> None:
    model = StoreModel()
    said = run(model, [[alarm("e1"), alarm("e2", value=90)]], context(approve=True))
    assert [s[1:3] for s in said] == [("AwaitingApproval", None), ("Skipped", "awaiting_approval")]
    assert model.claims["a/memory"].status is ClaimStatus.AWAITING


def test_a_held_lease_that_ran_out_is_noticed_once_then_taken_over() -> None:
    stale = ClaimRow("a/memory", ClaimStatus.HELD, "gone", NOW - 1, NOW + 600, "a", NOW - 61)
    model = StoreModel(claims={"a/memory": stale})
    said = run(model, [[alarm("e1")]], context())
    assert said[0][1] == "Deferred" and model.claims["a/memory"].status is ClaimStatus.STALE


# --- batched equals one at a time ------------------------------------------------------------


ALARMS = st.builds(
    lambda n, instance, value, extra: alarm(f"e{n}", instance, value, **extra),
    st.integers(0, 6),
    st.sampled_from(["a", "b", "x"]),
    st.sampled_from([50, 85, 90, None, "high"]),
    st.sampled_from([{}, {"resolved": True}, {"metadata": {"resolved": True}}, {"message": "M"}]),
)


# One key firing and clearing, by turns: what makes it flap. An event's content follows from
# its id (odd: a clear), as a redelivery's does.
FIRES_AND_CLEARS = st.builds(
    lambda first, length: [
        alarm(f"f{n}", "a", 85, message="M", **({"resolved": True} if n % 2 else {}))
        for n in range(first, first + length)
    ],
    st.integers(0, 20),
    st.integers(1, 8),
)


def _redelivered(alarms: list[Alarm]) -> list[Alarm]:
    """Every repeat of an event carries its first delivery's content, as a redelivery does."""
    first: dict[str, Alarm] = {}
    return [first.setdefault(a.event_id, a) for a in alarms]


STORMS = st.lists(st.one_of(ALARMS.map(lambda a: [a]), FIRES_AND_CLEARS), min_size=1, max_size=8).map(
    lambda parts: _redelivered([a for part in parts for a in part][:14])
)
# Time between alarms: none (one round), within the quiet period, past it, past the window.
GAPS = st.sampled_from([0.0, 0.0, 0.0, 1.0, 6.0, 11.0, 150.0])
QUIET, WINDOW = 10.0, 100.0


@settings(max_examples=400, deadline=None)
@given(
    storm=STORMS,
    gaps=st.lists(GAPS, min_size=14, max_size=14),
    cut=st.integers(1, 14),
    dry_run=st.booleans(),
    approve=st.booleans(),
    paused=st.sampled_from([None, "a", "*"]),
    claim=st.sampled_from([None, "done", "held", "expired", "awaiting"]),
    openings=st.sampled_from([0, 1, 1, 2, 3]),
    sweep=st.booleans(),
)
def test_a_batch_folds_to_what_its_alarms_do_one_at_a_time(
    storm: list[Alarm],
    gaps: list[float],
    cut: int,
    dry_run: bool,
    approve: bool,
    paused: str | None,
    claim: str | None,
    openings: int,
    sweep: bool,
) -> None:
    """Any storm of alarms (repeats of an event included) spread over time, any pause and
    claim state, flap detection off or at any threshold, with or without the quiet-resolve
    sweep between rounds: taken as batches of any size (a batch has one time), or one alarm
    at a time, every alarm's step says the same and the store ends the same."""

    def model() -> StoreModel:
        m = StoreModel()
        if paused is not None:
            m.pauses.append(Pause(paused, NOW + 60, "ops", None, NOW))
        if claim is not None:
            status = {"done": ClaimStatus.DONE, "held": ClaimStatus.HELD, "expired": ClaimStatus.HELD,
                      "awaiting": ClaimStatus.AWAITING}[claim]  # fmt: skip
            lease = NOW - 1 if claim == "expired" else NOW + 30
            scope = ("dry-run:" if dry_run else "") + "a/memory"
            m.claims[scope] = ClaimRow(scope, status, "other", lease, NOW + 300, "a", NOW - 100)
        return m

    rounds: dict[float, list[Alarm]] = {}
    now = NOW
    for a, gap in zip(storm, gaps, strict=False):
        now += gap
        rounds.setdefault(now, []).append(a)
    flap = FlapRule(openings, WINDOW, QUIET)
    ctx_batched, ctx_alone = (context(dry_run=dry_run, approve=approve, flap=flap) for _ in range(2))
    batched, alone = model(), model()
    said_batched, said_alone = [], []
    for at, alarms in rounds.items():
        if sweep:
            settled = len(batched.sweep(at))
            assert settled == len(alone.sweep(at))
            if settled:
                event("the sweep resolved a quiet one")
        batches = [alarms[i : i + cut] for i in range(0, len(alarms), cut)]
        said_batched += run(batched, batches, ctx_batched, at)
        said_alone += run(alone, [[a] for a in alarms], ctx_alone, at)

    assert said_batched == said_alone
    assert _shape(batched) == _shape(alone)
    for change in {s[3] for s in said_alone} - {None}:
        event(f"change: {change}")  # hypothesis --hypothesis-show-statistics: the moves it met


def _shape(model: StoreModel) -> Any:
    """The store's content, incident ids aside (fresh ids are drawn in a different order)."""
    events = {e: (s.incident_change, s.status, s.reason) for e, s in model.events.items()}

    def incident(i: Incident) -> tuple[Any, ...]:
        return (i.key, i.status, i.count, i.resolved_at, i.mark, i.resolves_at)

    incidents = sorted(incident(i) for i in model.incidents.values())
    keys = {k: (incident(model.incidents[row.incident_id]), row.transitions) for k, row in model.keys.items()}
    claims = {
        s: (c.status, c.owner.split("/")[1] if "/" in c.owner else c.owner) for s, c in model.claims.items()
    }
    notices = [n.type.value for n in model.notices]
    return events, incidents, keys, claims, notices


def test_the_steps_are_plain_values() -> None:
    [step] = plan_batch(
        StoreModel().load([arrival(alarm("e1"))], {"a/memory"}), [arrival(alarm("e1"))], NOW, context()
    )[0]
    assert isinstance(step, Claimed) and step.scope == "a/memory" and step.owner.startswith("w/e1/")
    assert not isinstance(step, AlreadyDone | AwaitingApproval | Deferred | DryRun)


def _event_of(owner: str) -> str:
    """The event a claim's owner token names (``worker/event/nonce``), or the owner."""
    return owner.split("/")[1] if "/" in owner else owner


# --- prices: the catalogue and the caps are inputs of the fold -----------------------------------


def priced_step(over_budget: str) -> tuple[Step, Writes]:
    """One memory alarm of instance ``a`` (on bunny-1 as last read) under a rule climbing
    ``next`` with a $150 cap, decided with CloudAMQP's recorded catalogue."""
    policy = Policy(
        (Rule("memory", "memory", plan="next", above=80, max_monthly_price=150, over_budget=over_budget),)
    )
    ctx = Context(SETTINGS, policy, False, "w", ids(), CATALOGUE)
    arrivals = [arrival(alarm("e1"))]
    snapshot = StoreModel().load(arrivals, {"a/memory"})
    snapshot.plans = {"a": "bunny-1"}
    [step], writes = plan_batch(snapshot, arrivals, NOW, ctx)
    return step, writes


def test_an_upgrade_over_budget_is_a_skip_that_records_the_change_and_its_prices() -> None:
    step, writes = priced_step("skip")
    assert isinstance(step, Skipped) and step.skip.reason.value == "over_budget"
    [record] = writes.actions
    assert (record.status, record.plan, record.from_plan, record.from_price, record.to_price) == (
        ActionStatus.SKIPPED, "hare-1", "bunny-1", 99, 199,
    )  # fmt: skip
    assert record.detail == "hare-1 costs $199 a month, over max_monthly_price of rule 'memory' $150"
    assert writes.claims == {} and writes.approvals == []  # nothing claimed, nothing called


def test_an_upgrade_over_budget_that_asks_is_an_approval_request_showing_the_price() -> None:
    step, writes = priced_step("ask")
    assert isinstance(step, AwaitingApproval)
    [request] = writes.approvals
    assert request.plan == "hare-1"  # the change shown is the change approved
    [record] = writes.actions
    assert (record.status, record.to_price, record.from_price) == (ActionStatus.AWAITING_APPROVAL, 199, 99)
    assert record.detail is not None
    assert "bunny-1 → hare-1, $99 → $199 a month, +$100" in record.detail and "over budget" in record.detail
    [audit] = writes.audits
    assert audit.detail["price"]["text"] == "bunny-1 → hare-1, $99 → $199 a month, +$100"
