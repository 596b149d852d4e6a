"""Our own ``Alarm`` type and the small helpers around it (ids, timestamps, content key).

``shared.envelope`` builds an ``Alarm`` from what travelled on the broker.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.fields import NO_FIELDS, FieldMap


@dataclass(frozen=True)
class Alarm:
    event_id: str
    received_at: float
    body: Mapping[str, Any] = field(repr=False)
    event_key: str
    attempts: int = 0
    replayed: bool = False
    # The configured name of the instance the alarm names, where it names it otherwise (its
    # console UUID, its API id, its name: ``worker.instances``).
    configured_instance: str | None = None
    busy_since: float | None = None  # when CloudAMQP first answered "busy" to its plan change
    # Where each of our fields is read from (a policy file's ``[fields]`` table).
    fields: FieldMap = NO_FIELDS

    def raw(self, name: str) -> Any:
        """Our field ``name`` as the payload has it (through the field map), unchecked."""
        return self.fields.read(self.body, name)

    @property
    def alarm_type(self) -> str | None:
        value = self.raw("alarm_type")
        return value if isinstance(value, str) and value else None

    @property
    def instance_id(self) -> str | None:
        """The instance the alarm is about: CloudAMQP sends its UUID as text, its API id may
        come as a JSON number."""
        if self.configured_instance is not None:
            return self.configured_instance
        value = self.raw("instance_id")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) and value else None

    @property
    def message(self) -> str | None:
        value = self.raw("message")
        return value if isinstance(value, str) and value.strip() else None

    @property
    def value(self) -> float | None:
        """The numeric ``value``, or None when it is absent or not a number."""
        value = self.raw("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    @property
    def resolved(self) -> bool:
        return self.raw("resolved") is True

    @property
    def metadata_resolved(self) -> bool:
        metadata = self.body.get("metadata")
        return isinstance(metadata, Mapping) and metadata.get("resolved") is True

    @property
    def triggered_at(self) -> float | None:
        """Epoch seconds of ``triggered_at``; None when absent; raises ValueError when bad."""
        raw = self.raw("triggered_at")
        if raw is None:
            return None
        return parse_timestamp(raw)


def parse_timestamp(raw: Any) -> float:
    """ISO 8601 (``Z`` allowed) or epoch seconds → epoch seconds; ValueError otherwise."""
    if isinstance(raw, bool):
        raise ValueError("not a timestamp")
    if isinstance(raw, int | float):
        return float(raw)
    if not isinstance(raw, str):
        raise ValueError("not a timestamp")
    parsed = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# Ids need to be unique, not secret: a generator of their own (no library seeding the shared
# one can make two processes repeat each other), seeded from the OS at start and again in a
# forked child. Half the cost of ``secrets.token_hex``.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_id() -> str:
    """A fresh random id: 32 hex digits, 128 random bits (as unique as a uuid4)."""
    return f"{_IDS.getrandbits(128):032x}"


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_key(body: Mapping[str, Any]) -> str:
    """Deterministic key of an alarm's content: an identical re-send has the same key."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
