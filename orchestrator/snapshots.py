"""VirtualMachineSnapshot and VirtualMachineRestore: the decisions, and the node work they need.

A snapshot is the VM's spec as the log knows it plus copies of its persistent volumes, made by
the node that holds them (where the VM runs, or last ran); ephemeral volumes are rebuilt at each
start and left out, as in KubeVirt (`events/snapshots.py` holds the rule). A restore copies the
volumes back over a stopped VM and then gives it the snapshot's spec. Pure, like `decide`.
"""

from __future__ import annotations

from typing import Any

from events import commands as c
from events import model as m
from events import work as w
from events.errors import ValidationError
from events.snapshots import snapshot_plan
from events.state import MIGRATING, RUNNING, SUCCEEDED, TERMINATING, Snapshot, VMState

_GROUP = "snapshot.kubevirt.io"


def _reject(reason: str, *, field: str = "") -> ValidationError:
    return ValidationError(reason, field=field)


def _busy(s: VMState) -> None:
    if s.status == TERMINATING:
        raise _reject("VM is being deleted")
    if s.snapshotting:
        raise _reject(f'VirtualMachine "{s.name}" snapshot "{s.snapshotting}" is in progress')
    if s.restoring and s.restore is not None:
        raise _reject(f'VirtualMachine "{s.name}" restore "{s.restore.name}" is in progress')


def decide_snapshot(s: VMState, cmd: c.SnapshotVM) -> list[m.Event]:
    if cmd.snapshot in s.snapshots:
        raise _reject(f'virtualmachinesnapshots.{_GROUP} "{cmd.snapshot}" already exists',
                      field="snapshot")  # fmt: skip
    _busy(s)
    if s.status == MIGRATING:
        raise _reject("VM is migrating; snapshot it once the migration is over")
    if s.running and s.phase != RUNNING:
        raise _reject(f"VMI is {s.phase}: snapshot it once it is Running, or stopped")
    plan = snapshot_plan(s.spec)
    if plan.refused:
        volume, reason = next(iter(plan.refused.items()))
        raise _reject(f"cannot snapshot VM {s.name!r}: {reason}",
                      field=f"spec.template.spec.volumes[{volume}]")  # fmt: skip
    node = s.node if s.phase == RUNNING else s.last_node
    if plan.copied and not node:
        raise _reject(
            f"cannot snapshot VM {s.name!r}: it has never run, so no node holds its volumes "
            f"{', '.join(plan.copied)} yet; start it once first"
        )
    requested = m.SnapshotRequested(
        snapshot=cmd.snapshot, online=s.phase == RUNNING, node=node if plan.copied else "",
        spec=s.spec, volumes=plan.copied, skipped=plan.skipped,
    )  # fmt: skip
    if not plan.copied:  # the spec is the whole snapshot: nothing for a node to copy
        return [requested, m.SnapshotSucceeded(snapshot=cmd.snapshot)]
    return [requested]


def _existing(s: VMState, snapshot: str) -> Snapshot:
    snap = s.snapshots.get(snapshot)
    if snap is None:
        raise _reject(f'virtualmachinesnapshots.{_GROUP} "{snapshot}" not found', field="snapshot")
    return snap


def decide_restore(s: VMState, cmd: c.RestoreVM) -> list[m.Event]:
    snap = _existing(s, cmd.snapshot)
    if snap.phase != SUCCEEDED:
        raise _reject(f'VirtualMachineSnapshot "{cmd.snapshot}" is not ready to use '
                      f"(phase {snap.phase})", field="snapshot")  # fmt: skip
    _busy(s)
    if s.running:
        raise _reject(f'VirtualMachine "{s.name}" is not stopped: stop it before restoring')
    name = cmd.restore or f"{cmd.snapshot}-restore-{s.version + 1}"[:63].rstrip("-")
    if s.restore is not None and s.restore.name == name:
        raise _reject(f'virtualmachinerestores.{_GROUP} "{name}" already exists', field="restore")
    requested = m.RestoreRequested(snapshot=cmd.snapshot, restore=name, node=snap.node)
    if not snap.volumes:
        return [requested, m.RestoreSucceeded(snapshot=cmd.snapshot, restore=name)]
    return [requested]


def decide_delete_snapshot(s: VMState, cmd: c.DeleteSnapshot) -> list[m.Event]:
    snap = _existing(s, cmd.snapshot)
    if snap.in_progress:
        raise _reject(f'VirtualMachineSnapshot "{cmd.snapshot}" is in progress', field="snapshot")
    if s.restoring and s.restore is not None and s.restore.snapshot == cmd.snapshot:
        raise _reject(f'VirtualMachineSnapshot "{cmd.snapshot}" is being restored',
                      field="snapshot")  # fmt: skip
    return [m.SnapshotDeleted(snapshot=cmd.snapshot, node=snap.node, requested=snap.requested)]


def _item(kind: type[w.SnapshotWork], s: VMState, snap: Snapshot, **extra: Any) -> w.SnapshotWork:
    return kind(
        namespace=s.namespace, name=s.name, node=snap.node, vmi_uid=s.vmi_uid,
        version=snap.requested, snapshot=snap.name, spec=snap.spec, volumes=snap.volumes,
        **extra,
    )  # fmt: skip


def snapshot_work(s: VMState) -> list[w.Work]:
    """Level-triggered: a snapshot in progress or a restore under way has its item on the bus
    (deduplicated by id) until the node reports the outcome."""
    out: list[w.Work] = []
    for snap in s.snapshots.values():
        if snap.in_progress and snap.node:
            out.append(_item(w.TakeSnapshot, s, snap))
    if s.restoring and s.restore is not None:
        source = s.snapshots.get(s.restore.snapshot)
        if source is not None and source.node:
            out.append(_item(w.RestoreSnapshot, s, source, restore=s.restore.name))
    return out


def removal_work(s: VMState, e: m.SnapshotDeleted) -> w.Work | None:
    """A deleted snapshot's copies go from its node (edge-triggered; a worker also sweeps copies
    of snapshots the log no longer has when it starts)."""
    if not e.node:
        return None
    return w.RemoveSnapshot(
        namespace=s.namespace, name=s.name, node=e.node, vmi_uid=s.vmi_uid,
        version=e.requested, snapshot=e.snapshot,
    )  # fmt: skip
