"""virt-controller's judgement: what a VM needs next, from its folded state alone (level-triggered).

Pure: `reconcile(state, ...)` returns the events to append and the node work to enqueue. Running it
again on the same state returns the same work (deduplicated on the bus by message id) and no new
events once the state has caught up, so a controller that crashed, restarted or raced another one
converges instead of repeating itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

import msgspec

from events import commands as c
from events import model as m
from events import work as w
from events.envelope import Envelope
from events.kubevirt import Config
from events.manifest import pool_vm_spec, summarize
from events.names import Ref
from events.replicasets import LABELS, ReplicaSetState, replica_name
from events.state import (
    CRASH_LOOP,
    FAILED,
    PENDING,
    RUNNING,
    SCHEDULED,
    SCHEDULING,
    STOPPED,
    STOPPING,
    SUCCEEDED,
    TERMINATING,
    UNSCHEDULABLE,
    VMState,
    apply,
)
from events.vmstate import guest_end
from events.volumes import VolumeState
from orchestrator.decide import decide, kept_disks
from orchestrator.ipam import PoolExhausted, VMAddresses
from orchestrator.migrations import Cluster, migration_step
from orchestrator.pool_state import Op, adoptions, draining, scale_in
from orchestrator.pool_update import REVISION_LABEL, revision_name, selected, sort_names, updates
from orchestrator.resize import instance_size, resize_events, sized_spec
from orchestrator.scheduler import Request, Unschedulable
from orchestrator.snapshots import snapshot_work

_RESTARTS_ON_FAILURE = ("Always", "RerunOnFailure")
_ACTIVE = (SCHEDULING, SCHEDULED, RUNNING)
BACKOFF_CAP_S = 300.0
STABLE_RUN = timedelta(minutes=5)  # a crash after this long starts the back-off afresh
DEFAULT_GRACE_S = 180  # KubeVirt's terminationGracePeriodSeconds default


class Reaction(msgspec.Struct, frozen=True):
    events: list[m.Event]
    work: list[w.Work]
    wake_at: datetime | None = None


Placer = Callable[[Request], str]


def backoff_delay(failures: int) -> float:
    """Seconds before restart #`failures`: the first restart is immediate, then 5 s doubling."""
    return 0.0 if failures <= 1 else min(5.0 * 2 ** (failures - 2), BACKOFF_CAP_S)


def reconcile(
    s: VMState, *, place: Placer, lost_nodes: Collection[str], now: datetime,
    new_uid: Callable[[], str], cluster: Cluster | None = None,
    addresses: VMAddresses | None = None, config: Config | None = None,
) -> Reaction:  # fmt: skip
    """Events and work that bring the VM closer to what its run strategy and requests want."""
    config = config or Config()
    events: list[m.Event] = []
    work: dict[str, w.Work] = {}
    wake: datetime | None = None
    for _ in range(5):  # each step's events are folded in before the next look
        step_events, step_work, step_wake = _step(
            s, place=place, lost_nodes=lost_nodes, now=now, new_uid=new_uid, cluster=cluster,
            addresses=addresses, config=config,
        )  # fmt: skip
        for item in step_work:
            work.setdefault(item.msg_id, item)
        wake = step_wake or wake
        if not step_events:
            break
        events.extend(step_events)
        for e in step_events:
            s = apply(s, _local(s, e, now))
    for item in snapshot_work(s):
        work.setdefault(item.msg_id, item)
    return Reaction(events, list(work.values()), wake)


def _local(s: VMState, e: m.Event, now: datetime) -> Envelope:
    return Envelope(
        id="", source="", type="", subject=f"vm/{s.namespace}/{s.name}", time=now,
        version=s.version + 1, data=e,  # type: ignore[arg-type]
    )  # fmt: skip


def _step(
    s: VMState, *, place: Placer, lost_nodes: Collection[str], now: datetime,
    new_uid: Callable[[], str], cluster: Cluster | None = None,
    addresses: VMAddresses | None = None, config: Config,
) -> tuple[list[m.Event], list[w.Work], datetime | None]:  # fmt: skip
    ended = s.phase in (SUCCEEDED, FAILED)
    if s.status == TERMINATING:
        if s.node and s.phase in _ACTIVE:
            return [], [_stop(s)], None
        return [*_release(s, always=True), m.VMDeleted(disks=kept_disks(s.spec))], [], None
    if not s.exists:
        return [], [], None
    if (
        (dump := s.memory_dump) is not None
        and dump.phase == "InProgress"
        and (dump.vmi_uid != s.vmi_uid or s.phase not in _ACTIVE)
    ):  # its instance ended first: no node will answer it
        why = "the VMI stopped before its memory was dumped"
        return [m.MemoryDumpFailed(claim=dump.claim, reason=why)], [], None
    clash = addresses is not None and addresses.clashes(s.ip)
    if released := _release(s, always=clash):  # its instance is over, or held twice
        return released, [], None
    if addresses is not None and s.vmi_uid and s.phase in _ACTIVE and not s.ip:
        # Scheduled without one (a controller stopped between the two appends, or a VM that
        # was running before addresses were allocated): the instance gets its address now.
        with contextlib.suppress(PoolExhausted):
            return [addresses.allocation(s.vmi_uid)], [], None
    if s.node and s.phase in _ACTIVE and s.node in lost_nodes:
        return [m.VMFailed(reason=f"node {s.node} was lost", node=s.node)], [], None
    if cluster is not None and (migrating := migration_step(s, cluster)) is not None:
        return migrating[0], migrating[1], None
    if s.node and ended:  # the instance is over: conclude it
        if s.status == STOPPING:
            restart = [m.VMStartRequested()] if s.restarting else []
            return [m.VMStopped(reason="stopped"), *restart], [], None
        if s.phase == FAILED:
            crashed = s.reason.startswith("crashed")  # the guest's own crash, told as such
            reason = guest_end(s.reason) if crashed else s.reason or "failed"
            return [m.VMFailed(reason=reason, node=s.node)], [], None
        if s.run_strategy == "Always":
            reason = f"{guest_end(s.reason)}; restarting (runStrategy Always)"
            return [m.VMStopped(reason=reason), m.VMStartRequested(restart=True)], [], None
        return [m.VMStopped(reason=guest_end(s.reason))], [], None
    if s.phase == FAILED and not s.node and s.status == STOPPED:  # a concluded failure
        if s.source_kind == "VirtualMachineInstance":
            return [], [], None  # a lone VMI stays Failed, visible, until it is deleted
        if s.run_strategy not in _RESTARTS_ON_FAILURE:
            return [m.VMStopped(reason=s.reason)], [], None
        if s.started and s.updated and s.updated - s.started > STABLE_RUN:
            return [m.VMStartRequested()], [], None  # it ran long enough: a fresh count
        delay = backoff_delay(s.failures)
        if delay == 0:
            return [m.VMStartRequested(restart=True)], [], None
        return [m.VMBackoff(delay_seconds=delay, failures=s.failures)], [], None
    if s.status == CRASH_LOOP:
        if s.backoff_until and now < s.backoff_until:
            return [], [], s.backoff_until
        return [m.VMStartRequested(restart=True)], [], None
    if not s.node and s.phase in (PENDING, SCHEDULING):  # not placed yet (or unschedulable)
        if s.status == STOPPING:
            return [m.VMStopped(reason="stopped before it was scheduled")], [], None
        scheduled = _schedule(s, place=place, new_uid=new_uid, addresses=addresses, config=config)
        return scheduled, [], None
    if s.node and s.phase in _ACTIVE:
        if s.status == STOPPING:
            return [], [_stop(s)], None
        if s.phase == SCHEDULING:
            return [], [_start(s)], None
        if s.phase == RUNNING:
            if resized := resize_events(s, s.spec, config):
                return resized, [], None
            work: list[w.Work] = []
            if s.want_paused != s.paused:
                work.append((w.Pause if s.want_paused else w.Unpause)(**_base(s)))
            if s.soft_reboot and s.soft_reboot == s.vmi_uid:
                work.append(w.SoftReboot(**{**_base(s), "version": s.soft_reboot_version}))
            if s.reset_asked > s.reset_done and s.reset_vmi == s.vmi_uid:
                work.append(w.Reset(**{**_base(s), "version": s.reset_asked}))
            dump = s.memory_dump
            if dump is not None and dump.phase == "InProgress" and dump.vmi_uid == s.vmi_uid:
                work.append(
                    w.DumpMemory(claim=dump.claim, **{**_base(s), "version": dump.requested})
                )
            return [], work + _volume_work(s) + _resize_work(s), None
    return [], [], None


def _release(s: VMState, *, always: bool = False) -> list[m.Event]:
    """The address's release once its instance is over (`always`: the VM itself is)."""
    if s.ip and (always or s.ip_vmi != s.vmi_uid):
        return [m.IPReleased(address=s.ip, vmi_uid=s.ip_vmi)]
    return []


def _schedule(
    s: VMState, *, place: Placer, new_uid: Callable[[], str], addresses: VMAddresses | None,
    config: Config,
) -> list[m.Event]:  # fmt: skip
    try:
        need = summarize(s.spec)
        node = place(
            Request(cpus=need["cpus"], memory_bytes=need["memory_bytes"],
                    node_selector=need["node_selector"], node_name=s.home)
        )  # fmt: skip
    except Unschedulable as err:
        return _unschedulable(s, err.message)
    uid = new_uid()
    scheduled = m.VMScheduled(node=node, vmi_uid=uid, size=instance_size(s.spec, config))
    if addresses is None:
        return [scheduled]
    try:
        address = addresses.allocation(uid)
    except PoolExhausted as err:
        return _unschedulable(s, str(err))
    return [scheduled, address]


def _unschedulable(s: VMState, reason: str) -> list[m.Event]:
    return [] if s.status == UNSCHEDULABLE and s.reason == reason else [
        m.VMUnschedulable(reason=reason)]  # fmt: skip


def _base(s: VMState) -> dict[str, Any]:
    return {
        "namespace": s.namespace, "name": s.name, "node": s.node, "vmi_uid": s.vmi_uid,
        "version": s.intent_version,
    }  # fmt: skip


def _start(s: VMState) -> w.Start:
    spec = sized_spec(s.spec, s.size)  # what the instance was scheduled with, and its room
    return w.Start(spec=spec, ip=s.ip, mac=s.mac, cidr=s.cidr, **_base(s))


def _stop(s: VMState) -> w.Stop:
    spec = (s.spec.get("template") or {}).get("spec") or {}
    grace = s.stop_grace
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    force = s.stop_force or s.status == TERMINATING
    return w.Stop(grace_period_seconds=grace, force=force, **_base(s))


def _volume_work(s: VMState) -> list[w.Work]:
    """Hotplug work: attach what is Pending, detach what is Detaching, one item per request."""
    out: list[w.Work] = []
    for name, phase in s.volumes.items():
        plug = s.hotplug.get(name)
        kind = {"Pending": w.AttachVolume, "Detaching": w.DetachVolume}.get(phase)
        if plug is not None and kind is not None:
            base = {**_base(s), "version": plug.requested}
            out.append(kind(volume=plug.volume, disk=plug.disk, **base))
    return out


def _resize_work(s: VMState) -> list[w.Work]:
    """The hotplug under way, as the node's work (one item per request)."""
    if s.size is None or not (s.hot_sockets or s.hot_guest):
        return []
    base = {**_base(s), "version": s.hot_version}
    return [w.Resize(sockets=s.hot_sockets, guest=s.hot_guest, size=s.size, **base)]


def reconcile_rs(
    rs: ReplicaSetState, vms: Mapping[str, VMState],
    volumes: Mapping[str, VolumeState] | None = None,
) -> list[Op]:  # fmt: skip
    """The ops (`pool_state.Op`: per VM, volume or pool note) that bring the set (or pool) to
    `rs.replicas`.

    `vms` are the VMs of the set's namespace by name, `volumes` the claims by subject prefix.
    Replicas are `<rs>-<index>` VMs, new ones at the lowest free index (KubeVirt's pool naming):
    a replica set's run its VMI template with runStrategy Always, so they restart on failure; a
    pool's are its `virtualMachineTemplate`. Scaling in deletes the highest indexes first, or,
    for a pool, those its `scaleInStrategy` picks (`proactive.selectionPolicy.sortPolicy`; none
    under `unmanaged` or `opportunistic`), keeping their DataVolumes under `statePreservation`;
    a pool VM adopts the kept DataVolumes its templates name.
    """
    volumes = volumes or {}
    want = rs.replicas if rs.exists else 0
    label = LABELS[rs.aggregate]
    if rs.aggregate == "vmpool":
        template = rs.spec.get("virtualMachineTemplate") or {}
        spec, source = template.get("spec") or {}, "VirtualMachine"  # a pool makes real VMs
    else:
        template = rs.spec.get("template") or {}
        spec = {"runStrategy": "Always", "template": template}
        source = "VirtualMachineInstanceReplicaSet"
    labels = {**((template.get("metadata") or {}).get("labels") or {}), label: rs.name}
    if rs.aggregate == "vmpool":  # the pool revision it is made from (KubeVirt's label)
        labels[REVISION_LABEL] = revision_name(rs)
    active = {name: s for name, s in vms.items() if s.labels.get(label) == rs.name
              and s.exists and s.status != TERMINATING}  # fmt: skip
    out: list[Op] = []
    index = 0
    leaving = any(s.labels.get(label) == rs.name and s.status == TERMINATING for s in vms.values())
    leaving = leaving or draining(rs, vms, volumes)
    for _ in range(0 if leaving else want - len(active)):  # a deletion first ends: its name frees
        while (taken := vms.get(replica_name(rs.name, index))) is not None and (
                taken.exists or taken.status == TERMINATING):  # fmt: skip
            index += 1
        name = replica_name(rs.name, index)
        s = vms.get(name) or VMState()
        mine = pool_vm_spec(spec, index) if rs.aggregate == "vmpool" else spec
        create = c.ApplyVM(name=name, namespace=rs.namespace, labels=labels, spec=mine,
                           source_kind=source)  # fmt: skip
        out.append((Ref("vm", rs.namespace, name), decide(s, create), s.version))
        index += 1
    if want < len(active):  # a deleted set wants none
        for name in scale_in_order(rs, active)[: len(active) - want]:
            out += scale_in(rs, active[name], volumes)
    if rs.aggregate == "vmpool" and rs.exists:
        going = {ref.name for ref, _, _ in out if ref.kind == "vm"} | {
            e.owner for _, events, _ in out for e in events if isinstance(e, m.VolumeReleased)
        }
        staying = {n: s for n, s in active.items() if n not in going}
        stable = not leaving and len(active) == want  # KubeVirt updates a pool scaled already
        out += updates(rs, staying, spec=spec, labels=labels, stable=stable)
        out += adoptions(rs, staying, volumes)
    return out


def scale_in_order(rs: ReplicaSetState, active: Mapping[str, VMState]) -> list[str]:
    """The pool's VMs in the order scaling in deletes them (KubeVirt's sort policies; its
    default, Random, is the highest index first here, as for a replica set), of those its
    `selectors` pick; none where the pool leaves scaling in to its user (`unmanaged`,
    `opportunistic`) unless the pool is deleted."""
    strategy = rs.spec.get("scaleInStrategy") or {} if rs.aggregate == "vmpool" else {}
    if rs.exists and ("unmanaged" in strategy or "opportunistic" in strategy):
        return []
    policy = (strategy.get("proactive") or {}).get("selectionPolicy") or {}
    if rs.exists and policy.get("selectors"):
        active = {n: s for n, s in active.items() if selected(policy["selectors"], s.spec)}
    return sort_names(policy.get("sortPolicy"), active)
