"""The VM fold's handlers for migrations, snapshots and restores, and volume hotplug.

Part of `events/state.py`'s pure fold, split out so each file reads in one sitting: the
lifecycle there, the features here. `state.py` imports this module at its end, which registers
these handlers in its dispatch table.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.state import (
    FAILED,
    MIGRATING,
    PAUSED,
    PENDING,
    PREPARING_TARGET,
    RUNNING,
    SCHEDULING,
    SUCCEEDED,
    TARGET_READY,
    Hotplug,
    Migration,
    Restore,
    Snapshot,
    VMState,
    _migration,
    _on,
    _running_status,
    _spec_says,
)


@_on(m.MigrationProgress)
def _migration_progress(s: VMState, e: m.MigrationProgress, env: Stamped) -> VMState:
    return replace(s, migration=_migration(s, e.migration, percent=e.percent))


@_on(m.MigrationRequested)
def _migration_requested(s: VMState, e: m.MigrationRequested, env: Stamped) -> VMState:
    mig = Migration(e.migration, s.node, e.target_node, phase=PENDING, requested=env.time)
    return replace(s, migration=mig, migrations=s.migrations + 1)


@_on(m.MigrationScheduled)
def _migration_scheduled(s: VMState, e: m.MigrationScheduled, env: Stamped) -> VMState:
    if s.migration is not None and s.migration.id == e.migration:  # the queued request moves on
        mig = replace(s.migration, source=e.source, target=e.target, live=e.live,
                      phase=SCHEDULING, scheduled=env.time)  # fmt: skip
        return replace(s, migration=mig, status=MIGRATING)
    mig = Migration(e.migration, e.source, e.target, live=e.live, scheduled=env.time)
    status = MIGRATING if s.running else s.status  # a stopped VM's definition moves quietly
    return replace(s, migration=mig, migrations=s.migrations + 1, status=status)


@_on(m.MigrationCancelRequested)
def _migration_cancel_requested(s: VMState, e: m.MigrationCancelRequested, env: Stamped) -> VMState:
    return replace(s, migration=_migration(s, e.migration, cancel=True))


@_on(m.MigrationTargetPreparing)
def _migration_target_preparing(s: VMState, e: m.MigrationTargetPreparing, env: Stamped) -> VMState:
    return replace(s, migration=_migration(s, e.migration, phase=PREPARING_TARGET))


@_on(m.MigrationTargetReady)
def _migration_target_ready(s: VMState, e: m.MigrationTargetReady, env: Stamped) -> VMState:
    return replace(s, migration=_migration(s, e.migration, phase=TARGET_READY))


@_on(m.MigrationStarted)
def _migration_started(s: VMState, e: m.MigrationStarted, env: Stamped) -> VMState:
    return replace(s, migration=_migration(s, e.migration, phase=RUNNING))


@_on(m.MigrationSucceeded)
def _migration_succeeded(s: VMState, e: m.MigrationSucceeded, env: Stamped) -> VMState:
    if s.migration is None or s.migration.id != e.migration:
        return s
    mig = _migration(s, e.migration, phase=SUCCEEDED, percent=100.0, target_pod="")
    if not s.running:  # a stopped VM: its next start goes to the target
        return replace(s, migration=mig, home=e.target, last_node=e.target)
    return replace(s, migration=mig, node=e.target, status=PAUSED if s.paused else RUNNING,
                   home=e.target if s.home else "", last_node=e.target)  # fmt: skip


@_on(m.MigrationFailed)
def _migration_failed(s: VMState, e: m.MigrationFailed, env: Stamped) -> VMState:
    after = replace(s, migration=_migration(s, e.migration, phase=FAILED, reason=e.reason))
    status = _running_status(after) if s.status == MIGRATING else s.status
    return replace(s, migration=after.migration, status=status)


@_on(m.SnapshotRequested)
def _snapshot_requested(s: VMState, e: m.SnapshotRequested, env: Stamped) -> VMState:
    snap = Snapshot(
        name=e.snapshot, requested=env.version, online=e.online, node=e.node, spec=e.spec,
        volumes=e.volumes, skipped=e.skipped, created=env.time,
    )  # fmt: skip
    return replace(s, snapshots={**s.snapshots, e.snapshot: snap})


def _snapshot(s: VMState, name: str, **changes: Any) -> VMState:
    snap = s.snapshots.get(name)
    if snap is None:
        return s
    return replace(s, snapshots={**s.snapshots, name: replace(snap, **changes)})


@_on(m.SnapshotSucceeded)
def _snapshot_succeeded(s: VMState, e: m.SnapshotSucceeded, env: Stamped) -> VMState:
    return _snapshot(s, e.snapshot, phase=SUCCEEDED, ready_at=env.time, size_bytes=e.size_bytes)


@_on(m.SnapshotFailed)
def _snapshot_failed(s: VMState, e: m.SnapshotFailed, env: Stamped) -> VMState:
    return _snapshot(s, e.snapshot, phase=FAILED, reason=e.reason)


@_on(m.SnapshotDeleted)
def _snapshot_deleted(s: VMState, e: m.SnapshotDeleted, env: Stamped) -> VMState:
    return replace(s, snapshots={k: v for k, v in s.snapshots.items() if k != e.snapshot})


@_on(m.RestoreRequested)
def _restore_requested(s: VMState, e: m.RestoreRequested, env: Stamped) -> VMState:
    restore = Restore(name=e.restore, snapshot=e.snapshot, node=e.node, created=env.time)
    return replace(s, restore=restore)


@_on(m.RestoreSucceeded)
def _restore_succeeded(s: VMState, e: m.RestoreSucceeded, env: Stamped) -> VMState:
    snap = s.snapshots.get(e.snapshot)
    if s.restore is None or s.restore.name != e.restore or snap is None:
        return s
    done = replace(s.restore, complete=True, done_at=env.time)
    # The VM's definition is the snapshot's again (its volumes were copied back on the node),
    # with the run strategy it has now: a restore does not start it.
    spec = _spec_says(snap.spec, s.run_strategy)
    return replace(s, restore=done, spec=spec, restart_required=False)


@_on(m.RestoreFailed)
def _restore_failed(s: VMState, e: m.RestoreFailed, env: Stamped) -> VMState:
    if s.restore is None or s.restore.name != e.restore:
        return s
    return replace(s, restore=replace(s.restore, reason=e.reason, done_at=env.time))


@_on(m.VolumeAttachRequested)
def _volume_attach_requested(s: VMState, e: m.VolumeAttachRequested, env: Stamped) -> VMState:
    name = str(e.volume.get("name", ""))
    plug = Hotplug(e.volume, e.disk, requested=env.version)
    return replace(s, volumes={**s.volumes, name: "Pending"}, hotplug={**s.hotplug, name: plug})


@_on(m.VolumeAttached)
def _volume_attached(s: VMState, e: m.VolumeAttached, env: Stamped) -> VMState:
    plug = s.hotplug.get(e.volume)
    hotplug = s.hotplug if plug is None else {**s.hotplug, e.volume: replace(plug, reason="")}
    return replace(s, volumes={**s.volumes, e.volume: "Ready"}, hotplug=hotplug)


@_on(m.VolumeAttachFailed)
def _volume_attach_failed(s: VMState, e: m.VolumeAttachFailed, env: Stamped) -> VMState:
    plug = s.hotplug.get(e.volume)
    hotplug = s.hotplug if plug is None else {**s.hotplug, e.volume: replace(plug, reason=e.reason)}
    return replace(s, volumes={**s.volumes, e.volume: FAILED}, hotplug=hotplug)


@_on(m.VolumeDetachRequested)
def _volume_detach_requested(s: VMState, e: m.VolumeDetachRequested, env: Stamped) -> VMState:
    plug = s.hotplug.get(e.volume)
    hotplug = (
        s.hotplug if plug is None
        else {**s.hotplug, e.volume: replace(plug, requested=env.version)}
    )  # fmt: skip
    return replace(s, volumes={**s.volumes, e.volume: "Detaching"}, hotplug=hotplug)


@_on(m.VolumeDetached)
def _volume_detached(s: VMState, e: m.VolumeDetached, env: Stamped) -> VMState:
    return replace(
        s,
        volumes={k: v for k, v in s.volumes.items() if k != e.volume},
        hotplug={k: v for k, v in s.hotplug.items() if k != e.volume},
    )
