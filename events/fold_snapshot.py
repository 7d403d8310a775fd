"""The VM fold's snapshot and restore handlers: VirtualMachineSnapshot and VirtualMachineRestore.

Pure functions of the state and one event, put into the fold's table by `events/state.py`.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from events import model as m
from events.envelope import Stamped
from events.vmstate import FAILED, SUCCEEDED, Restore, Snapshot, VMState, spec_says


def snapshot_requested(s: VMState, e: m.SnapshotRequested, env: Stamped) -> VMState:
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


def snapshot_succeeded(s: VMState, e: m.SnapshotSucceeded, env: Stamped) -> VMState:
    return _snapshot(s, e.snapshot, phase=SUCCEEDED, ready_at=env.time, size_bytes=e.size_bytes)


def snapshot_failed(s: VMState, e: m.SnapshotFailed, env: Stamped) -> VMState:
    return _snapshot(s, e.snapshot, phase=FAILED, reason=e.reason, failed_at=env.time)


def snapshot_deleted(s: VMState, e: m.SnapshotDeleted, env: Stamped) -> VMState:
    return replace(s, snapshots={k: v for k, v in s.snapshots.items() if k != e.snapshot})


def restore_requested(s: VMState, e: m.RestoreRequested, env: Stamped) -> VMState:
    restore = Restore(name=e.restore, snapshot=e.snapshot, node=e.node, created=env.time)
    return replace(s, restore=restore)


def restore_succeeded(s: VMState, e: m.RestoreSucceeded, env: Stamped) -> VMState:
    snap = s.snapshots.get(e.snapshot)
    if s.restore is None or s.restore.name != e.restore or snap is None:
        return s
    done = replace(s.restore, complete=True, done_at=env.time)
    # The VM's definition is the snapshot's again (its volumes were copied back on the node),
    # with the run strategy it has now: a restore does not start it.
    spec = spec_says(snap.spec, s.run_strategy)
    return replace(s, restore=done, spec=spec, restart_required=False)


def restore_failed(s: VMState, e: m.RestoreFailed, env: Stamped) -> VMState:
    if s.restore is None or s.restore.name != e.restore:
        return s
    return replace(s, restore=replace(s.restore, reason=e.reason, done_at=env.time))
