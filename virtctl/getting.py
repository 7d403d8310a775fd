"""`get` and `describe` for every kind: each kind read where it lives, as one `Listing`.

VMs, VMIs and nodes come from the read model (`virt.api.get`); replica sets, volumes and migrations
from their subjects on the log; snapshots and restores from the VMs that hold them. `verbs.get`
keeps the table watch (`-w`); everything else (`-l`, `-o name|jsonpath|json|yaml`, `-A`) is
`listing.show` over what this module reads.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client

from bus.client import query, session
from bus.store import EventStore
from events import kubevirt as kv
from events import render
from events.envelope import Recorded
from events.errors import VirtbusError
from events.manifest import POOL_API_VERSION
from events.names import aggregate_key
from events.nodes import NodeState
from events.protocol import Query
from events.replicasets import LABELS, ReplicaSetState, apply_rs
from events.state import VMState
from virtctl import kinds as k
from virtctl.listing import Item, Listing, Output, describe, show
from virtctl.selector import Selector

VMI_SOURCE = "VirtualMachineInstance"  # a VMI applied on its own: no VM stands behind it
OWNED_SOURCES = (VMI_SOURCE, "VirtualMachineInstanceReplicaSet")  # VMIs without a VM


def is_vm(s: VMState) -> bool:
    """A VirtualMachine, not a VMI applied alone or made by a replica set (KubeVirt lists those
    as VMIs only)."""
    return s.source_kind not in OWNED_SOURCES


def vmi_labels(s: VMState) -> dict[str, str]:
    template = s.spec.get("template")
    meta = template.get("metadata") if isinstance(template, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {str(a): str(b) for a, b in labels.items()} if isinstance(labels, dict) else {}


def vm_items(vms: list[VMState], *, vmis: bool, wide: bool) -> list[Item]:
    now = datetime.now(UTC)
    items = []
    for s in sorted(vms, key=lambda s: (s.namespace, s.name)):
        if vmis and (obj := render.vmi_object(s)) is not None:
            cells = render.vmi_cells(s, now, wide=wide)
            items.append(Item(s.namespace, s.name, vmi_labels(s), obj, cells))
        elif not vmis and is_vm(s):
            items.append(Item(s.namespace, s.name, s.labels, render.vm_object(s),
                              render.vm_cells(s, now)))  # fmt: skip
    return items


def node_items(nodes: list[NodeState], vms: list[VMState], *, wide: bool) -> list[Item]:
    now, counts = datetime.now(UTC), vm_counts(vms)
    return [Item("", n.name, n.labels, render.node_object(n, vms=counts.get(n.name, 0)),
                 render.node_cells(n, counts.get(n.name, 0), now, wide=wide))
            for n in sorted(nodes, key=lambda n: n.name)]  # fmt: skip


def vm_counts(vms: list[VMState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in vms:
        if s.node:
            counts[s.node] = counts.get(s.node, 0) + 1
    return counts


async def replica_sets(
    nc: Client, *, namespace: str | None, aggregate: str = "rs"
) -> list[ReplicaSetState]:
    """The replica sets (or, `aggregate` "vmpool", the pools) there are, folded from the log."""
    sets: dict[str, ReplicaSetState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        sets[key] = apply_rs(sets.get(key) or ReplicaSetState(), rec.envelope)

    await EventStore(nc).replay(on, subjects=[f"virt.{aggregate}.>"], verify=False)
    return sorted((rs for rs in sets.values() if rs.exists and namespace in (None, rs.namespace)),
                  key=lambda r: (r.namespace, r.name))  # fmt: skip


async def rs_items(
    nc: Client, *, name: str | None, namespace: str | None, kind: k.Kind = k.VMIRS
) -> list[Item]:
    """`kubectl get vmirs` (or `vmpool`): folded from the log's replica-set (pool) subjects (the
    read model holds VMs and nodes only), with replica counts from the VMs the sets own."""
    aggregate = "vmpool" if kind is k.VMPOOL else "rs"
    found = [rs for rs in await replica_sets(nc, namespace=namespace, aggregate=aggregate)
             if name in (None, rs.name)]  # fmt: skip
    vms = (await query(nc, Query(what="vms", namespace=namespace))).vms
    items = []
    for rs in found:
        owned = [s for s in vms if s.labels.get(LABELS[aggregate]) == rs.name and s.exists
                 and s.namespace == rs.namespace]  # fmt: skip
        ready = sum(1 for s in owned if s.ready)
        api = render.KUBEVIRT_API if kind is k.VMIRS else POOL_API_VERSION
        obj = {"apiVersion": api, "kind": kind.kind,
               "metadata": {"name": rs.name, "namespace": rs.namespace, "labels": rs.labels,
                            "creationTimestamp": render.timestamp(rs.created)},
               "spec": rs.spec,
               "status": {"replicas": len(owned), "readyReplicas": ready}}  # fmt: skip
        cells = [rs.name, str(rs.replicas), str(len(owned)), str(ready), render.age(rs.created)]
        items.append(Item(rs.namespace, rs.name, rs.labels, obj, cells))
    return items


async def kubevirt_items(nc: Client, *, name: str | None, namespace: str | None) -> list[Item]:
    """`kubectl get kubevirt`: the object as its history folds it, or the default (the seed's)
    before one was applied; `status` says what the orchestrator runs by."""
    objects: dict[str, kv.KubeVirtState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        objects[key] = kv.apply_kubevirt(objects.get(key) or kv.KubeVirtState(), rec.envelope)

    await EventStore(nc).replay(on, subjects=["virt.kubevirt.>"], verify=False)
    found = [s for s in objects.values() if s.exists] or [kv.default_state()]
    items = []
    for s in found:
        if name not in (None, s.name) or namespace not in (None, s.namespace):
            continue
        config = kv.config_of(s.spec)
        gates = sorted(g for g in (*kv.GATES, *config.gates) if config.enabled(g))
        obj = {"apiVersion": render.KUBEVIRT_API, "kind": "KubeVirt",
               "metadata": {"name": s.name, "namespace": s.namespace, "labels": s.labels,
                            "creationTimestamp": render.timestamp(s.created),
                            "resourceVersion": str(s.version)},
               "spec": kv.shown_spec(s.spec),
               "status": {"phase": "Deployed", "enabledFeatureGates": sorted(set(gates)),
                          "useEmulation": config.use_emulation,
                          "evictionStrategy": config.eviction_strategy,
                          "migrations": kv.policy_spec(config.migrations)}}  # fmt: skip
        items.append(Item(s.namespace, s.name, s.labels, obj,
                          [s.name, render.age(s.created), "Deployed"]))  # fmt: skip
    return items


async def listing(
    nc: Client, kind: k.Kind, *, name: str | None, namespace: str | None, wide: bool = False
) -> Listing:
    """What there is of `kind` (one NAME, or all) in `namespace` (None: every namespace)."""
    # Each kind's module is imported for its own kind only: a listing of VMs (the common one)
    # pays for none of them.
    if kind in (k.SNAPSHOT, k.RESTORE):
        from virtctl import snapshots

        return await snapshots.listing(nc, restores=kind is k.RESTORE, name=name,
                                       namespace=namespace)  # fmt: skip
    if kind in k.INSTANCETYPES:
        from virtctl import instancetypes

        return await instancetypes.listing(nc, kind, name=name, namespace=namespace)
    if kind is k.SERVICE:
        from virtctl import services

        return await services.listing(nc, name=name, namespace=namespace)
    if kind is k.MIGRATION_POLICY:
        from virtctl.migrationpolicies import listing as policies

        return await policies(nc, name=name)
    if kind is k.DATASOURCE:
        from virtctl import datasources

        return await datasources.listing(nc, name=name, namespace=namespace)
    if kind is k.REVISION:
        from virtctl.revisions import listing as revisions

        return await revisions(nc, name=name, namespace=namespace)
    if kind in (k.PVC, k.DV):
        from virtctl import volumes

        return await volumes.listing(nc, name=name, namespace=namespace, dv=kind is k.DV)
    if kind is k.VMIM:
        from virtctl import migrations

        return await migrations.listing(nc, name=name, namespace=namespace, wide=wide)
    if kind in (k.VMIRS, k.VMPOOL):
        items = await rs_items(nc, name=name, namespace=namespace, kind=kind)
        return Listing(kind, ["NAME", "DESIRED", "CURRENT", "READY", "AGE"], items)
    if kind is k.KUBEVIRT:
        return Listing(
            kind, ["NAME", "AGE", "PHASE"], await kubevirt_items(nc, name=name, namespace=namespace)
        )
    if kind is k.NODE:
        answer = await query(nc, Query(what="nodes", name=name))
        vms = (await query(nc, Query(what="vms"))).vms  # VMS counts every namespace's VMs
        nodes = [n for n in answer.nodes if name in (None, n.name)]
        header = render.NODE_HEADER + (render.NODE_WIDE if wide else [])
        return Listing(kind, header, node_items(nodes, vms, wide=wide))
    answer = await query(nc, Query(what="vms", namespace=namespace, name=name))
    vms = [s for s in answer.vms if s.exists]  # a named lookup returns deleted VMs too
    if kind is k.VMI:
        header = render.VMI_HEADER + (render.VMI_WIDE if wide else [])
        return Listing(kind, header, vm_items(vms, vmis=True, wide=wide))
    return Listing(kind, render.VM_HEADER, vm_items(vms, vmis=False, wide=wide))


async def get(
    url: str, *, kind: k.Kind, name: str | None, namespace: str | None, out: Output,
    selector: Selector,
) -> int:  # fmt: skip
    async with session(url) as nc:
        found = await listing(nc, kind, name=name, namespace=namespace, wide=out.form == "wide")
    text = show(found.select(selector), out, name=name, namespace=namespace)
    if text or out.form not in ("jsonpath", "name"):
        print(text, end="" if out.form == "jsonpath" else "\n", flush=True)
    return 0


async def describe_any(url: str, *, kind: k.Kind, name: str, namespace: str) -> int:
    """`describe KIND NAME` for a kind without its own describer: kubectl's generic one."""
    async with session(url) as nc:
        found = await listing(nc, kind, name=name, namespace=namespace)
    if not found.items:
        raise VirtbusError(kind.not_found(name))
    print(describe(found.items[0]))
    return 0
