"""What the volume verbs do over the bus: virtbus's PVCs, shaped like `kubectl get pvc`.

Volumes are read straight from the log (`virt.volume.>`), folded with the same fold the
orchestrator decides on; a create waits until the owning node reports the data ready (or failed),
like `kubectl wait --for=jsonpath='{.status.phase}'=Bound`. The typer verbs (`volume
create|get|move|delete`) are in `cli_volume.py`; `get pvc` comes through `verbs.get`, and
`upload.py` waits on a volume with `until_settled`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from nats.aio.client import Client

from bus.client import send, session
from bus.store import EventStore
from events import commands as c
from events import render
from events.envelope import Recorded
from events.errors import VirtbusError
from events.names import Ref, aggregate_key, check_name
from events.volumes import BOUND, FAILED, VolumeState, apply_volume, clone_of, dv_phase
from virtctl.kinds import DV, PVC
from virtctl.listing import Item, Listing, Output, show

SELECTED_NODE = "volume.kubernetes.io/selected-node"  # where Kubernetes records a local PV's node


class VolumeFailedError(VirtbusError):
    """The node could not provide the volume's data."""


async def volumes(nc: Client, *, namespace: str | None) -> list[VolumeState]:
    found: dict[str, VolumeState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        found[key] = apply_volume(found.get(key) or VolumeState(), rec.envelope)

    subject = f"virt.volume.{namespace}.>" if namespace else "virt.volume.>"
    await EventStore(nc).replay(on, subjects=[subject], verify=False)
    return sorted((v for v in found.values() if v.exists), key=lambda v: (v.namespace, v.name))


async def volume(nc: Client, name: str, namespace: str) -> VolumeState:
    s = VolumeState()
    for r in await EventStore(nc).read(Ref("volume", namespace, name)):
        s = apply_volume(s, r.envelope)
    return s


async def until_settled(nc: Client, ref: Ref, *, timeout_s: float) -> VolumeState:
    """The volume once it is Bound or Failed (polling its short history), or raise on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        s = await volume(nc, ref.name, ref.namespace)
        if s.phase in (BOUND, FAILED) or not s.exists or not s.node:  # "": WaitForFirstConsumer
            return s
        if asyncio.get_running_loop().time() > deadline:
            raise VirtbusError(f'persistentvolumeclaims "{ref.name}" is still {s.phase} after '
                               f"{timeout_s:.0f}s (node {s.node})")  # fmt: skip
        await asyncio.sleep(0.1)


def pvc_object(v: VolumeState) -> dict[str, Any]:
    size = render.quantity(v.size_bytes)
    modes = list(v.access_modes) or ["ReadWriteOnce"]
    status: dict[str, Any] = {"phase": v.phase}
    if v.phase == BOUND:  # Kubernetes fills these in once the claim is bound
        status["accessModes"] = modes
        status["capacity"] = {"storage": size}
    if v.reason:
        status["message"] = v.reason
    annotations = {SELECTED_NODE: v.node} if v.node else {}
    if v.consumer:
        annotations["virtbus.io/first-consumer"] = v.consumer
    if v.moving_to:
        annotations["virtbus.io/moving-to"] = v.moving_to
    if v.source:
        annotations["virtbus.io/source"] = v.source
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": v.name, "namespace": v.namespace,
                     "creationTimestamp": render.timestamp(v.created), "annotations": annotations,
                     **({"labels": dict(v.labels)} if v.labels else {})},
        "spec": {"accessModes": modes, "volumeMode": "Filesystem",
                 "resources": {"requests": {"storage": size}},
                 **({"storageClassName": v.storage_class} if v.storage_class else {})},
        "status": status,
    }  # fmt: skip


def dv_object(v: VolumeState) -> dict[str, Any]:
    """The claim as the CDI DataVolume that made it: its source, phase and progress."""
    pvc = pvc_object(v)
    kind, _, arg = v.source.partition(":")
    source: dict[str, Any] = {"blank": {}}
    if kind == "import":
        source = {"http": {"url": arg}}
    elif kind == "registry":
        source = {"registry": {"url": f"docker://{arg}"}}
    elif kind == "clone":
        ns, name = clone_of(v.source, v.namespace)
        source = {"pvc": {"namespace": ns, "name": name}}
    elif v.source:
        source = {"upload": {}}
    meta = {k: pvc["metadata"][k] for k in ("name", "namespace", "creationTimestamp", "labels")
            if k in pvc["metadata"]}  # fmt: skip
    if v.owner:
        meta["ownerReferences"] = [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                                    "name": v.owner, "controller": True,
                                    "blockOwnerDeletion": True}]  # fmt: skip
    status: dict[str, Any] = {"phase": dv_phase(v), "progress": v.progress or "N/A",
                              "claimName": v.name}  # fmt: skip
    if v.reason:
        status["message"] = v.reason
    if v.restarts:
        status["restartCount"] = v.restarts
    return {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": meta,
            "spec": {"source": source, "storage": {"resources": pvc["spec"]["resources"]}},
            "status": status}  # fmt: skip


DV_HEADER = ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]


def dv_cells(v: VolumeState) -> list[str]:
    return [v.name, dv_phase(v), v.progress or "N/A", str(v.restarts), render.age(v.created)]


PVC_HEADER = ["NAME", "STATUS", "CAPACITY", "NODE", "AGE"]


def pvc_cells(v: VolumeState) -> list[str]:
    return [v.name, v.phase, render.quantity(v.size_bytes), v.node or "<none>",
            render.age(v.created)]  # fmt: skip


async def create(url: str, cmd: c.CreateVolume, *, wait_s: float) -> int:
    check_name(cmd.name, field="name")  # the server would say so too, in a regex's words
    async with session(url) as nc:
        await send(nc, cmd)
        s = await until_settled(nc, cmd.target, timeout_s=wait_s)
    if s.phase == FAILED:
        raise VolumeFailedError(f'persistentvolumeclaims "{cmd.name}" failed: {s.reason}')
    typer.echo(f"persistentvolumeclaim/{cmd.name} created")
    return 0


async def listing(
    nc: Client, *, name: str | None, namespace: str | None, dv: bool = False
) -> Listing:
    """`get pvc` (every claim), or `get dv` (the claims DataVolumes made)."""
    if name:  # checked: a name is a subject token, and `*` would read every volume
        one = await volume(nc, check_name(name, field="name"), namespace or "default")
        found = [one] if one.exists else []
    else:
        found = await volumes(nc, namespace=namespace)
    if dv:
        found = [v for v in found if v.data_volume]
        items = [Item(v.namespace, v.name, {}, dv_object(v), dv_cells(v)) for v in found]
        return Listing(DV, DV_HEADER, items)
    items = [Item(v.namespace, v.name, {}, pvc_object(v), pvc_cells(v)) for v in found]
    return Listing(PVC, PVC_HEADER, items)


async def get(url: str, *, name: str | None, namespace: str | None, output: str) -> int:
    async with session(url) as nc:
        found = await listing(nc, name=name, namespace=namespace)
    typer.echo(show(found, Output.parse(output), name=name, namespace=namespace))
    return 0


async def move(url: str, cmd: c.MoveVolume, *, wait_s: float) -> int:
    check_name(cmd.name, field="name")
    async with session(url) as nc:
        await send(nc, cmd)
        deadline = asyncio.get_running_loop().time() + wait_s
        while (s := await volume(nc, cmd.name, cmd.namespace)).moving_to:
            if asyncio.get_running_loop().time() > deadline:
                raise VirtbusError(f'persistentvolumeclaims "{cmd.name}" is still moving to '
                                   f"{s.moving_to} after {wait_s:.0f}s")  # fmt: skip
            await asyncio.sleep(0.1)
    if s.node != cmd.node:
        raise VolumeFailedError(f'persistentvolumeclaims "{cmd.name}" stays on {s.node}: '
                                f"{s.reason}")  # fmt: skip
    typer.echo(f"persistentvolumeclaim/{cmd.name} moved to {s.node}")
    return 0


async def delete(url: str, cmd: c.DeleteVolume) -> int:
    check_name(cmd.name, field="name")
    async with session(url) as nc:
        await send(nc, cmd)
    typer.echo(f'persistentvolumeclaim "{cmd.name}" deleted')
    return 0
