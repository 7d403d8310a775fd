"""What the snapshot verbs do over the bus: `get vmsnapshots|vmrestores`, `delete vmsnapshot`,
and sending `snapshot` / `restore`.

Snapshots belong to their VM's history (a snapshot is events of the VM it was taken of), so a
listing is read off the VMs the read model holds, shaped like KubeVirt's
`snapshot.kubevirt.io/v1beta1` VirtualMachineSnapshot and VirtualMachineRestore objects. The typer
verbs are in `cli_snapshot.py`; `verbs.get` and `cli_verbs.delete` route the snapshot kinds here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from nats.aio.client import Client

from bus.client import query, send, session
from events import commands as c
from events import render
from events.errors import VirtbusError
from events.protocol import Query
from events.state import FAILED, SUCCEEDED, Restore, Snapshot, VMState
from virtctl.kinds import RESTORE, SNAPSHOT
from virtctl.listing import Item, Listing

SNAPSHOT_API = "snapshot.kubevirt.io/v1beta1"
SNAPSHOT_KINDS = ("vmsnapshot", "vmsnapshots", "virtualmachinesnapshot", "virtualmachinesnapshots",
                  "snapshot", "snapshots")  # fmt: skip
RESTORE_KINDS = ("vmrestore", "vmrestores", "virtualmachinerestore", "virtualmachinerestores",
                 "restore", "restores")  # fmt: skip


def _source(s: VMState) -> dict[str, str]:
    return {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": s.name}


def _condition(ctype: str, status: bool, reason: str, at: datetime | None) -> dict[str, Any]:
    # snapshot.kubevirt.io's Condition, in its field order; lastProbeTime is never set there
    return {"type": ctype, "status": str(status), "lastProbeTime": None,
            "lastTransitionTime": render.timestamp(at), "reason": reason}  # fmt: skip


def snapshot_conditions(snap: Snapshot) -> list[dict[str, Any]]:
    """KubeVirt's snapshot controller's conditions, derived from the phase (and its reasons).

    A condition's time is when it last changed: Ready stays "Not ready" from the request on
    unless the snapshot succeeds."""
    if snap.phase == SUCCEEDED:
        return [_condition("Progressing", False, "Operation complete", snap.ready_at),
                _condition("Ready", True, "Ready", snap.ready_at)]  # fmt: skip
    if snap.phase == FAILED:
        return [_condition("Progressing", False, "In error state", snap.failed_at),
                _condition("Ready", False, "Not ready", snap.created),
                _condition("Failure", True, snap.reason, snap.failed_at)]  # fmt: skip
    return [_condition("Progressing", True, "Source locked and operation in progress",
                       snap.created),
            _condition("Ready", False, "Not ready", snap.created)]  # fmt: skip


def restore_conditions(r: Restore) -> list[dict[str, Any]]:
    """KubeVirt's restore controller's conditions: copying the volumes back is its "Creating new
    PVCs"; a failed restore is over (Failure), as virtbus does not retry it."""
    if r.complete:
        return [_condition("Progressing", False, "Operation complete", r.done_at),
                _condition("Ready", True, "Operation complete", r.done_at)]  # fmt: skip
    if r.reason:
        return [_condition("Progressing", False, "Operation failed", r.done_at),
                _condition("Ready", False, "Operation failed", r.done_at),
                _condition("Failure", True, r.reason, r.done_at)]  # fmt: skip
    return [_condition("Progressing", True, "Creating new PVCs", r.created),
            _condition("Ready", False, "Waiting for new PVCs", r.created)]  # fmt: skip


def snapshot_object(s: VMState, snap: Snapshot) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": snap.phase,
        "readyToUse": snap.phase == SUCCEEDED,
        "conditions": snapshot_conditions(snap),
        "creationTime": render.timestamp(snap.ready_at),
        "indications": ["Online", "NoGuestAgent"] if snap.online else [],
        "snapshotVolumes": {
            "includedVolumes": snap.volumes,
            "excludedVolumes": sorted(snap.skipped),
        },
        "virtbus": {"node": snap.node, "sizeBytes": snap.size_bytes},
    }
    if snap.reason:
        status["error"] = {"message": snap.reason}
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VirtualMachineSnapshot",
        "metadata": {"name": snap.name, "namespace": s.namespace,
                     "creationTimestamp": render.timestamp(snap.created)},
        "spec": {"source": _source(s)},
        "status": status,
    }  # fmt: skip


def restore_object(s: VMState) -> dict[str, Any]:
    r = s.restore
    assert r is not None
    status: dict[str, Any] = {"complete": r.complete, "restoreTime": render.timestamp(r.done_at),
                              "conditions": restore_conditions(r)}  # fmt: skip
    if r.reason:
        status["error"] = {"message": r.reason}
    return {
        "apiVersion": SNAPSHOT_API,
        "kind": "VirtualMachineRestore",
        "metadata": {"name": r.name, "namespace": s.namespace,
                     "creationTimestamp": render.timestamp(r.created)},
        "spec": {"target": _source(s), "virtualMachineSnapshotName": r.snapshot},
        "status": status,
    }  # fmt: skip


SNAPSHOT_HEADER = ["NAME", "SOURCEKIND", "SOURCENAME", "PHASE", "READYTOUSE", "CREATIONTIME",
                   "ERROR"]  # fmt: skip
RESTORE_HEADER = ["NAME", "TARGETKIND", "TARGETNAME", "COMPLETE", "RESTORETIME", "ERROR"]


async def listing(
    nc: Client, *, restores: bool, name: str | None, namespace: str | None
) -> Listing:
    vms = (await query(nc, Query(what="vms", namespace=namespace))).vms
    items: list[Item] = []
    for s in sorted(vms, key=lambda v: (v.namespace, v.name)):
        if restores and s.restore is not None and name in (None, s.restore.name):
            r = s.restore
            items.append(Item(s.namespace, r.name, {}, restore_object(s), [
                r.name, "VirtualMachine", s.name, str(r.complete).lower(),
                render.timestamp(r.done_at) or "", r.reason,
            ]))  # fmt: skip
        for snap in [] if restores else s.snapshots.values():
            if name in (None, snap.name):
                items.append(Item(s.namespace, snap.name, {}, snapshot_object(s, snap), [
                    snap.name, "VirtualMachine", s.name, snap.phase,
                    str(snap.phase == SUCCEEDED).lower(), render.timestamp(snap.ready_at) or "",
                    snap.reason,
                ]))  # fmt: skip
    if restores:
        return Listing(RESTORE, RESTORE_HEADER, items)
    return Listing(SNAPSHOT, SNAPSHOT_HEADER, items)


async def delete_snapshot_on(nc: Client, *, snapshot: str, namespace: str, actor: str) -> None:
    vms = (await query(nc, Query(what="vms", namespace=namespace))).vms
    owners = [s for s in vms if snapshot in s.snapshots]
    if not owners:
        raise VirtbusError(f'virtualmachinesnapshots.snapshot.kubevirt.io "{snapshot}" not '
                           f'found in namespace "{namespace}"')  # fmt: skip
    if len(owners) > 1:
        names = ", ".join(s.name for s in owners)
        raise VirtbusError(f'snapshot "{snapshot}" exists for several VMs ({names}); '
                           "give the VM with --vm")  # fmt: skip
    cmd = c.DeleteSnapshot(name=owners[0].name, namespace=namespace, snapshot=snapshot,
                           actor=actor)  # fmt: skip
    await send(nc, cmd)


async def send_and_say(url: str, cmd: c.Command, done: str) -> int:
    async with session(url) as nc:
        await send(nc, cmd)
    typer.echo(done)
    return 0
