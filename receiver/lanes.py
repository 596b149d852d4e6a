"""Which queue an alarm goes to: upgrade-worthy alarms go ahead of a storm of repeats.

A fleet in trouble sends reminders: the same alarms again and again, for instances already
being upgraded, cooling down or below any threshold. Queued behind tens of thousands of them
in one FIFO queue, the one alarm that needs an upgrade would wait for the whole backlog to be
decided. RabbitMQ 3.10's quorum queues have no priorities, so the receiver sorts at the door:

- ``cloudamqp.alarms.fast`` (the fast lane): an alarm that the policy would act on by its
  content alone (managed instance, a rule that upgrades, not stale, not resolved) and that is
  the first such one of its instance and alarm type this receiver has seen within the rule's
  cooldown;
- ``cloudamqp.alarms`` (the work queue, as before): everything else — repeats, reminders,
  alarms no rule acts on.

Both are decided the same way by the worker, which consumes both and takes the fast lane
first; only the order changes. The choice is a pure function of the alarm, what this
receiver saw, and the time: nothing is read from the store (the worker still decides with
it), and a wrong guess costs order, not correctness — a repeat in the fast lane is decided as
a repeat, an upgrade-worthy alarm in the work queue is decided when its turn comes, as it was
before the fast lane existed.
"""

from __future__ import annotations

from typing import Any

from shared import topology
from shared.alarm import Alarm
from shared.policy import DecisionState, Policy, Upgrade, decide
from shared.settings import Settings

# How many (instance, alarm type) pairs are remembered; the oldest are forgotten first.
REMEMBERED = 100_000
_NO_STATE = DecisionState()


class Lanes:
    def __init__(self, settings: Settings, policy: Policy | None, remembered: int = REMEMBERED):
        self.settings = settings
        self.policy = policy or Policy.default(settings)
        self.remembered = remembered
        self._until: dict[tuple[str, Any], float] = {}  # fast-lane pair -> end of its cooldown

    def queue_for(self, body: dict[str, Any], now: float) -> str:
        """The queue ``body`` (an alarm received at ``now``) is published to."""
        if not self.settings.fast_lane:
            return topology.WORK_QUEUE
        alarm = Alarm("", now, body, "", fields=self.policy.fields)
        decision = decide(alarm, _NO_STATE, self.settings, now, self.policy)
        if not isinstance(decision, Upgrade):
            return topology.WORK_QUEUE
        pair = (decision.instance_id, alarm.alarm_type)
        if self._until.get(pair, 0.0) > now:
            return topology.WORK_QUEUE
        self._until.pop(pair, None)  # re-inserted last: the dict stays oldest-first
        self._until[pair] = now + decision.cooldown_seconds
        if len(self._until) > self.remembered:
            del self._until[next(iter(self._until))]
        return topology.FAST_QUEUE
