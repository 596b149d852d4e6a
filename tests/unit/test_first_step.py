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

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.alarm import Alarm, event_key
from shared.catalogue import Catalogue
from shared.claims import ClaimRow, ClaimStatus
from shared.controls import Pause
from shared.incidents import plan_incident
from shared.policy import Policy, Rule
from shared.settings import Settings
from shared.snapshot import Arrival, EventState, Snapshot, Writes
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
    *, dry_run: bool = False, approve: bool = False, fresh: Callable[[], str] | None = None
) -> Context:
    policy = Policy((Rule("memory", "memory", plan="hare-1", above=80, approve=approve),))
    return Context(SETTINGS, policy, dry_run, "w", fresh or ids())


@dataclass
class StoreModel:
    """What the store holds, as ``Unit.load`` reads it and ``Unit.apply`` writes it."""

    events: dict[str, EventState] = field(default_factory=dict)
    event_keys: dict[str, str] = field(default_factory=dict)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> key, status, count, last
    claims: dict[str, ClaimRow] = field(default_factory=dict)
    pauses: list[Pause] = field(default_factory=list)

    def load(self, arrivals: Sequence[Arrival], scopes: set[str]) -> Snapshot:
        snap = Snapshot(scopes=set(scopes), pauses=list(self.pauses))
        for a in arrivals:
            if a.alarm.event_id not in self.events and a.alarm.event_id not in snap.new:
                snap.new.add(a.alarm.event_id)
        for a in arrivals:
            state = self.events.get(a.alarm.event_id)
            if state is not None:
                snap.events[a.alarm.event_id] = replace(state)
        keys = {a.plan.key for a in arrivals}
        snap.open_incidents = {
            i["key"]: iid for iid, i in self.incidents.items() if i["status"] == "open" and i["key"] in keys
        }
        for event_id, state in self.events.items():
            if state.status is not None and is_decided(ActionStatus(state.status), state.reason):
                snap.decided.setdefault(self.event_keys[event_id], set()).add(event_id)
        snap.claims = {s: c for s, c in self.claims.items() if s in scopes}
        snap.reconfiguring = {}
        return snap

    def apply(self, arrivals: Sequence[Arrival], writes: Writes) -> list[bool]:
        for a in arrivals:
            if a.alarm.event_id not in self.events:
                self.events[a.alarm.event_id] = EventState()
                self.event_keys[a.alarm.event_id] = a.alarm.event_key
        for iid, g in writes.grouped.items():
            self.incidents[iid]["count"] += g.count
        for iid in writes.resolved:
            self.incidents[iid]["status"] = "resolved"
        for n in writes.new_incidents.values():
            self.incidents[n.incident_id] = {
                "key": n.key, "status": "resolved" if n.resolved else "open", "count": n.count,
            }  # fmt: skip
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


def run(model: StoreModel, batches: Sequence[Sequence[Alarm]], ctx: Context) -> list[tuple[Any, ...]]:
    """Each batch's first step against the model; what each alarm's step said."""
    out = []
    for batch in batches:
        arrivals = [arrival(a) for a in batch]
        scopes = {s for a in arrivals if (s := ctx.scope_of(a)) is not None}
        steps, writes = plan_batch(model.load(arrivals, scopes), arrivals, NOW, ctx)
        written = model.apply(arrivals, writes)
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
    assert sorted((i["status"], i["count"]) for i in model.incidents.values()) == [
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


EXTRAS: list[dict[str, Any]] = [{}, {"resolved": True}, {"metadata": {"resolved": True}}, {"message": "M"}]
CONTENTS = st.tuples(
    st.sampled_from(["a", "b", "x"]),
    st.sampled_from([50, 85, 90, None, "high"]),
    st.sampled_from(EXTRAS),
)


def _storm(numbers: list[int]) -> st.SearchStrategy[list[Alarm]]:
    """Deliveries of the events ``numbers`` name, in that order: an event delivered again
    carries the same content (an event id names one alarm as received), as a redelivery does."""
    contents = st.fixed_dictionaries({n: CONTENTS for n in sorted(set(numbers))})
    return contents.map(lambda by: [alarm(f"e{n}", by[n][0], by[n][1], **by[n][2]) for n in numbers])


STORMS = st.lists(st.integers(0, 6), min_size=1, max_size=14).flatmap(_storm)


@settings(max_examples=300, deadline=None)
@given(
    storm=STORMS,
    cut=st.integers(1, 14),
    dry_run=st.booleans(),
    approve=st.booleans(),
    paused=st.sampled_from([None, "a", "*"]),
    claim=st.sampled_from([None, "done", "held", "expired", "awaiting"]),
)
def test_a_batch_folds_to_what_its_alarms_do_one_at_a_time(
    storm: list[Alarm], cut: int, dry_run: bool, approve: bool, paused: str | None, claim: str | None
) -> None:
    """Any storm of alarms (repeats of an event included), any pause and claim state: taken as
    batches of any size, or one alarm at a time, every alarm's step says the same and the
    store ends the same."""

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

    batched, alone = model(), model()
    batches = [storm[i : i + cut] for i in range(0, len(storm), cut)]
    said_batched = run(batched, batches, context(dry_run=dry_run, approve=approve))
    said_alone = run(alone, [[a] for a in storm], context(dry_run=dry_run, approve=approve))

    assert said_batched == said_alone
    assert _shape(batched) == _shape(alone)


def _shape(model: StoreModel) -> Any:
    """The store's content, incident ids aside (fresh ids are drawn in a different order)."""
    events = {e: (s.incident_change, s.status, s.reason) for e, s in model.events.items()}
    incidents = sorted((i["key"], i["status"], i["count"]) for i in model.incidents.values())
    claims = {
        s: (c.status, c.owner.split("/")[1] if "/" in c.owner else c.owner) for s, c in model.claims.items()
    }
    return events, incidents, claims


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
