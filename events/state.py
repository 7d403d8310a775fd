"""The VM state fold: `apply(state, envelope) -> state`, pure, no I/O, and its one handler table.

The orchestrator decides on it, the CLI prints it, the audit replay and the tests check it: one
function, so the same events always mean the same VM. The handlers live by concept
(`events/fold_lifecycle.py`, `fold_migration.py`, `fold_snapshot.py`, `fold_hotplug.py`), the
state's types in `events/vmstate.py`; `HANDLERS` below says which handler takes which event. This
module is the fold's public face: import the state's types from here too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from msgspec.structs import force_setattr, replace

from events import fold_guest as guest
from events import fold_hotplug as hotplug
from events import fold_lifecycle as lifecycle
from events import fold_migration as migration
from events import fold_network as network
from events import fold_snapshot as snapshot
from events import model as m
from events.envelope import Stamped
from events.folding import total
from events.users import NODE_WRITES
from events.vmstate import (
    CRASH_LOOP,
    DELETED,
    FAILED,
    IN_PROGRESS,
    MIGRATING,
    PAUSED,
    PENDING,
    PREPARING_TARGET,
    RUN_STRATEGIES,
    RUNNING,
    SCHEDULED,
    SCHEDULING,
    STARTING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TARGET_READY,
    TERMINATING,
    UNSCHEDULABLE,
    Hotplug,
    Migration,
    Restore,
    Snapshot,
    VMState,
    conditions,
    migration_active,
)

__all__ = [
    "CRASH_LOOP", "DELETED", "FAILED", "HANDLERS", "IN_PROGRESS", "MIGRATING", "PAUSED", "PENDING",
    "PREPARING_TARGET", "RUNNING", "RUN_STRATEGIES", "SCHEDULED", "SCHEDULING", "STARTING",
    "STOPPED", "STOPPING", "SUCCEEDED", "TARGET_READY", "TERMINATING", "UNSCHEDULABLE", "Hotplug",
    "Migration", "Restore", "Snapshot", "VMState", "apply", "conditions", "fold",
    "migration_active",
]  # fmt: skip

Handler = Callable[[VMState, Any, Stamped], VMState]

# Which handler takes which event; an event not named here only moves the version on.
HANDLERS: Final[Mapping[type[m.Event], Handler]] = {
    # definition
    m.VMCreated: lifecycle.vm_created,
    m.VMSpecChanged: lifecycle.vm_spec_changed,
    m.VMDeleteRequested: lifecycle.vm_delete_requested,
    m.VMDeleted: lifecycle.vm_deleted,
    m.VMRenamed: lifecycle.vm_renamed,
    m.VMUndeleted: lifecycle.vm_undeleted,
    # lifecycle decisions
    m.VMStartRequested: lifecycle.vm_start_requested,
    m.VMStopRequested: lifecycle.vm_stop_requested,
    m.VMRestartRequested: lifecycle.vm_restart_requested,
    m.VMPauseRequested: lifecycle.vm_pause_requested,
    m.VMUnpauseRequested: lifecycle.vm_pause_requested,
    m.VMResetRequested: lifecycle.vm_reset_requested,
    m.MemoryDumpRequested: guest.memory_dump_requested,
    m.MemoryDumpCompleted: guest.memory_dump_ended,
    m.MemoryDumpFailed: guest.memory_dump_ended,
    m.MemoryDumpRemoved: guest.memory_dump_removed,
    m.VMScheduled: lifecycle.vm_scheduled,
    m.VMUnschedulable: lifecycle.vm_unschedulable,
    m.VMRunning: lifecycle.vm_running,
    m.VMStopped: lifecycle.vm_stopped,
    m.VMStartFailed: lifecycle.vm_start_failed,
    m.VMFailed: lifecycle.vm_failed,
    m.VMBackoff: lifecycle.vm_backoff,
    m.CommandRejected: lifecycle.command_rejected,
    # what the node observes
    m.LauncherCreated: lifecycle.launcher_created,
    m.LauncherFailed: lifecycle.launcher_failed,
    m.LauncherDeleted: lifecycle.launcher_deleted,
    m.DomainStarted: lifecycle.domain_started,
    m.DomainPaused: lifecycle.domain_paused,
    m.DomainResumed: lifecycle.domain_resumed,
    m.DomainStopped: lifecycle.domain_stopped,
    m.DomainRebooted: lifecycle.domain_rebooted,
    m.GuestAgentChanged: lifecycle.guest_agent_changed,
    m.VMSoftRebootRequested: lifecycle.vm_soft_reboot_requested,
    m.SoftRebootSent: lifecycle.soft_reboot_sent,
    # the instance's address
    m.IPAllocated: network.ip_allocated,
    m.IPReleased: network.ip_released,
    # migrations
    m.MigrationRequested: migration.migration_requested,
    m.MigrationScheduled: migration.migration_scheduled,
    m.MigrationTargetPreparing: migration.migration_target_preparing,
    m.MigrationTargetReady: migration.migration_target_ready,
    m.MigrationStarted: migration.migration_started,
    m.MigrationProgress: migration.migration_progress,
    m.MigrationCancelRequested: migration.migration_cancel_requested,
    m.MigrationSucceeded: migration.migration_succeeded,
    m.MigrationFailed: migration.migration_failed,
    # snapshots and restores
    m.SnapshotRequested: snapshot.snapshot_requested,
    m.SnapshotSucceeded: snapshot.snapshot_succeeded,
    m.SnapshotFailed: snapshot.snapshot_failed,
    m.SnapshotDeleted: snapshot.snapshot_deleted,
    m.RestoreRequested: snapshot.restore_requested,
    m.RestoreSucceeded: snapshot.restore_succeeded,
    m.RestoreFailed: snapshot.restore_failed,
    # volume hotplug
    m.VolumeAttachRequested: hotplug.volume_attach_requested,
    m.VolumeAttached: hotplug.volume_attached,
    m.VolumeAttachFailed: hotplug.volume_attach_failed,
    m.VolumeDetachRequested: hotplug.volume_detach_requested,
    m.VolumeDetached: hotplug.volume_detached,
    m.HotVCPUChangeRequested: hotplug.hot_vcpu_change_requested,
    m.HotVCPUChanged: hotplug.hot_vcpu_changed,
    m.HotMemoryChangeRequested: hotplug.hot_memory_change_requested,
    m.HotMemoryChanged: hotplug.hot_memory_changed,
    m.GuestMemoryPlugged: hotplug.guest_memory_plugged,
    m.HotChangeFailed: hotplug.hot_change_failed,
    m.VMRestartRequired: hotplug.vm_restart_required,
    m.InstancetypeRevisionCaptured: lifecycle.instancetype_revision_captured,
}

_REVIVE: Final = (m.VMCreated, m.VMUndeleted)


@total
def apply(s: VMState, env: Stamped) -> VMState:
    """Return the state after `env`; unknown or irrelevant events leave it as it was."""
    if env.actor.startswith("node/") and type(env.data) in NODE_WRITES:
        _placed_on(s, env.actor.removeprefix("node/"))
    handler = HANDLERS.get(type(env.data))
    if handler is None or (s.deleted and not isinstance(env.data, _REVIVE)):
        # A deleted VM's life is over: late observations do not touch it.
        return replace(s, version=env.version, updated=env.time)
    new = handler(s, env.data, env)
    if new is s:
        return replace(s, version=env.version, updated=env.time)
    # `new` is a copy made just now and seen by no one: stamping it saves a second copy per event.
    force_setattr(new, "version", env.version)
    force_setattr(new, "updated", env.time)
    return new


def _placed_on(s: VMState, node: str) -> None:
    """Raise (the event is then skipped, and said: `total`) unless the log placed the VM on
    `node`: where it runs or ran last, its home, either end of its migration. A node's word is
    truth about its own guests only."""
    mig = s.migration
    placed = {s.node, s.last_node, s.home, *((mig.source, mig.target) if mig else ())} - {""}
    if node not in placed:
        where = ", ".join(sorted(placed)) or "no node"
        raise ValueError(f"node {node} observed a VM the log places on {where}: not folded")


def fold(envelopes: Iterable[Stamped], state: VMState | None = None) -> VMState:
    """The state after `envelopes`, in order, from `state` (a VM never seen: the empty state)."""
    s = state or VMState()
    for env in envelopes:
        s = apply(s, env)
    return s
