"""A dedicated instance's extra disk, as pure functions: the sizes CloudAMQP sells, the next
one up, which plans have none to resize, and how long CloudAMQP wants between two resizes.

CloudAMQP resizes a dedicated instance's disk through ``PUT /api/instances/{id}/disk`` with
``{"extra_disk_size": GB, "allow_downtime": bool}``, asynchronously like a plan change (the
nodes are ``configured`` again when it is done), and without downtime only once every 6 h on
AWS (4 h on Google Cloud). Each node's ``additional_disk_size`` (``GET …/nodes``) is the extra
disk it has now. The decision of what to ask for is ``shared.policy.resolve_disk``; whether a
resize may be asked for now is ``resize_wait`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Extra disk CloudAMQP sells, in GB (0: none beyond the plan's own disk).
EXTRA_DISK_SIZES: tuple[int, ...] = (0, 25, 50, 100, 250, 500, 1000, 2000)
# Plans on shared servers: no disk of their own to resize.
SHARED_PLANS = frozenset({"lemur", "tiger"})
# The ``extra_disk`` of a rule that grows the disk one size at a time.
NEXT_SIZE = "next"
HOUR = 3600.0
# Where a disk history mark comes from: a resize the autopilot made, one it saw happen without
# it, or the size first read (not a change).
AUTOPILOT, SEEN, READ = "autopilot", "seen", "read"


@dataclass(frozen=True)
class DiskTarget:
    """What a ``resize_disk`` rule asks for: a fixed extra disk (GB) or the next size up
    (``extra_disk`` None), never past ``max_extra_disk``; with downtime only where the rule
    allows it (and a person approves)."""

    extra_disk: int | None = None
    max_extra_disk: int | None = None
    allow_downtime: bool = False

    def describe(self) -> str:
        """``next size up`` or ``50 GB``: what the rule asks for, before the nodes are read."""
        return "the next size up" if self.extra_disk is None else f"{self.extra_disk} GB"


def next_size(current: int) -> int | None:
    """The smallest size CloudAMQP sells above ``current`` GB; None past the largest."""
    return next((size for size in EXTRA_DISK_SIZES if size > current), None)


def is_shared(plan: str | None) -> bool:
    """Is ``plan`` one of CloudAMQP's shared plans (no disk of its own)?"""
    return plan is not None and plan.strip().lower() in SHARED_PLANS


def current_extra_disk(sizes: Sequence[int]) -> int | None:
    """The instance's extra disk from its nodes' ``additional_disk_size``: the largest (nodes
    agree once configured; the largest is what a resize must grow past). None without any."""
    return max(sizes) if sizes else None


def gb(size: int | None) -> str:
    return "?" if size is None else f"{size} GB"


def hours(seconds: float) -> str:
    """``6 h``, ``1.5 h``, ``45 min``: a limit or a wait, as an operator reads it."""
    if seconds >= HOUR:
        return f"{seconds / HOUR:.1f}".removesuffix(".0") + " h"
    return f"{max(seconds, 0.0) / 60:.0f} min"


def interval_limit(interval: float) -> str:
    """The limit a skip names: ``CloudAMQP resizes a disk once every 6 h (…=21600)``."""
    every = hours(interval)
    return f"CloudAMQP resizes a disk once every {every} (DISK_RESIZE_INTERVAL_SECONDS={interval:g})"


@dataclass(frozen=True)
class DiskKnown:
    """What the store knows of an instance's extra disk: the size last read or set, and when
    it last changed (a resize the autopilot made, or one it saw happen)."""

    extra_disk: int
    resized_at: float | None


def resize_wait(known: DiskKnown | None, current: int, now: float, interval: float) -> str | None:
    """Why no resize may be asked for now, or None. CloudAMQP allows one every ``interval``
    seconds (``DISK_RESIZE_INTERVAL_SECONDS``); the last one counts whether the autopilot made
    it or saw it: a size that differs from the one last known was changed by someone else, at a
    time CloudAMQP does not say — at the latest now, so the interval counts from now."""
    limit = interval_limit(interval)
    if known is not None and current != known.extra_disk:
        return (
            f"the extra disk changed from {gb(known.extra_disk)} to {gb(current)} outside the autopilot "
            f"(seen now); {limit}: next resize in {hours(interval)}"
        )
    if known is not None and known.resized_at is not None and now - known.resized_at < interval:
        ago, left = now - known.resized_at, known.resized_at + interval - now
        return f"the last resize was {hours(ago)} ago; {limit}: next resize in {hours(left)}"
    return None
