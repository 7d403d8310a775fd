"""CDI DataSources over the bus: `get|describe|delete datasource` (`das`, CDI's short name).

A DataSource is folded from its own subjects (`virt.datasource.<ns>.<name>`,
events/datasources.py); its `Ready` condition is read off the claim it names, as CDI's controller
computes it, when it is shown.
"""

from __future__ import annotations

from nats.aio.client import Client

from bus.store import EventStore
from events import render
from events.datasources import DataSourceState, apply_datasource, datasource_object, source_pvc
from events.envelope import Recorded
from events.names import aggregate_key, check_name
from virtctl import kinds as k
from virtctl.listing import Item, Listing
from virtctl.volumes import volume

HEADER = ["NAME", "AGE"]


async def listing(nc: Client, *, name: str | None, namespace: str | None) -> Listing:
    found: dict[str, DataSourceState] = {}

    def on(rec: Recorded) -> None:
        key = aggregate_key(rec.subject)
        found[key] = apply_datasource(found.get(key) or DataSourceState(), rec.envelope)

    where = f"{namespace}.{check_name(name, field='name')}" if namespace and name else (
        namespace or "*")  # fmt: skip
    await EventStore(nc).replay(on, subjects=[f"virt.datasource.{where}.>"], verify=False)
    items = []
    for s in sorted(found.values(), key=lambda s: (s.namespace, s.name)):
        if not s.exists or name not in (None, s.name):
            continue
        pvc = source_pvc(s)
        obj = datasource_object(s, await volume(nc, pvc[1], pvc[0]) if pvc else None)
        items.append(Item(s.namespace, s.name, s.labels, obj, [s.name, render.age(s.created)]))
    return Listing(k.DATASOURCE, HEADER, items)
