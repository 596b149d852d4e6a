"""The names CloudAMQP gives one instance — its API id (an integer), its console UUID
(``providerid``) and its ``name`` — tied to the one ``CLOUDAMQP_INSTANCE_ID`` uses.

Everything of ours (claims, incidents, pauses, rules, the console) keys an instance by the
spelling the operator configured; an alarm that names it otherwise is read as that spelling,
and a call to the API goes to its integer id. Built from ``GET /api/instances`` (pure:
``Directory.from_listing``); without a listing, ids are compared as given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Directory:
    """Aliases of the configured instances (any of their names → the configured one) and
    their API ids (configured name → integer id, as text)."""

    aliases: Mapping[str, str] = field(default_factory=dict)
    api_ids: Mapping[str, str] = field(default_factory=dict)
    unresolved: tuple[str, ...] = ()  # configured names the listing did not know
    plans: Mapping[str, str] = field(default_factory=dict)  # configured name -> plan listed

    @classmethod
    def from_listing(cls, configured: Iterable[str], listing: Iterable[Mapping[str, Any]]) -> Directory:
        """Tie each configured name to the listed instance whose id, ``providerid`` or
        ``name`` it is (the id first: a name may look like another instance's id)."""
        by_name: dict[str, Mapping[str, Any]] = {}
        for key in ("name", "providerid", "id"):  # later keys win: id, then UUID, then name
            for item in listing:
                value = item.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                    by_name[str(value)] = item
        aliases: dict[str, str] = {}
        api_ids: dict[str, str] = {}
        plans: dict[str, str] = {}
        unresolved = []
        for ref in configured:
            found = by_name.get(ref)
            api_id = found.get("id") if found is not None else None
            if found is None or isinstance(api_id, bool) or not isinstance(api_id, int):
                unresolved.append(ref)
                continue
            item = found
            api_ids[ref] = str(api_id)
            if isinstance(item.get("plan"), str) and item["plan"]:
                plans[ref] = item["plan"]
            for key in ("id", "providerid", "name"):
                value = item.get(key)
                if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                    aliases.setdefault(str(value), ref)
            aliases[ref] = ref
        return cls(aliases, api_ids, tuple(unresolved), plans)

    def configured(self, ref: str) -> str:
        """The configured name of the instance ``ref`` names (``ref`` itself when unknown)."""
        return self.aliases.get(ref, ref)

    def knows(self, ref: str) -> bool:
        return ref in self.aliases

    def api_id(self, ref: str) -> str:
        """The id to call the API with: the integer id where known, else ``ref`` as given."""
        return self.api_ids.get(ref, ref)
