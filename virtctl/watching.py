"""`get -w` for every kind, and with `-l`: the listing, then a line (or an object) each time one of
its rows changes, as kubectl's watch prints them.

VMs, VMIs and nodes have a watch of their own (`verbs.get`: each event folded onto its VM, no
listing again); every other kind, and a watch with a label selector, is listed again when an
event of its aggregates arrives, and the rows that changed (or appeared, or went) are printed.
Level-triggered like the rest: what is printed is always what a `get` would show at that point
of the log.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus.store import EventStore
from events import render
from events.names import EVENT_SUBJECTS
from virtctl import getting
from virtctl import kinds as k
from virtctl.listing import Item, Listing, Output, show
from virtctl.selector import Selector

# the aggregates whose events change a kind's rows (what folds into them)
_AGGREGATES: dict[k.Kind, tuple[str, ...]] = {
    k.VM: ("vm",), k.VMI: ("vm",), k.VMIM: ("vm",), k.SNAPSHOT: ("vm",), k.RESTORE: ("vm",),
    k.REVISION: ("vm",), k.PVC: ("volume",), k.DV: ("volume",), k.VMIRS: ("rs",),
    k.VMPOOL: ("vmpool",), k.KUBEVIRT: ("kubevirt",), k.SERVICE: ("service",),
    k.NODE: ("node", "vm"), k.INSTANCETYPE: ("instancetype",),
    k.CLUSTER_INSTANCETYPE: ("clusterinstancetype",), k.PREFERENCE: ("preference",),
    k.CLUSTER_PREFERENCE: ("clusterpreference",), k.MIGRATION_POLICY: ("migrationpolicy",),
    k.DATASOURCE: ("datasource", "volume"),
}  # fmt: skip


def subjects(kind: k.Kind, namespace: str | None) -> list[str]:
    aggregates = _AGGREGATES.get(kind)
    if aggregates is None:
        return list(EVENT_SUBJECTS)
    scoped = namespace is not None and kind.namespaced
    return [f"virt.{a}.{namespace}.>" if scoped and a != "node" else f"virt.{a}.>"
            for a in aggregates]  # fmt: skip


async def watch(
    nc: Client, *, kind: k.Kind, name: str | None, namespace: str | None, out: Output,
    selector: Selector,
) -> None:  # fmt: skip
    """Print the listing, then each change of it, until interrupted."""
    store = EventStore(nc)
    position = await store.position()  # before the listing: a change between is printed again

    async def listed() -> Listing:
        found = await getting.listing(nc, kind, name=name, namespace=namespace,
                                      wide=out.form == "wide")  # fmt: skip
        return found.select(selector)

    first = await listed()
    print(show(first, out, name=name, namespace=namespace), flush=True)
    rows = {(i.namespace, i.name): i for i in first.items}
    async for _ in store.follow(from_seq=position + 1, subjects=subjects(kind, namespace)):
        now = await listed()
        seen = {(i.namespace, i.name): i for i in now.items}
        changed = [i for key, i in seen.items() if key not in rows or rows[key].cells != i.cells
                   or rows[key].obj != i.obj]  # fmt: skip
        changed += [i for key, i in rows.items() if key not in seen]  # gone: as it was last
        rows = seen
        if changed:
            print(_changes(now, changed, out, namespace=namespace), flush=True)


def _changes(listing: Listing, items: list[Item], out: Output, *, namespace: str | None) -> str:
    """The changed rows without the header (objects bare, one each, for -o json|yaml)."""
    if out.form in ("json", "yaml"):
        dump = render.to_json if out.form == "json" else render.to_yaml
        return "".join(dump(i.obj) for i in items).rstrip("\n")
    if out.form == "name":
        return "\n".join(listing.kind.object_name(i.name) for i in items)
    if namespace is None and listing.kind.namespaced:
        header, cells = ["NAMESPACE", *listing.header], [[i.namespace, *i.cells] for i in items]
    else:
        header, cells = listing.header, [i.cells for i in items]
    return "\n".join(render.table(header, cells).rstrip("\n").splitlines()[1:])
