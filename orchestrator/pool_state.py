"""A pool VM's DataVolumes across its deletion (KubeVirt's pool controller, pure).

KubeVirt's `scaleInStrategy.<proactive|opportunistic>.statePreservation: Offline` (or `Online`,
which its controller treats alike: no memory is kept) still deletes the VM a scale-in picks, but
first takes the VM's owner reference off its DataVolumes, so they outlive it; a VM made again at
that index (`<pool>-<i>`, whose templates name `<dv>-<i>`) finds them and adopts them instead of
importing anew. `proactive` keeps what the pool's own scale-in deletes, `opportunistic` what
someone else deletes. Here the owner reference is the volume's `owner`: `VolumeReleased` takes
it off, `VolumeAdopted` puts it on, and the pool's history says which VM's state was kept
(`VMPoolStatePreserved`) and taken up again (`VMPoolStateReused`).

Ops are `(ref, events, version)`: appended on the version judged. An op on the pool itself is a
note of what the op right before it did, appended only if that one was.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from events import commands as c
from events import model as m
from events.names import Ref
from events.replicasets import LABELS, POOL_LABEL, ReplicaSetState
from events.state import VMState
from events.volumes import VolumeState
from orchestrator.decide import decide

Op = tuple[Ref, list[m.Event], int]
_KIND = {"rs": "replica set", "vmpool": "pool"}


def preservation(rs: ReplicaSetState | None, strategy: str) -> str:
    """`scaleInStrategy.<strategy>.statePreservation`: "Disabled" unless given, and for a pool
    being deleted (its VMs take their DataVolumes with them, as KubeVirt's garbage collector)."""
    if rs is None or rs.aggregate != "vmpool" or not rs.exists:
        return "Disabled"
    body = (rs.spec.get("scaleInStrategy") or {}).get(strategy)
    return (
        str(body.get("statePreservation") or "Disabled") if isinstance(body, dict) else "Disabled"
    )


def template_volumes(spec: Mapping[str, Any]) -> list[str]:
    """The DataVolume names a VM spec's `dataVolumeTemplates` give."""
    return [str((t.get("metadata") or {}).get("name", "")) for t in
            spec.get("dataVolumeTemplates") or [] if isinstance(t, dict)]  # fmt: skip


def _volumes(spec: Mapping[str, Any], volumes: Mapping[str, VolumeState], *,
             namespace: str) -> list[VolumeState]:  # fmt: skip
    found = (volumes.get(f"virt.volume.{namespace}.{n}") for n in template_volumes(spec))
    return [v for v in found if v is not None and v.exists and v.data_volume]


def _release(v: VolumeState, *, owner: str, reason: str) -> Op:
    return (
        Ref("volume", v.namespace, v.name),
        [m.VolumeReleased(owner=owner, reason=reason)],
        v.version,
    )


def deletion(s: VMState, reason: str) -> list[m.Event]:
    """The VM's deletion (DeleteVM's), saying who asked and why."""
    events = decide(s, c.DeleteVM(name=s.name, namespace=s.namespace))
    return [replace(e, reason=reason) if isinstance(e, m.VMDeleteRequested) else e
            for e in events]  # fmt: skip


def scale_in(rs: ReplicaSetState, s: VMState, volumes: Mapping[str, VolumeState]) -> list[Op]:
    """What removes VM `s` when its pool (or replica set) scales in: its deletion; under
    `proactive.statePreservation` its DataVolumes are released first (the deletion waits for
    that to be folded, so they never go with it) and the pool notes them kept."""
    kept = preservation(rs, "proactive")
    mine = _volumes(s.spec, volumes, namespace=s.namespace) if kept != "Disabled" else []
    why = f"kept when pool {rs.name} scaled in {s.name} (statePreservation {kept})"
    owned = [_release(v, owner=s.name, reason=why) for v in mine if v.owner == s.name]
    if owned:
        return owned
    saved = [v.name for v in mine if not v.owner]
    reason = (f"{_KIND[rs.aggregate]} {rs.name} scaled in to {rs.replicas}" if rs.exists
              else f"its {_KIND[rs.aggregate]} {rs.name} was deleted")  # fmt: skip
    if saved:
        reason += f"; its DataVolumes {', '.join(saved)} are kept (statePreservation {kept})"
    ops: list[Op] = [(Ref("vm", s.namespace, s.name), deletion(s, reason), s.version)]
    if saved:
        note = m.VMPoolStatePreserved(vm=s.name, volumes=saved, state_preservation=kept)
        ops.append((Ref(rs.aggregate, rs.namespace, rs.name), [note], rs.version))
    return ops


def adoptions(
    rs: ReplicaSetState, active: Mapping[str, VMState], volumes: Mapping[str, VolumeState]
) -> list[Op]:
    """A pool VM takes the DataVolumes of its templates that no VM owns (kept by an earlier
    scale-in at its index), as KubeVirt's VM controller claims orphans of its templates."""
    out: list[Op] = []
    for name, s in sorted(active.items()):
        orphans = [v for v in _volumes(s.spec, volumes, namespace=s.namespace) if not v.owner]
        why = f"kept at index {name.rpartition('-')[2]} of pool {rs.name}: {name} names it"
        out += [(Ref("volume", v.namespace, v.name), [m.VolumeAdopted(owner=name, reason=why)],
                 v.version) for v in orphans]  # fmt: skip
        if orphans:
            note = m.VMPoolStateReused(vm=name, volumes=[v.name for v in orphans])
            out.append((Ref(rs.aggregate, rs.namespace, rs.name), [note], rs.version))
    return out


def draining(rs: ReplicaSetState, vms: Mapping[str, VMState],
             volumes: Mapping[str, VolumeState]) -> bool:  # fmt: skip
    """Whether a deleted VM of the set still owns DataVolumes (their deletion, or release, is
    on its way): a VM made now at its index would find them and make none of its own."""
    label = LABELS[rs.aggregate]
    return any(v.exists and v.owner and v.namespace == rs.namespace
               and (o := vms.get(v.owner)) is not None and not o.exists
               and o.labels.get(label) == rs.name for v in volumes.values())  # fmt: skip


def leftovers(s: VMState, volumes: Mapping[str, VolumeState],
              pools: Mapping[str, ReplicaSetState]) -> list[Op]:  # fmt: skip
    """What becomes of a deleted VM's DataVolumes: they go with it (KubeVirt's owner
    references), unless its pool keeps what others delete (`opportunistic.statePreservation`)."""
    owned = [v for v in volumes.values()
             if v.exists and v.owner == s.name and v.namespace == s.namespace]  # fmt: skip
    pool = pools.get(f"virt.vmpool.{s.namespace}.{s.labels.get(POOL_LABEL, '')}")
    kept = preservation(pool, "opportunistic")
    if pool is None or kept == "Disabled" or not owned:
        return [(Ref("volume", v.namespace, v.name), [m.VolumeDeleted()], v.version)
                for v in owned]  # fmt: skip
    why = f"kept when {s.name} was deleted (pool {pool.name}, opportunistic: {kept})"
    out = [_release(v, owner=s.name, reason=why) for v in owned]
    note = m.VMPoolStatePreserved(vm=s.name, volumes=[v.name for v in owned],
                                  strategy="opportunistic", state_preservation=kept)  # fmt: skip
    return [*out, (Ref("vmpool", pool.namespace, pool.name), [note], pool.version)]
