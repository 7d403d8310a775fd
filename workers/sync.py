"""virt-handler's sync loop: on start, a worker brings libvirt and its launchers in line with the
log.

A domain the log says should not be here is reported and removed, a VM that should run here and
does not is reported lost, the launchers of the VMs kept here are taken back (and the rest
deleted), a migration under way is left to settle, and copies of snapshots the log no longer
has are swept away.
"""

from __future__ import annotations

import asyncio
import logging

from bus.vms import VMRepository
from events import model as m
from events.errors import VirtbusError
from events.names import Ref
from events.state import RUNNING, SCHEDULED, SCHEDULING, VMState
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name, ref_of_domain
from workers.migration import Migrations, incoming, outgoing
from workers.node_context import Launchers, NodeContext
from workers.pods import pod_name
from workers.snapshots import NodeSnapshots

log = logging.getLogger("virtbus.worker")


async def reconcile(
    ctx: NodeContext, *, launchers: Launchers, migrations: Migrations, snapshots: NodeSnapshots
) -> None:
    """On start, like virt-handler's sync loop: libvirt and the launchers are brought in line with
    what the log says should run here."""
    states = await VMRepository(ctx.store).all(verify=False)
    domains = await ctx.hv.domains()
    for dom, st in domains.items():
        ref = ref_of_domain(dom)
        s = states.get(ref) if ref else None
        if s is not None and s.node == ctx.node and s.phase in (SCHEDULED, RUNNING):
            continue
        if s is not None and incoming(s, ctx.node):
            continue  # a migration to here is under way; its source settles it
        await launchers.remove(dom, running=st in RUNNING_STATES or st == PAUSED_STATE)
        if ref is not None and s is not None:
            await ctx.observe(ref, [m.DomainUndefined(node=ctx.node)])
    for ref, s in states.items():
        if s.node == ctx.node and outgoing(s):
            migrations.resume(ref, s)  # what became of it is for libvirt to say
            continue
        if s.node == ctx.node and s.phase == RUNNING and domain_name(ref) not in domains:
            # The log says it runs here and it does not: a lost domain, a failed instance.
            await ctx.observe(ref, [m.DomainStopped(node=ctx.node, reason="lost")])
    await _adopt_launchers(ctx.node, launchers, states, domains)
    keep = [
        snapshots.dir_of(ref, snap.name, snap.requested)
        for ref, s in states.items() for snap in s.snapshots.values() if snap.node == ctx.node
    ]  # fmt: skip
    for gone in await asyncio.to_thread(snapshots.sweep, keep):
        log.info("removed the copies of a snapshot the log no longer has: %s", gone)


async def _adopt_launchers(
    node: str, launchers: Launchers, states: dict[Ref, VMState], domains: dict[str, int]
) -> None:
    """Take back the launchers of the VMs kept here; a running VM whose launcher went away
    while no worker watched has failed, as if it had died before our eyes."""
    kept = {
        pod_name(ref.name, s.vmi_uid): ref for ref, s in states.items()
        if s.node == node and s.vmi_uid and (
            s.phase in (SCHEDULING, SCHEDULED)
            or (s.phase == RUNNING and domain_name(ref) in domains))
    }  # fmt: skip
    try:
        missing = await launchers.adopt(kept)
    except VirtbusError as err:  # a redelivered start still finds its pod by name
        log.warning("adopting the launchers of %s: %s", node, err)
        return
    for pod in missing:
        if states[kept[pod]].phase == RUNNING:
            await launchers.exited(pod, -1)
