"""Instance types and preferences over the bus: `get`, `describe`, `delete` of the four
instancetype.kubevirt.io kinds, folded from their subjects on the log with the orchestrator's fold.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus.store import EventStore
from events import commands as c
from events import render
from events.envelope import Recorded
from events.instancetypes import API, KINDS, InstancetypeState, apply_instancetype
from events.names import CLUSTER, aggregate_key, check_name
from virtctl import kinds as k
from virtctl.listing import Item, Listing

DELETE = {
    "VirtualMachineInstancetype": c.DeleteInstancetype,
    "VirtualMachineClusterInstancetype": c.DeleteClusterInstancetype,
    "VirtualMachinePreference": c.DeletePreference,
    "VirtualMachineClusterPreference": c.DeleteClusterPreference,
}


async def listing(nc: Client, kind: k.Kind, *, name: str | None, namespace: str | None) -> Listing:
    aggregate = KINDS[kind.kind][0]
    ns = CLUSTER if not kind.namespaced else namespace
    found: dict[str, InstancetypeState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        found[key] = apply_instancetype(found.get(key) or InstancetypeState(), rec.envelope)

    where = f"{ns}.{check_name(name, field='name')}" if ns and name else (ns or "*")
    subject = f"virt.{aggregate}.{where}.>"
    await EventStore(nc).replay(on, subjects=[subject], verify=False)
    items = []
    for s in sorted(found.values(), key=lambda s: (s.namespace, s.name)):
        if not s.exists or name not in (None, s.name):
            continue
        meta = {"name": s.name, "creationTimestamp": render.timestamp(s.created),
                "resourceVersion": str(s.version),
                **({"namespace": s.namespace} if kind.namespaced else {}),
                **({"labels": s.labels} if s.labels else {})}  # fmt: skip
        obj = {"apiVersion": API, "kind": kind.kind, "metadata": meta, "spec": s.spec}
        space = s.namespace if kind.namespaced else ""
        items.append(Item(space, s.name, s.labels, obj, [s.name, render.age(s.created)]))
    return Listing(kind, ["NAME", "AGE"], items)
