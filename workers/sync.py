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
from typing import TYPE_CHECKING

from bus.vms import VMRepository
from events import model as m
from events.errors import VirtbusError
from events.names import Ref
from events.state import RUNNING, SCHEDULED, SCHEDULING, VMState
from workers.hypervisor import PAUSED_STATE, RUNNING_STATES, domain_name, ref_of_domain
from workers.migration import incoming, outgoing
from workers.pods import pod_name

if TYPE_CHECKING:
    from workers.worker import Worker

log = logging.getLogger("virtbus.worker")


async def reconcile(w: Worker) -> None:
    """On start, like virt-handler's sync loop: libvirt and the launchers are brought in line with
    what the log says should run here."""
    states = await VMRepository(w.store).all(verify=False)
    domains = await w.hv.domains()
    for dom, st in domains.items():
        ref = ref_of_domain(dom)
        s = states.get(ref) if ref else None
        if s is not None and s.node == w.node and s.phase in (SCHEDULED, RUNNING):
            continue
        if s is not None and incoming(s, w.node):
            continue  # a migration to here is under way; its source settles it
        await w._remove(dom, running=st in RUNNING_STATES or st == PAUSED_STATE)
        if ref is not None and s is not None:
            await w.observe(ref, [m.DomainUndefined(node=w.node)])
    for ref, s in states.items():
        if s.node == w.node and outgoing(s):
            w.migrations.resume(ref, s)  # what became of it is for libvirt to say
            continue
        if s.node == w.node and s.phase == RUNNING and domain_name(ref) not in domains:
            # The log says it runs here and it does not: a lost domain, a failed instance.
            await w.observe(ref, [m.DomainStopped(node=w.node, reason="lost")])
    await _adopt_launchers(w, states, domains)
    keep = [
        w.snapshots.dir_of(ref, snap.name, snap.requested)
        for ref, s in states.items() for snap in s.snapshots.values() if snap.node == w.node
    ]  # fmt: skip
    for gone in await asyncio.to_thread(w.snapshots.sweep, keep):
        log.info("removed the copies of a snapshot the log no longer has: %s", gone)


async def _adopt_launchers(w: Worker, states: dict[Ref, VMState], domains: dict[str, int]) -> None:
    """Take back the launchers of the VMs kept here; a running VM whose launcher went away
    while no worker watched has failed, as if it had died before our eyes."""
    kept = {
        pod_name(ref.name, s.vmi_uid): ref for ref, s in states.items()
        if s.node == w.node and s.vmi_uid and (
            s.phase in (SCHEDULING, SCHEDULED)
            or (s.phase == RUNNING and domain_name(ref) in domains))
    }  # fmt: skip
    try:
        missing = await w.pods.adopt({pod: ref.namespace for pod, ref in kept.items()})
    except VirtbusError as err:  # a redelivered start still finds its pod by name
        log.warning("adopting the launchers of %s: %s", w.node, err)
        return
    for pod, ref in kept.items():
        w._pods[domain_name(ref)] = pod
    for pod in missing:
        if states[kept[pod]].phase == RUNNING:
            await w._launcher_exited(pod, -1)
