"""`kubectl get migrationpolicy`: KubeVirt's MigrationPolicies (events/migration_policies.py),
folded from their subjects on the log with the orchestrator's fold; cluster-wide, as in KubeVirt.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus.store import EventStore
from events import migration_policies as mp
from events import render
from events.envelope import Recorded
from events.names import check_name
from virtctl.kinds import MIGRATION_POLICY
from virtctl.listing import Item, Listing


async def listing(nc: Client, *, name: str | None) -> Listing:
    found: dict[str, mp.PolicyState] = {}

    def on(rec: Recorded) -> None:
        key = rec.subject.split(".")[3]
        found[key] = mp.apply_policy(found.get(key) or mp.PolicyState(), rec.envelope)

    which = check_name(name, field="name") if name else "*"
    await EventStore(nc).replay(on, subjects=[f"virt.migrationpolicy.*.{which}.>"], verify=False)
    items = []
    for s in sorted(found.values(), key=lambda s: s.name):
        if not s.exists:
            continue
        meta = {
            "name": s.name,
            "creationTimestamp": render.timestamp(s.created),
            "resourceVersion": str(s.version),
            **({"labels": s.labels} if s.labels else {}),
        }
        obj = {"apiVersion": mp.API, "kind": mp.KIND, "metadata": meta, "spec": s.spec}
        items.append(Item("", s.name, s.labels, obj, [s.name, render.age(s.created)]))
    return Listing(MIGRATION_POLICY, ["NAME", "AGE"], items)
