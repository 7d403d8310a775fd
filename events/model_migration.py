"""A VM's migration events: a VirtualMachineInstanceMigration from request to outcome.

Part of the event union (`events/model.py`; use them as `m.MigrationScheduled` through it), folded
by `events/fold_migration.py`.
"""

from __future__ import annotations

from events.event import Event


class MigrationRequested(Event, frozen=True):
    """A migration asked for (KubeVirt's VMIM created, phase Pending); queued until a slot frees."""

    migration: str
    target_node: str = ""  # empty: the scheduler picks
    reason: str = ""  # why, when not a user's request (a node drain)


class MigrationScheduled(Event, frozen=True):
    migration: str
    source: str
    target: str
    live: bool = True
    policy: str = ""  # the MigrationPolicy whose settings it runs by ("": the cluster's)


class MigrationTargetPreparing(Event, frozen=True):
    """The target's launcher runs and its node prepares to receive the VM."""

    migration: str
    target: str


class MigrationTargetReady(Event, frozen=True):
    migration: str
    target: str


class MigrationStarted(Event, frozen=True):
    migration: str


class MigrationProgress(Event, frozen=True):
    migration: str
    percent: float
    data_processed: int = 0
    data_remaining: int = 0
    data_total: int = 0
    rate_bps: float = 0.0
    post_copy: bool = False  # switched to post-copy: the guest runs on the target already


class MigrationCancelRequested(Event, frozen=True):
    migration: str


class MigrationSucceeded(Event, frozen=True):
    migration: str
    source: str
    target: str
    duration_ms: float = 0.0
    downtime_ms: float = 0.0
    mode: str = "live"


class MigrationFailed(Event, frozen=True):
    migration: str
    reason: str
    aborted: bool = False
