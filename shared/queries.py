"""Reads as values: a ``Query`` (SQL, its arguments, what its rows mean), run alone or with
others in one round trip (``fetch_together``, ``Together``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import orjson

from shared.db import PLACEHOLDER, Row, Tx

R = TypeVar("R")


@dataclass(frozen=True)
class Query(Generic[R]):
    """A read: a SELECT with its arguments (numbered from ``$1``), and what its rows mean.
    Run alone (``run``) or with others in one round trip (``fetch_together``)."""

    sql: str
    args: Sequence[Any]
    parse: Callable[[list[Row]], R]

    async def run(self, tx: Tx) -> R:
        return self.parse(await tx.fetch(self.sql, *self.args))


async def fetch_together(tx: Tx, queries: Sequence[Query[Any]]) -> list[Any]:
    """Each query's result, in order. PostgreSQL runs them as one statement, one round trip:
    each query a subquery whose rows come back as one JSON array (``json_agg``; its row
    locks, ``FOR UPDATE``, taken as they would be alone, in query order), its placeholders
    renumbered after the queries before it. A batch's first step reads this way (``Unit.load``):
    each round trip is a wait on a busy event loop, and the chain of them was most of the
    batch's time (docs/benchmarks.md). SQLite runs them one after another: its statements
    make no round trip. Every column a query returns must have a name of its own. Combined,
    a value comes back as JSON has it: a DOUBLE PRECISION with no fraction as an ``int``,
    Infinity as the text ``"Infinity"`` (parsers take numbers through ``float()``), exact to
    the last digit (``extra_float_digits``, set with the pool). One statement has one
    snapshot: where a locking read waits for another transaction's row lock (a claim being
    finished or renewed, which take no advisory lock), the rows it locks are read as that
    transaction left them and the other reads as the statement began; the batch's own
    advisory locks are taken before it, in a statement of their own."""
    if tx.dialect != "postgresql" or len(queries) < 2:
        return [await query.run(tx) for query in queries]
    parts: list[str] = []
    args: list[Any] = []
    for n, query in enumerate(queries):
        used = {int(m) for m in PLACEHOLDER.findall(query.sql)}
        if used != set(range(1, len(query.args) + 1)):
            raise ValueError(f"query {n} uses placeholders {sorted(used)} for {len(query.args)} arguments")
        sql = PLACEHOLDER.sub(partial(_renumbered, len(args)), query.sql)
        parts.append(f"(SELECT COALESCE(json_agg(q{n}), '[]') FROM ({sql}) AS q{n}) AS r{n}")
        args.extend(query.args)
    [row] = await tx.fetch("SELECT " + ", ".join(parts), *args)
    return [query.parse(orjson.loads(row[f"r{n}"])) for n, query in enumerate(queries)]


@dataclass
class Slot(Generic[R]):
    """Where a query made with others (``Together``) leaves its result."""

    query: Query[R]
    value: R = field(init=False)


class Together:
    """Reads made together, in the order added (``fetch_together``): ``add`` each, ``run``
    once, then read each slot's ``value``."""

    def __init__(self, tx: Tx):
        self._tx = tx
        self._slots: list[Slot[Any]] = []

    def add(self, query: Query[R]) -> Slot[R]:
        slot = Slot(query)
        self._slots.append(slot)
        return slot

    async def run(self) -> None:
        values = await fetch_together(self._tx, [slot.query for slot in self._slots])
        for slot, value in zip(self._slots, values, strict=True):
            slot.value = value


def _renumbered(offset: int, match: re.Match[str]) -> str:
    return f"${int(match.group(1)) + offset}"
