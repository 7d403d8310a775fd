"""`kubectl get controllerrevision`: the instance types and preferences VMs captured, as KubeVirt's
VM controller stores them (a ControllerRevision each, owned by its VM, holding the object as it
was), so `status.instancetypeRef.controllerRevisionRef.name` can be looked up as the user guide
does. Read only: the controller makes them, and they go with their VM.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from bus.client import query
from events import render
from events.protocol import Query
from events.vmstate import Revision, VMState
from virtctl.kinds import REVISION
from virtctl.listing import Item, Listing

HEADER = ["NAME", "CONTROLLER", "REVISION", "AGE"]
_GROUP = "instancetype.kubevirt.io/v1beta1"


def revision_object(s: VMState, rev: Revision) -> dict[str, Any]:
    owner = {"apiVersion": render.KUBEVIRT_API, "kind": "VirtualMachine", "name": s.name,
             "controller": True, "blockOwnerDeletion": True}  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": rev.revision, "namespace": s.namespace,
                     "creationTimestamp": render.timestamp(rev.captured),
                     "ownerReferences": [owner]},
        "data": {"apiVersion": _GROUP, "kind": rev.kind, "metadata": {"name": rev.name},
                 "spec": rev.spec},
        "revision": 1,
    }  # fmt: skip


async def listing(nc: Client, *, name: str | None, namespace: str | None) -> Listing:
    vms = (await query(nc, Query(what="vms", namespace=namespace))).vms
    items = [
        Item(s.namespace, rev.revision, {}, revision_object(s, rev), [
            rev.revision, f"virtualmachine.kubevirt.io/{s.name}", "1", render.age(rev.captured)])
        for s in sorted(vms, key=lambda v: (v.namespace, v.name)) if s.exists
        for _, rev in sorted(s.revisions.items()) if name in (None, rev.revision)
    ]  # fmt: skip
    return Listing(REVISION, HEADER, items)
